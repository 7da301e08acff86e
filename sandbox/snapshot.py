"""`Snapshot`: a sandbox frozen between calls, and its on-disk format.

A snapshot holds the guest's memory as a sealed memfd (`MemoryImage`) that every sandbox
made or restored from it maps copy-on-write, and the vCPU state: general and special
registers (segments with their FS/GS bases, control registers, EFER), the XSAVE area
(x87/SSE/AVX registers and MXCSR) and XCR0. Ring-3 guest code cannot change any MSR, so
there are no others to capture.

File format (version 1), all integers little-endian:

    magic      8 bytes   b"SBXSNAP\\0"
    version    u32       FORMAT_VERSION
    hdr_len    u32       length of the header
    header     JSON      SnapshotHeader (below)
    blobs                the vCPU state structs, in the order and sizes of header.blobs
    pieces               header.pieces times: u64 address, u64 length, data
    checksum   32 bytes  SHA-256 of everything before it

A file that is truncated, corrupt (checksum), of another format or ABI version, or made
with other KVM struct layouts is refused with a SnapshotError saying which.
"""

from __future__ import annotations

import dataclasses
import hashlib
import mmap
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ._native import ffi
from .abi import ABI_VERSION, Signature, Tag
from .config import SandboxConfig
from .errors import SandboxError
from .layout import Layout
from .memory import MemoryImage

MAGIC = b"SBXSNAP\0"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sII")
_PIECE = struct.Struct("<QQ")
_CHECKSUM_SIZE = 32
MAX_HEADER = 1 << 20


_CACHE_SIZE = 16
_cache: dict[tuple[int, int, int, int], Snapshot] = {}
_cache_lock = threading.Lock()


class SnapshotError(SandboxError, ValueError):
    """A snapshot file that cannot be used: not a snapshot, truncated, corrupt, or made by
    an incompatible runtime."""


@dataclass(frozen=True)
class CpuState:
    """The vCPU state a snapshot restores (cffi structs, owned by this object)."""

    regs: Any  # struct kvm_regs *
    sregs: Any  # struct kvm_sregs *
    xsave: Any | None  # struct kvm_xsave *; None: the vCPU's reset state
    xcrs: Any | None  # struct kvm_xcrs *; None: not supported by this CPU

    @property
    def rip(self) -> int:
        return int(self.regs.rip)


class SnapshotHeader(BaseModel):
    abi_version: int
    guest_path: str
    config: SandboxConfig
    layout: dict[str, int]
    functions: list[tuple[str, list[int], int]]
    blobs: dict[str, int]
    pieces: int


_BLOB_TYPES = {
    "regs": "struct kvm_regs",
    "sregs": "struct kvm_sregs",
    "xsave": "struct kvm_xsave",
    "xcrs": "struct kvm_xcrs",
}


class Snapshot:
    """A sandbox's memory and vCPU state between calls (from `Sandbox.snapshot()` or
    `Snapshot.load(path)`). Immutable; one snapshot serves any number of sandboxes."""

    def __init__(
        self,
        *,
        image: MemoryImage,
        cpu: CpuState,
        layout: Layout,
        functions: dict[str, Signature],
        config: SandboxConfig,
        guest_path: str,
    ) -> None:
        self.image = image
        self.cpu = cpu
        self.layout = layout
        self.functions = functions
        self.config = config
        self.guest_path = guest_path

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the snapshot to `path` (atomically: a temporary file, fsync, rename)."""
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
        ranges = list(self.image.data_ranges())
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
                blobs={name: len(data) for name, data in blobs.items()},
                pieces=len(ranges),
            )
            .model_dump_json()
            .encode()
        )
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        digest = hashlib.sha256()
        with open(tmp, "wb") as f:

            def put(data: bytes | memoryview) -> None:
                digest.update(data)
                f.write(data)

            put(_PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)))
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
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Snapshot:
        """Reads a snapshot file. Raises SnapshotError if it cannot be used and
        FileNotFoundError if it does not exist.

        Loaded snapshots are cached by the file's identity (device, inode, size and
        modification time): loading the same unchanged file again costs one stat, and
        every sandbox made from it shares one memory image."""
        st = os.stat(path)
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with _cache_lock:
            cached = _cache.get(key)
        if cached is not None:
            return cached
        snap = cls._load(path)
        with _cache_lock:
            _cache[key] = snap
            while len(_cache) > _CACHE_SIZE:
                _cache.pop(next(iter(_cache)))
        return snap

    @classmethod
    def _load(cls, path: str | os.PathLike[str]) -> Snapshot:
        name = str(path)
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < _PREFIX.size + _CHECKSUM_SIZE:
                raise SnapshotError(f"{name}: not a snapshot file (too short)")
            with mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ) as data:
                view = memoryview(data)
                try:
                    return cls._parse(view, size, name)
                finally:
                    view.release()

    @classmethod
    def _parse(cls, data: memoryview, size: int, name: str) -> Snapshot:
        magic, version, header_len = _PREFIX.unpack_from(data, 0)
        if magic != MAGIC:
            raise SnapshotError(f"{name}: not a snapshot file (bad magic)")
        if version != FORMAT_VERSION:
            raise SnapshotError(
                f"{name}: snapshot format version {version}, this runtime reads {FORMAT_VERSION}"
            )
        body = size - _CHECKSUM_SIZE
        if hashlib.sha256(data[:body]).digest() != bytes(data[body:]):
            raise SnapshotError(f"{name}: checksum mismatch: the file is corrupt or truncated")
        pos = _PREFIX.size
        if header_len > MAX_HEADER or pos + header_len > body:
            raise SnapshotError(f"{name}: malformed header length")
        try:
            header = SnapshotHeader.model_validate_json(bytes(data[pos : pos + header_len]))
        except ValidationError as exc:
            raise SnapshotError(f"{name}: malformed header: {exc}") from None
        pos += header_len
        if header.abi_version != ABI_VERSION:
            raise SnapshotError(
                f"{name}: made for guest ABI version {header.abi_version}, this runtime "
                f"speaks {ABI_VERSION}"
            )
        cpu_blobs: dict[str, Any] = {}
        for blob_name, length in header.blobs.items():
            ctype = _BLOB_TYPES.get(blob_name)
            if ctype is None or length != ffi.sizeof(ctype):
                raise SnapshotError(
                    f"{name}: vCPU state {blob_name!r} of {length} bytes does not match this "
                    "machine's KVM structures (made on another kernel or architecture)"
                )
            if pos + length > body:
                raise SnapshotError(f"{name}: truncated vCPU state")
            value = ffi.new(ctype + " *")
            ffi.memmove(value, data[pos : pos + length], length)
            cpu_blobs[blob_name] = value
            pos += length
        if "regs" not in cpu_blobs or "sregs" not in cpu_blobs:
            raise SnapshotError(f"{name}: vCPU registers missing")
        try:
            layout = Layout(**header.layout)
            functions = {
                fname: Signature(fname, tuple(Tag(t) for t in params), Tag(ret))
                for fname, params, ret in header.functions
            }
        except (TypeError, ValueError) as exc:
            raise SnapshotError(f"{name}: malformed header: {exc}") from None
        mem_size = layout.mem_size
        if mem_size != header.config.memory_size:
            raise SnapshotError(f"{name}: memory size does not match its config")
        pieces: list[tuple[int, bytes | memoryview]] = []
        try:
            for _ in range(header.pieces):
                if pos + _PIECE.size > body:
                    raise SnapshotError(f"{name}: truncated memory")
                addr, length = _PIECE.unpack_from(data, pos)
                pos += _PIECE.size
                if addr + length > mem_size or pos + length > body:
                    raise SnapshotError(f"{name}: memory piece outside guest memory")
                pieces.append((addr, data[pos : pos + length]))
                pos += length
            if pos != body:
                raise SnapshotError(f"{name}: trailing data after the memory")
            image = MemoryImage(mem_size, pieces, name="sandbox-snapshot")
        finally:
            for _, piece in pieces:
                if isinstance(piece, memoryview):
                    piece.release()
        cpu = CpuState(
            cpu_blobs["regs"], cpu_blobs["sregs"], cpu_blobs.get("xsave"), cpu_blobs.get("xcrs")
        )
        return cls(
            image=image,
            cpu=cpu,
            layout=layout,
            functions=functions,
            config=header.config,
            guest_path=header.guest_path,
        )
