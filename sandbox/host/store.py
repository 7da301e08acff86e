"""`FunctionStore`: deployed functions on disk, durable across restarts and crashes.

    <data_dir>/blobs/<sha256>          modules, content-addressed, immutable
    <data_dir>/functions/<name>.json   one FunctionRecord per function (the commit point)
    <data_dir>/tmp/                    files being written; emptied at every start
    <data_dir>/lock                    flock: one host process per data directory

Every file is written to tmp/, fsynced, renamed into place, and the directory fsynced;
a function's blob is durable before its record is renamed into functions/. So a crash
(kill -9, power loss) at any point leaves each function either as it was or fully
updated, never torn or half-registered: what a crash can leave behind is files in tmp/
and blobs no record refers to, and `open()` removes both.

The methods do blocking file I/O: call them from a worker thread (asyncio.to_thread).
They are thread-safe.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydantic import ValidationError

from .manifest import FunctionRecord, valid_name

CHUNK = 1 << 20


class StoreError(Exception):
    """The data directory cannot be used (permissions, disk full, ...)."""


class StoredTooLarge(Exception):
    """A module was larger than the limit given to `ingest`."""


@dataclass(frozen=True)
class Blob:
    sha256: str
    size: int
    path: Path


@dataclass(frozen=True)
class Loaded:
    """A record found at start; `problem` says why it cannot run (None: it can)."""

    record: FunctionRecord
    problem: str | None


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class FunctionStore:
    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir)
        self.blobs = self.root / "blobs"
        self.functions = self.root / "functions"
        self.tmp = self.root / "tmp"
        self._lock = threading.Lock()
        self._records: dict[str, FunctionRecord] = {}
        self._pinned: Counter[str] = Counter()  # blobs of uploads not yet committed
        self._lock_fd: int | None = None

    # -- start --------------------------------------------------------------------------

    def open(self) -> tuple[list[Loaded], list[str]]:
        """Creates the directories, removes what a crash left behind, and loads every
        record. Returns the records (with a problem for one whose blob is missing or
        corrupt) and warnings about files that were skipped. Raises StoreError."""
        try:
            for d in (self.root, self.blobs, self.functions, self.tmp):
                d.mkdir(parents=True, exist_ok=True)
            self.lock()
            for leftover in self.tmp.iterdir():
                leftover.unlink()
            fsync_dir(self.tmp)
            loaded, warnings = self._load_records()
            self._gc_locked()
        except OSError as exc:
            self.close()
            raise StoreError(f"data directory {str(self.root)!r} is not usable: {exc}") from exc
        return loaded, warnings

    def lock(self) -> None:
        """One host per data directory: takes an exclusive flock on <data_dir>/lock,
        held until `close` or the process ends (the kernel drops it even after kill -9).
        Idempotent. Raises StoreError if another process holds it, OSError."""
        if self._lock_fd is not None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(
                f"data directory {str(self.root)!r} is in use by another host process"
            ) from None
        self._lock_fd = fd

    def close(self) -> None:
        """Releases the data directory's lock. Idempotent."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _load_records(self) -> tuple[list[Loaded], list[str]]:
        loaded: list[Loaded] = []
        warnings: list[str] = []
        for path in sorted(self.functions.iterdir()):
            name = path.name.removesuffix(".json")
            if path.suffix != ".json" or not valid_name(name):
                warnings.append(f"ignoring {path.name!r} in {self.functions}: not a record")
                continue
            try:
                record = FunctionRecord.model_validate_json(path.read_bytes())
            except (OSError, ValidationError) as exc:
                warnings.append(f"ignoring record {path.name!r}: unreadable ({exc})")
                continue
            if record.name != name:
                warnings.append(f"ignoring record {path.name!r}: it names {record.name!r}")
                continue
            self._records[name] = record
            blob = self.blob_path(record.sha256)
            problem = None
            if not blob.is_file():
                problem = f"module blob {record.sha256} is missing"
            elif _hash_file(blob) != record.sha256:
                problem = f"module blob {record.sha256} is corrupt (SHA-256 mismatch)"
            loaded.append(Loaded(record, problem))
        return loaded, warnings

    # -- blobs --------------------------------------------------------------------------

    def blob_path(self, sha256: str) -> Path:
        return self.blobs / sha256

    @contextlib.contextmanager
    def _temporary(self) -> Iterator[tuple[Path, BinaryIO]]:
        fd, name = _mkstemp(self.tmp)
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as f:
                yield path, f
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def ingest(self, src: BinaryIO, limit: int) -> Blob:
        """Copies `src` into a blob (at most `limit` bytes: else StoredTooLarge) and pins
        it against garbage collection until `unpin`. Raises StoreError on I/O failure."""
        h = hashlib.sha256()
        size = 0
        try:
            with self._temporary() as (path, f):
                while chunk := src.read(CHUNK):
                    size += len(chunk)
                    if size > limit:
                        raise StoredTooLarge(f"the module is larger than {limit} bytes")
                    h.update(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
                sha = h.hexdigest()
                with self._lock:
                    self._pinned[sha] += 1
                    final = self.blob_path(sha)
                    if not final.exists():
                        os.rename(path, final)
                        fsync_dir(self.blobs)
        except OSError as exc:
            raise StoreError(f"cannot store the module: {exc.strerror}") from exc
        return Blob(sha, size, final)

    def pin(self, sha256: str, size: int) -> Blob:
        """Holds an existing blob (an update that keeps the module) until `unpin`."""
        with self._lock:
            self._pinned[sha256] += 1
        return Blob(sha256, size, self.blob_path(sha256))

    def unpin(self, sha256: str) -> None:
        """Ends an upload's hold on its blob; removes the blob if nothing refers to it."""
        with self._lock:
            self._pinned[sha256] -= 1
            if self._pinned[sha256] <= 0:
                del self._pinned[sha256]
            self._gc_locked()

    def _gc_locked(self) -> None:
        used = set(self._pinned)
        for r in self._records.values():
            used.add(r.sha256)
            used.update(rev.sha256 for rev in r.previous)
        removed = False
        for blob in self.blobs.iterdir():
            if blob.name not in used:
                with contextlib.suppress(FileNotFoundError):
                    blob.unlink()
                removed = True
        if removed:
            fsync_dir(self.blobs)

    # -- records ------------------------------------------------------------------------

    def get(self, name: str) -> FunctionRecord | None:
        with self._lock:
            return self._records.get(name)

    def commit(self, record: FunctionRecord) -> None:
        """Makes `record` durable (replacing the function's previous record), then
        removes blobs nothing refers to any more. Raises StoreError."""
        data = json.dumps(record.model_dump(mode="json"), indent=1).encode() + b"\n"
        try:
            self.write_file(self.functions / f"{record.name}.json", data)
            with self._lock:
                self._records[record.name] = record
                self._gc_locked()
        except OSError as exc:
            raise StoreError(f"cannot store function {record.name!r}: {exc.strerror}") from exc

    def write_file(self, final: Path, data: bytes) -> None:
        """Writes `final` durably and atomically (tmp/, fsync, rename, fsync of its
        directory), mode 0600 (records hold secrets). Raises OSError."""
        with self._temporary() as (path, f):
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            os.rename(path, final)
            fsync_dir(final.parent)

    def remove(self, name: str) -> bool:
        """Deletes a function durably; False if there was none. Raises StoreError."""
        try:
            with self._lock:
                if name not in self._records:
                    return False
                (self.functions / f"{name}.json").unlink(missing_ok=True)
                fsync_dir(self.functions)
                del self._records[name]
                self._gc_locked()
        except OSError as exc:
            raise StoreError(f"cannot delete function {name!r}: {exc.strerror}") from exc
        return True


def _mkstemp(directory: Path) -> tuple[int, str]:
    name = directory / f"{time.monotonic_ns():x}-{os.urandom(6).hex()}.part"
    return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), str(name)
