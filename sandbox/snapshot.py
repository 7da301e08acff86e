"""`Snapshot`: a sandbox frozen between calls, and its on-disk format.

A snapshot holds the guest's memory as a sealed memfd (`MemoryImage`) that every sandbox
made or restored from it maps copy-on-write, and the vCPU state (`CpuState`: general and
special registers, the XSAVE area and XCR0).

File format, all integers little-endian:

    magic      8 bytes   b"SBXSNAP\\0"
    version    u32       1: checksummed; 2: checksummed and authenticated (with a key)
    hdr_len    u32       length of the header
    header     JSON      SnapshotHeader (below)
    blobs                the vCPU state structs, in the order and sizes of header.blobs
    pieces               header.pieces times: u64 address, u64 length, data
    trailer              version 1: SHA-256 of everything before it (32 bytes);
                         version 2: the same SHA-256, then HMAC-SHA256 of everything
                         before the trailer (32 + 32 bytes)

A file is untrusted input: it is refused with a SnapshotError saying why if it is
truncated, corrupt, not authenticated with the configured key, of another format or ABI
version, made with other KVM struct layouts, or inconsistent: a layout other than the
one the runtime computes for its config, memory pieces that overlap or leave guest
memory, a system area (page tables, descriptor tables, stubs) other than the runtime's
(page tables beyond its own only where the loader passes a check of them: the Wasm
layer's windows, `page_tables=`), or CPU state the runtime could not have produced (see
CpuSetup.check). With a key
(`key=` or the environment variable SANDBOX_SNAPSHOT_KEY, its UTF-8 bytes), files are
written authenticated and only files authenticated with that key are read; without one,
an authenticated file is read like a checksummed one. The HMAC key is SHA-256 of the
given key (HMAC itself would treat a key and the same key with trailing zero bytes as
one).

Close to 500 lines for one concept: the snapshot, its file format, and the checks that
make reading an untrusted file safe (the writer and the reader of one format belong
together).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import stat
import struct
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ValidationError

from ._native import ffi
from .abi import (
    ABI_VERSION,
    FUNC_DESC,
    MAX_ARGS,
    NAME_MAX,
    CallEncoder,
    Signature,
    Tag,
    parse_function_table,
)
from .config import ResetMode, SandboxConfig
from .cpu import CpuState, cpu_setup
from .errors import ArgumentError, SnapshotError
from .layout import Layout
from .memory import MemoryImage

__all__ = ["CpuState", "Snapshot", "SnapshotError", "SpawnsSandbox", "KEY_ENVIRONMENT"]

MAGIC = b"SBXSNAP\0"
VERSION_CHECKSUM = 1
VERSION_HMAC = 2
FORMAT_VERSION = VERSION_CHECKSUM
KEY_ENVIRONMENT = "SANDBOX_SNAPSHOT_KEY"
_PREFIX = struct.Struct("<8sII")
_PIECE = struct.Struct("<QQ")
_DIGEST_SIZE = 32
_TRAILER_SIZES = {VERSION_CHECKSUM: _DIGEST_SIZE, VERSION_HMAC: 2 * _DIGEST_SIZE}
MAX_HEADER = 1 << 20
# The largest file a snapshot can be: guest memory is at most 1 GiB (SandboxConfig), the
# pieces' headers (one per data extent: at most one per two pages) at most 4 MiB, the
# header MAX_HEADER, the vCPU state a few KiB. A larger file is refused before it is read.
MAX_FILE = (1 << 30) + (8 << 20) + MAX_HEADER


# A check of page tables the runtime's identity map does not have (Layout.
# check_system_memory's `roots`), given the snapshot's layout and a reader of its image.
PageTablesCheck = Callable[[Layout, Callable[[int, int], bytes], dict[int, int]], str | None]

_CACHE_SIZE = 16
_cache: dict[tuple[object, ...], Snapshot] = {}
_cache_lock = threading.Lock()


@runtime_checkable
class SpawnsSandbox(Protocol):
    """A snapshot of another guest kind (a Wasm sandbox's): it makes sandboxes of its
    own kind (`Sandbox.from_snapshot` calls this)."""

    def spawn(
        self,
        *,
        host_functions: Mapping[str, Callable[..., Any]] | None = None,
        output: Callable[[str], None] | None = None,
        reset: ResetMode = "none",
    ) -> Any: ...


class SnapshotHeader(BaseModel):
    abi_version: int
    guest_path: str
    config: SandboxConfig
    layout: dict[str, int]
    functions: list[tuple[str, list[int], int]]
    functions_table: int  # guest address of the guest's own function table
    blobs: dict[str, int]
    pieces: int
    # What the writer says the snapshot is (the Wasm module cache: module hash, engine
    # build...); covered by the trailer like the rest, and checked by that reader.
    labels: dict[str, str] = {}


_BLOB_TYPES = {
    "regs": "struct kvm_regs",
    "sregs": "struct kvm_sregs",
    "xsave": "struct kvm_xsave",
    "xcrs": "struct kvm_xcrs",
}


def _key(key: bytes | str | None) -> bytes | None:
    """The key given, or the environment's, as bytes (None: no key)."""
    if key is None:
        key = os.environ.get(KEY_ENVIRONMENT) or None
    if isinstance(key, str):
        key = key.encode()
    if key == b"":  # (save would write an unauthenticated file that load then refuses)
        raise ArgumentError("a snapshot key must not be empty")
    if key is not None and not isinstance(key, bytes):
        raise TypeError(f"a snapshot key is bytes or str, not {type(key).__name__}")
    return key


class _Trailer:
    """The trailer of a file being written: SHA-256, and HMAC-SHA256 with a key."""

    def __init__(self, key: bytes | None) -> None:
        self._sha = hashlib.sha256()
        self._hmac = hmac.new(_hmac_key(key), digestmod="sha256") if key else None

    def update(self, data: bytes | memoryview) -> None:
        self._sha.update(data)
        if self._hmac is not None:
            self._hmac.update(data)

    def digest(self) -> bytes:
        return self._sha.digest() + (self._hmac.digest() if self._hmac is not None else b"")


def _hmac_key(key: bytes) -> bytes:
    return hashlib.sha256(b"sandbox snapshot key\0" + key).digest()


class Snapshot:
    """A sandbox's memory and vCPU state between calls (from `Sandbox.snapshot()` or
    `Snapshot.load(path)`). Immutable; one snapshot serves any number of sandboxes."""

    def __init__(
        self,
        *,
        image: MemoryImage,
        cpu: CpuState,
        layout: Layout,
        functions: Mapping[str, Signature],
        functions_table: int,
        config: SandboxConfig,
        guest_path: str,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        self.image = image
        self.labels: Mapping[str, str] = dict(labels or {})  # from the file (see save)
        self.cpu = cpu
        self.layout = layout
        self.functions = functions
        self.functions_table = functions_table  # where the guest's dispatch finds them
        self.config = config
        self.guest_path = guest_path
        # The call encoders of its sandboxes' calls, by function name or by a layer's
        # own encoder (a Wasm export's), made or checked on the first call that needs
        # one by any sandbox in this snapshot's state and shared by all of them
        # (Sandbox.call; at most sandbox.SHARED_ENCODERS_MAX): a new sandbox's first
        # call then costs what its later calls do (~14 us less on a new VM). Safe across
        # threads: an encoder is immutable, and a dict's get and set are atomic.
        self.call_encoders: dict[str | CallEncoder, CallEncoder] = {}

    def save(
        self,
        path: str | os.PathLike[str],
        *,
        key: bytes | str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        """Writes the snapshot to `path` (atomically: a temporary file of its own, fsync,
        rename), authenticated with `key` (default: $SANDBOX_SNAPSHOT_KEY) if there is
        one. `labels` (default: the snapshot's own) are strings the loaded snapshot
        carries in `labels`, covered by the checksum and authentication."""
        key = _key(key)
        blobs = {
            name: bytes(ffi.buffer(value))
            for name, value in (
                ("regs", self.cpu.regs),
                ("sregs", self.cpu.sregs),
                ("xsave", self.cpu.xsave),
                ("xcrs", self.cpu.xcrs),
            )
            if value is not None
        }
        ranges = self.image.data_ranges()
        header = (
            SnapshotHeader(
                abi_version=ABI_VERSION,
                guest_path=self.guest_path,
                config=self.config,
                layout=dataclasses.asdict(self.layout),
                functions=[
                    (s.name, [int(t) for t in s.params], int(s.ret))
                    for s in self.functions.values()
                ],
                functions_table=self.functions_table,
                blobs={name: len(data) for name, data in blobs.items()},
                pieces=len(ranges),
                labels=dict(self.labels if labels is None else labels),
            )
            .model_dump_json()
            .encode()
        )
        path = Path(path)
        try:  # renamed over: a regular file or a symlink only (not a FIFO, a device...)
            mode: int | None = os.lstat(path).st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
            raise SnapshotError(f"{path}: exists and is not a regular file")
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        except OSError as exc:  # named by the path asked for, not the temporary file's
            raise type(exc)(exc.errno, f"cannot write {path}: {exc.strerror}") from None
        tmp = Path(tmp_name)
        digest = _Trailer(key)
        version = VERSION_HMAC if key else VERSION_CHECKSUM
        try:
            self._write(os.fdopen(fd, "wb"), header, blobs, ranges, digest, version)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _write(
        self,
        file: Any,
        header: bytes,
        blobs: dict[str, bytes],
        ranges: tuple[tuple[int, int], ...],
        digest: _Trailer,
        version: int,
    ) -> None:
        with file as f:

            def put(data: bytes | memoryview) -> None:
                digest.update(data)
                f.write(data)

            put(_PREFIX.pack(MAGIC, version, len(header)))
            put(header)
            for data in blobs.values():
                put(data)
            source = self.image.readonly
            for addr, length in ranges:
                put(_PIECE.pack(addr, length))
                put(source[addr : addr + length])
            f.write(digest.digest())
            f.flush()
            os.fsync(f.fileno())

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        key: bytes | str | None = None,
        page_tables: PageTablesCheck | None = None,
    ) -> Snapshot:
        """Reads a snapshot file, authenticated with `key` (default:
        $SANDBOX_SNAPSHOT_KEY) if there is one. Raises SnapshotError if it cannot be
        used and FileNotFoundError if it does not exist. `page_tables`: how to check
        page-table roots beyond the runtime's own (a guest layer's, such as the Wasm
        windows' `sandbox.wasm.windows.check_tables`); without it a file that has any is
        refused.

        Loaded snapshots are cached by the file's identity (device, inode, size and
        modification time) and the key: loading the same unchanged file again costs one
        stat, and every sandbox made from it shares one memory image."""
        if not isinstance(path, str | os.PathLike):  # (os.stat takes an int as a descriptor)
            raise ArgumentError(f"a snapshot file's path is a str or a path, not {path!r:.40}")
        key = _key(key)
        st = os.stat(path)
        cache_key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, key, page_tables)
        with _cache_lock:
            cached = _cache.get(cache_key)
        if cached is not None:
            return cached
        snap = cls._load(path, key, page_tables)
        with _cache_lock:
            _cache[cache_key] = snap
            while len(_cache) > _CACHE_SIZE:
                _cache.pop(next(iter(_cache)))
        return snap

    @classmethod
    def _load(
        cls, path: str | os.PathLike[str], key: bytes | None, page_tables: PageTablesCheck | None
    ) -> Snapshot:
        name = str(path)
        # O_NONBLOCK: a FIFO in the file's place would block open() until written to.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise SnapshotError(f"{name}: not a regular file")
        try:
            size = st.st_size
            if size < _PREFIX.size + _DIGEST_SIZE:
                raise SnapshotError(f"{name}: not a snapshot file (too short)")
            if size > MAX_FILE:
                raise SnapshotError(f"{name}: not a snapshot file (too large: {size} bytes)")
            return _Reader(fd, size, name, key, page_tables).read()
        finally:
            os.close(fd)


_BUFFER_SIZE = 1 << 20  # a reader's buffer for the memory pieces


def _pread_exactly(fd: int, n: int, offset: int, name: str) -> bytes:
    data = os.pread(fd, n, offset)
    while len(data) < n:
        more = os.pread(fd, n - len(data), offset + len(data))
        if not more:
            raise SnapshotError(f"{name}: the file was cut short while read")
        data += more
    return data


class _Reader:
    """Parses and checks one snapshot file (see the module docstring), reading it once,
    in order, with pread into private memory: what is hashed is what is parsed and what
    is written into the snapshot's memfd, so a change made to the file while it is read
    (by a process without the key) or a file cut short cannot reach the snapshot (a
    mapping of the file showed the parser bytes changed after the check, and faulted
    the process with SIGBUS on a truncation). The memory pieces go through one 1 MiB
    buffer: no copy of the file is kept besides the memfd."""

    def __init__(
        self,
        fd: int,
        size: int,
        name: str,
        key: bytes | None,
        page_tables: PageTablesCheck | None,
    ) -> None:
        self.fd, self.name, self.key, self.size = fd, name, key, size
        self.page_tables = page_tables
        self.body = size
        self.pos = 0
        self.checksum = hashlib.sha256()
        self.mac = hmac.new(_hmac_key(key), digestmod="sha256") if key else None
        self.buffer = memoryview(bytearray(_BUFFER_SIZE))  # the pieces pass through it

    def fail(self, why: str) -> SnapshotError:
        return SnapshotError(f"{self.name}: {why}")

    def _take(self, n: int) -> bytes:
        """The next `n` bytes of the body (hashed)."""
        if self.pos + n > self.body:
            raise self.fail("truncated")
        data = _pread_exactly(self.fd, n, self.pos, self.name)
        self._hash(data)
        self.pos += n
        return data

    def _hash(self, data: bytes | memoryview) -> None:
        self.checksum.update(data)
        if self.mac is not None:
            self.mac.update(data)

    def _copy(self, n: int, image: MemoryImage, addr: int) -> None:
        """Hashes the next `n` bytes of the body and writes them at `addr` of `image`."""
        done = 0
        while done < n:
            chunk = self.buffer[: min(n - done, _BUFFER_SIZE)]
            got = os.preadv(self.fd, [chunk], self.pos + done)
            if got <= 0:
                raise self.fail("the file was cut short while read")
            self._hash(chunk[:got])
            image.write(addr + done, chunk[:got])
            done += got
        self.pos += n

    def _drain(self) -> None:
        """Hashes the rest of the body (to tell a corrupt file from a malformed one)."""
        while self.pos < self.body:
            chunk = self.buffer[: min(self.body - self.pos, _BUFFER_SIZE)]
            got = os.preadv(self.fd, [chunk], self.pos)
            if got <= 0:
                raise self.fail("the file was cut short while read")
            self._hash(chunk[:got])
            self.pos += got

    def read(self) -> Snapshot:
        prefix = self._take(_PREFIX.size)
        magic, version, header_len = _PREFIX.unpack(prefix)
        if magic != MAGIC:
            raise self.fail("not a snapshot file (bad magic)")
        self._check_version(version)
        try:
            header = self._header(header_len)
            layout = self._layout(header)
            functions = self._functions(header)
            cpu = self._cpu(header)
            image = self._memory(header, layout)  # (closed by _memory if it fails)
        except SnapshotError:
            self._drain()
            self._check_trailer()  # a corrupt file says so, as it did before parsing
            raise
        try:
            self._check_trailer()
            image.seal()
            check, read = self.page_tables, image.read
            roots = None if check is None else lambda added: check(layout, read, added)
            why = layout.check_system_memory(read(0, layout.page_tables_end), roots)
            if why is None:
                why = self._check_function_table(header, layout, image, functions)
            if why is None:
                code = (layout.image_base, layout.image_end)
                why = cpu_setup().check(cpu, layout, code)
            if why is not None:
                raise self.fail(f"inconsistent state: {why}")
        except BaseException:
            image.close()
            raise
        return Snapshot(
            image=image,
            cpu=cpu,
            layout=layout,
            functions=functions,
            functions_table=header.functions_table,
            config=header.config,
            guest_path=header.guest_path,
            labels=header.labels,
        )

    def _header(self, header_len: int) -> SnapshotHeader:
        if header_len > MAX_HEADER or self.pos + header_len > self.body:
            raise self.fail("malformed header length")
        try:
            header = SnapshotHeader.model_validate_json(self._take(header_len))
        except ValidationError as exc:
            raise self.fail(f"malformed header: {exc}") from None
        if header.abi_version != ABI_VERSION:
            raise self.fail(
                f"made for guest ABI version {header.abi_version}, this runtime speaks "
                f"{ABI_VERSION}"
            )
        return header

    def _check_version(self, version: int) -> None:
        trailer = _TRAILER_SIZES.get(version)
        if trailer is None:
            raise self.fail(
                f"snapshot format version {version}, this runtime reads {VERSION_CHECKSUM} "
                f"and {VERSION_HMAC}"
            )
        if self.size < _PREFIX.size + trailer:
            raise self.fail("not a snapshot file (too short)")
        if self.key is not None and version != VERSION_HMAC:
            raise self.fail("not authenticated, and a snapshot key is configured")
        self.body = self.size - trailer

    def _check_trailer(self) -> None:
        if self.pos != self.body:
            raise self.fail("trailing data after the memory")
        trailer = _pread_exactly(self.fd, self.size - self.body, self.body, self.name)
        if not hmac.compare_digest(self.checksum.digest(), trailer[:_DIGEST_SIZE]):
            raise self.fail("checksum mismatch: the file is corrupt or truncated")
        if self.mac is not None and not hmac.compare_digest(
            self.mac.digest(), trailer[_DIGEST_SIZE:]
        ):
            raise self.fail("authentication failed: another key, or a modified file")

    def _layout(self, header: SnapshotHeader) -> Layout:
        try:
            layout = Layout(**header.layout)
            expected = Layout.for_config(header.config, layout.image_end - layout.image_base)
        except (TypeError, ValueError) as exc:
            raise self.fail(f"malformed layout: {exc}") from None
        overlap = layout.overlapping_regions()
        if overlap is not None:
            raise self.fail(f"malformed layout: the {overlap[0]} and the {overlap[1]} overlap")
        if layout != expected:
            wrong = [
                f"{name} is 0x{value:x}, not 0x{getattr(expected, name):x}"
                for name, value in dataclasses.asdict(layout).items()
                if value != getattr(expected, name)
            ]
            raise self.fail(
                "the layout is not the one the runtime computes for its config: " + "; ".join(wrong)
            )
        return layout

    def _functions(self, header: SnapshotHeader) -> dict[str, Signature]:
        functions: dict[str, Signature] = {}
        for fname, params, ret in header.functions:
            try:
                sig = Signature(fname, tuple(Tag(t) for t in params), Tag(ret))
            except ValueError as exc:
                raise self.fail(f"malformed function {fname!r}: {exc}") from None
            if (
                not fname
                or len(fname.encode(errors="replace")) > NAME_MAX
                or len(params) > MAX_ARGS
                or Tag.VOID in sig.params
                or fname in functions
            ):
                raise self.fail(f"malformed function {fname!r}")
            functions[fname] = sig
        return functions

    @staticmethod
    def _check_function_table(
        header: SnapshotHeader,
        layout: Layout,
        image: MemoryImage,
        functions: dict[str, Signature],
    ) -> str | None:
        """The functions the header lists must be those of the guest's own table in its
        memory (what its dispatch calls), exactly."""
        start, size = header.functions_table, len(functions) * FUNC_DESC.size
        if not layout.image_base <= start <= layout.image_end - size:
            return "the function table lies outside the guest image"
        try:
            table = parse_function_table(image.read(start, size))
        except ValueError as exc:
            return f"the guest's function table is malformed: {exc}"
        if table != functions:
            wrong = sorted(
                name
                for name in table.keys() | functions.keys()
                if table.get(name) != functions.get(name)
            )
            return f"the functions listed are not the guest's ({', '.join(wrong)})"
        return None

    def _cpu(self, header: SnapshotHeader) -> CpuState:
        blobs: dict[str, Any] = {}
        for blob_name, length in header.blobs.items():
            ctype = _BLOB_TYPES.get(blob_name)
            if ctype is None or length != ffi.sizeof(ctype):
                raise self.fail(
                    f"vCPU state {blob_name!r} of {length} bytes does not match this machine's "
                    "KVM structures (made on another kernel or architecture)"
                )
            if self.pos + length > self.body:
                raise self.fail("truncated vCPU state")
            value = ffi.new(ctype + " *")
            ffi.memmove(value, self._take(length), length)
            blobs[blob_name] = value
        if "regs" not in blobs or "sregs" not in blobs or "xsave" not in blobs:
            raise self.fail("vCPU registers missing")
        return CpuState(blobs["regs"], blobs["sregs"], blobs["xsave"], blobs.get("xcrs"))

    def _memory(self, header: SnapshotHeader, layout: Layout) -> MemoryImage:
        """The memory pieces, written into a new image (not sealed yet: `read` seals it
        once the trailer is checked)."""
        mem_size = layout.mem_size
        if mem_size != header.config.memory_size:
            raise self.fail("memory size does not match its config")
        image = MemoryImage.unsealed(mem_size, name="sandbox-snapshot")
        try:
            end_of_last = 0
            for _ in range(header.pieces):
                if self.pos + _PIECE.size > self.body:
                    raise self.fail("truncated memory")
                addr, length = _PIECE.unpack(self._take(_PIECE.size))
                if addr + length > mem_size or self.pos + length > self.body:
                    raise self.fail("memory piece outside guest memory")
                if addr < end_of_last:
                    raise self.fail("memory pieces overlap or are out of order")
                end_of_last = addr + length
                self._copy(length, image, addr)
            if self.pos != self.body:
                raise self.fail("trailing data after the memory")
        except BaseException:
            image.close()
            raise
        return image
