"""Guest memory: `MemoryImage` (an immutable memfd) and `GuestMemory` (one sandbox's
copy-on-write mapping of it).

A sandbox's memory is a private mapping of a sealed memfd image: every sandbox of one
guest (or of one snapshot) shares the image's pages until it writes to them, and spawning
copies nothing. The pages a sandbox has written are exactly the anonymous pages of its
mapping, which the kernel lists cheaply (PAGEMAP_SCAN): restoring copies just those back
from the image, so a restore costs in proportion to the pages written, not to the memory
size, and leaves every page mapped in the VM (no re-fault after it).

Guest addresses are plain integers; access by guest address goes through `check_range`,
the one bounds-checking translator.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import threading
from collections.abc import Iterator, Sequence

from ._native import Mapping, ffi, lib
from .errors import GuestProtocolError

PAGE = 4096

# madvise(2) advice values (Linux 5.14+), not yet named by Python 3.11's mmap module.
_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)
_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)
_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE

# PAGEMAP_SCAN (Linux 6.7+, <linux/fs.h>; Debian 12's headers predate it, so the uapi
# values are written out here): _IOWR('f', 16, struct pm_scan_arg).
_PAGEMAP_SCAN = 0xC0606610
_PAGE_IS_FILE = 1 << 2
_PAGE_IS_PRESENT = 1 << 3
_PAGE_IS_SWAPPED = 1 << 4
_PM_SCAN_ARG = struct.Struct("<12Q")
_MAX_REGIONS = 256
# /proc/self/pagemap entries (the fallback): present, swapped, file-or-shared.
_PM_PRESENT, _PM_SWAPPED, _PM_FILE = 1 << 63, 1 << 62, 1 << 61


class _Pagemap:
    """The process's /proc/self/pagemap, opened once."""

    _fd = -1
    _scan_ok: bool | None = None
    _lock = threading.Lock()

    @classmethod
    def fd(cls) -> int:
        if cls._fd < 0:
            with cls._lock:
                if cls._fd < 0:
                    cls._fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        return cls._fd


def anonymous_ranges(address: int, size: int) -> list[tuple[int, int]]:
    """(offset, length) of the pages in [address, address+size) of this process that
    are private copies (written since mapped) or swapped out: the written pages of a
    private file mapping."""
    if _Pagemap._scan_ok is not False:
        try:
            return _scan(address, size)
        except OSError:
            _Pagemap._scan_ok = False
    return _scan_pagemap_entries(address, size)


def _scan(address: int, size: int) -> list[tuple[int, int]]:
    vec = ffi.new("uint64_t[]", 3 * _MAX_REGIONS)
    vec_addr = int(ffi.cast("uintptr_t", vec))
    arg = bytearray(_PM_SCAN_ARG.size)
    out: list[tuple[int, int]] = []
    start, end = address, address + size
    while start < end:
        _PM_SCAN_ARG.pack_into(
            arg,
            0,
            _PM_SCAN_ARG.size,
            0,
            start,
            end,
            0,
            vec_addr,
            _MAX_REGIONS,
            0,
            _PAGE_IS_FILE,  # category_inverted: match pages that are not file pages
            _PAGE_IS_FILE,  # category_mask
            _PAGE_IS_PRESENT | _PAGE_IS_SWAPPED,  # category_anyof_mask
            _PAGE_IS_PRESENT,  # return_mask
        )
        n = fcntl.ioctl(_Pagemap.fd(), _PAGEMAP_SCAN, arg, True)
        _Pagemap._scan_ok = True
        for i in range(n):
            lo, hi = vec[3 * i], vec[3 * i + 1]
            if out and out[-1][0] + out[-1][1] == lo - address:
                out[-1] = (out[-1][0], hi - address - out[-1][0])
            else:
                out.append((lo - address, hi - lo))
        walk_end = _PM_SCAN_ARG.unpack_from(arg)[4]
        if n < _MAX_REGIONS or walk_end >= end:
            break
        start = walk_end
    return out


def _scan_pagemap_entries(address: int, size: int) -> list[tuple[int, int]]:
    """Fallback for kernels without PAGEMAP_SCAN: read one entry per page."""
    data = os.pread(_Pagemap.fd(), 8 * (size // PAGE), 8 * (address // PAGE))
    out: list[tuple[int, int]] = []
    for i, (entry,) in enumerate(struct.iter_unpack("<Q", data)):
        anon = (entry & _PM_SWAPPED) or (entry & _PM_PRESENT and not entry & _PM_FILE)
        if anon:
            if out and out[-1][0] + out[-1][1] == i * PAGE:
                out[-1] = (out[-1][0], out[-1][1] + PAGE)
            else:
                out.append((i * PAGE, PAGE))
    return out


class MemoryImage:
    """A sealed, immutable memfd holding the contents of guest memory (`pieces` of
    (address, bytes); zero elsewhere). Many GuestMemory objects map it copy-on-write."""

    def __init__(
        self,
        size: int,
        pieces: Sequence[tuple[int, bytes | memoryview]],
        name: str = "sandbox-image",
    ) -> None:
        self.size = size
        self._readonly: mmap.mmap | None = None
        self._readonly_view: memoryview | None = None
        self._readonly_ptr: object | None = None
        self._lock = threading.Lock()
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(self.fd, size)
            for addr, data in pieces:
                if addr < 0 or addr + len(data) > size:
                    raise ValueError("memory image piece outside the image")
                view = memoryview(data)
                written = 0
                while written < len(view):
                    written += os.pwrite(self.fd, view[written:], addr + written)
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, _SEALS)
        except BaseException:
            os.close(self.fd)
            raise

    @property
    def readonly(self) -> memoryview:
        """A view of a shared read-only mapping of the image (one per image, made on
        first use)."""
        if self._readonly_view is None:
            with self._lock:
                if self._readonly_view is None:
                    self._readonly = mmap.mmap(self.fd, self.size, mmap.MAP_SHARED, mmap.PROT_READ)
                    self._readonly_view = memoryview(self._readonly)
        return self._readonly_view

    @property
    def readonly_ptr(self) -> object:
        """A cffi pointer to the start of the `readonly` mapping (for sbx_memory_reset)."""
        if self._readonly_ptr is None:
            # Safe: the pointer covers exactly the read-only mapping, is only read from,
            # and is released (close()) before the mapping is unmapped.
            self._readonly_ptr = ffi.from_buffer("char[]", self.readonly)
        return self._readonly_ptr

    def data_ranges(self) -> Iterator[tuple[int, int]]:
        """(offset, length) of the parts of the image that hold data (SEEK_DATA/HOLE)."""
        pos = 0
        while pos < self.size:
            try:
                start = os.lseek(self.fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after pos
                return
            end = min(os.lseek(self.fd, start, os.SEEK_HOLE), self.size)
            yield start, end - start
            pos = end

    def close(self) -> None:
        if self._readonly_ptr is not None:
            ffi.release(self._readonly_ptr)
            self._readonly_ptr = None
        if self._readonly_view is not None:
            self._readonly_view.release()
            self._readonly_view = None
        if self._readonly is not None:
            self._readonly.close()
            self._readonly = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        self.close()


class GuestMemory:
    """A private, writable mapping of a MemoryImage: the memory of one sandbox."""

    def __init__(self, image: MemoryImage) -> None:
        self.size = image.size
        self.image = image
        self._closed = True
        self._map(image)

    def _map(self, image: MemoryImage) -> None:
        self.image = image
        # The address is given to KVM as the memslot's backing: it is unmapped only after
        # the VM that uses it is closed (or its slot removed).
        self._mapping = Mapping(image.fd, image.size, private=True)
        self.host_address = self._mapping.address
        self.view = self._mapping.view
        self._closed = False

    def written_ranges(self) -> list[tuple[int, int]]:
        """(guest address, length) of the pages written since the image was mapped."""
        return anonymous_ranges(self.host_address, self.size)

    def reset(self, ranges: list[tuple[int, int]] | None = None) -> int:
        """Makes the memory equal to its image again by copying back the written pages
        (they stay mapped, in the host and in the VM). Returns the bytes copied.
        Without `ranges`, one native call finds and copies the pages (PAGEMAP_SCAN)."""
        if ranges is None and _Pagemap._scan_ok is not False:
            copied = int(
                lib.sbx_memory_reset(
                    _Pagemap.fd(), self._mapping.ptr, self.image.readonly_ptr, self.size
                )
            )
            if copied >= 0:
                _Pagemap._scan_ok = True
                return copied
            _Pagemap._scan_ok = False  # no PAGEMAP_SCAN (before 6.7): read the pagemap
        source = self.image.readonly
        copied = 0
        for addr, length in self.written_ranges() if ranges is None else ranges:
            self.view[addr : addr + length] = source[addr : addr + length]
            copied += length
        return copied

    def prefault(self, ranges: list[tuple[int, int, bool]]) -> None:
        """Populates the host pages of `ranges` (address, size, write) in one system call
        each, so that the guest's first touch of them costs only the hypervisor's fault
        (a fault that must also allocate or copy a page costs several times more)."""
        for addr, size, write in ranges:
            self._mapping.madvise(_POPULATE_WRITE if write else _POPULATE_READ, addr, size)

    def check_range(self, addr: int, length: int, what: str = "guest memory") -> None:
        """Raises GuestProtocolError unless [addr, addr+length) lies in guest memory."""
        if addr < 0 or length < 0 or addr + length > self.size:
            raise GuestProtocolError(
                f"{what}: range 0x{addr:x}+{length} lies outside guest memory (0x{self.size:x})"
            )

    def write(self, addr: int, data: bytes | bytearray) -> None:
        self.check_range(addr, len(data))
        self.view[addr : addr + len(data)] = data

    def snapshot_image(self) -> MemoryImage:
        """A new MemoryImage with this memory's current contents: the image's data plus
        the written pages (holes stay holes, so the copy costs what is in use)."""
        pieces: list[tuple[int, bytes | memoryview]] = []
        for addr, length in _merge(list(self.image.data_ranges()) + self.written_ranges()):
            pieces.append((addr, self.view[addr : addr + length]))
        try:
            return MemoryImage(self.size, pieces, name="sandbox-snapshot")
        finally:
            for _, piece in pieces:
                if isinstance(piece, memoryview):
                    piece.release()

    def unmap(self) -> None:
        """Unmaps the memory (the caller removed it from the VM first)."""
        if not self._closed:
            self._closed = True
            self._mapping.close()

    def remap(self, image: MemoryImage) -> None:
        """Replaces the mapping with one of `image` (at a new address)."""
        self.unmap()
        self._map(image)

    def close(self) -> None:
        self.unmap()


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, length in sorted(ranges):
        if out and start <= out[-1][0] + out[-1][1]:
            end = max(out[-1][0] + out[-1][1], start + length)
            out[-1] = (out[-1][0], end - out[-1][0])
        else:
            out.append((start, length))
    return out
