"""`ClusterStore`: the function host's functions where every node reads them, a
directory on a shared filesystem (an NFS/CephFS/EFS export mounted on every node, a
ReadWriteMany volume on Kubernetes; on one machine, any local directory).

    <root>/functions/<name>.json   Published: the manifest (secrets included: mode
                                   0600), the module's SHA-256, the cluster revision
                                   (+1 on every change), deleted or not
    <root>/blobs/<sha256>          modules, content-addressed, immutable
    <root>/tmp/                    files being written
    <root>/token                   the admin token every replica shares (made once, 0600)
    <root>/lock                    flock: one writer at a time

Why a shared directory and not an S3 bucket: the host's own store is already a directory
written with the durability rules below, every Kubernetes distribution offers
ReadWriteMany volumes, and a directory needs no credentials, no client library and no
endpoint in the pods; an S3 client (boto3, or obstore) would add all three. The format
is plain files so that a bucket can replace the directory later (the same names as
keys, conditional PUTs for the revision).

Every file is written to tmp/, fsynced, renamed into place, and the directory fsynced;
a module is durable before the record naming it. Readers check what they read: a
record that does not validate or a blob whose SHA-256 differs is refused (`StoreError`),
never run. Blocking file I/O: call from a worker thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from ..host.manifest import FunctionSpec, valid_name
from ..host.store import StoreError, fsync_dir

SHA256_PATTERN = r"^[0-9a-f]{64}$"


class Published(BaseModel):
    """A function as the cluster store holds it."""

    name: str
    revision: int = Field(ge=1)
    deleted: bool = False
    spec: FunctionSpec | None = None  # None once deleted
    sha256: str | None = Field(None, pattern=SHA256_PATTERN)


class ClusterStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.functions = self.root / "functions"
        self.blobs = self.root / "blobs"
        self.tmp = self.root / "tmp"
        try:
            for d in (self.root, self.functions, self.blobs, self.tmp):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cluster store {str(self.root)!r} is not usable: {exc}") from exc

    # -- writing -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, final: Path, data: bytes, mode: int = 0o644) -> None:
        tmp = self.tmp / f"{final.name}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        fsync_dir(final.parent)

    def publish(self, name: str, spec: FunctionSpec, module: bytes) -> Published:
        """Makes `module` with `spec` the function `name` for every replica: the next
        cluster revision."""
        if not valid_name(name):
            raise ValueError(f"invalid function name {name!r}")
        sha = hashlib.sha256(module).hexdigest()
        blob = self.blobs / sha
        if not blob.exists():
            self._write(blob, module)
        with self._locked():
            current = self.get(name)
            entry = Published(
                name=name,
                revision=(current.revision if current else 0) + 1,
                spec=spec,
                sha256=sha,
            )
            self._write(self.functions / f"{name}.json", entry.model_dump_json().encode(), 0o600)
        return entry

    def withdraw(self, name: str) -> Published | None:
        """Marks `name` deleted (a tombstone with the next revision, so that every
        replica deletes it too). None if there was no such function."""
        with self._locked():
            current = self.get(name)
            if current is None or current.deleted:
                return None
            entry = Published(name=name, revision=current.revision + 1, deleted=True)
            self._write(self.functions / f"{name}.json", entry.model_dump_json().encode(), 0o600)
        return entry

    def token(self) -> str:
        """The admin token all replicas share: made (random, mode 0600) on first use."""
        path = self.root / "token"
        with self._locked():
            if not path.exists():
                self._write(path, (secrets.token_urlsafe(32) + "\n").encode(), 0o600)
        return path.read_text().strip()

    # -- reading -----------------------------------------------------------------------

    def get(self, name: str) -> Published | None:
        """The published entry of `name` (a tombstone if deleted), None if none."""
        if not valid_name(name):
            return None
        try:
            data = (self.functions / f"{name}.json").read_bytes()
        except FileNotFoundError:
            return None
        return self._parse(name, data)

    def _parse(self, name: str, data: bytes) -> Published:
        try:
            entry = Published.model_validate_json(data)
        except ValidationError as exc:
            raise StoreError(f"cluster store record {name!r} is invalid: {exc}") from None
        if entry.name != name or (not entry.deleted and (entry.spec is None or not entry.sha256)):
            raise StoreError(f"cluster store record {name!r} is inconsistent")
        return entry

    def entries(self) -> dict[str, Published]:
        """Every published function (tombstones included), by name. Records that do not
        validate are skipped (`problems` of `scan` names them)."""
        return self.scan()[0]

    def scan(self) -> tuple[dict[str, Published], list[str]]:
        found: dict[str, Published] = {}
        problems: list[str] = []
        for path in sorted(self.functions.glob("*.json")):
            name = path.stem
            try:
                entry = self.get(name)
            except (StoreError, OSError) as exc:
                problems.append(str(exc))
                continue
            if entry is not None:
                found[name] = entry
        return found, problems

    def module(self, entry: Published) -> bytes:
        """The module of a live entry, checked against its SHA-256."""
        if entry.sha256 is None:
            raise StoreError(f"function {entry.name!r} is deleted")
        data = (self.blobs / entry.sha256).read_bytes()
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            raise StoreError(f"the module of {entry.name!r} is corrupt in the cluster store")
        return data

    def manifest(self, entry: Published) -> dict[str, Any]:
        """The manifest of a live entry, as the host's PUT takes it."""
        assert entry.spec is not None
        loaded: dict[str, Any] = json.loads(entry.spec.model_dump_json(exclude_unset=False))
        return loaded
