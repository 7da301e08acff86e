"""Guest memory: `MemoryImage` (an immutable memfd) and `GuestMemory` (one sandbox's
copy-on-write mapping of it).

A sandbox's memory is private: every sandbox of one guest (or of one snapshot) maps the
image's data copy-on-write, so spawning copies nothing, and the pages a sandbox has
written are exactly its private pages, which the kernel lists cheaply (PAGEMAP_SCAN):
a reset copies just those back, so it costs in proportion to the pages written, not to
the memory size, and leaves them mapped in the VM (no fault after it). Above a budget
(`RESET_KEEP_BYTES`) a reset gives the written pages back to the host instead, so a
sandbox that once touched a lot of memory does not keep it.

Only the image's data extents are mapped from the memfd; its holes are private
anonymous memory. Touching a hole of a memory file through any mapping allocates a page
in the file itself (shmem faults fill holes), and the image is shared by every sandbox
of its guest: a guest writing to its heap would grow everyone's template. So no code
here ever touches a hole of an image through a mapping (reads of holes use pread, which
does not fill them), and small holes between extents are filled with zeros when the
image is built, so that a sandbox maps a handful of extents, not one per page run.

Guest addresses are plain integers; access by guest address goes through `check_range`,
the one bounds-checking translator.
"""

from __future__ import annotations

import fcntl
import functools
import mmap
import os
import threading
from collections.abc import Sequence
from typing import Any

from ._native import Mapping, check, ffi, lib
from .errors import GuestProtocolError

PAGE = 4096
# A reset copies back (or zeroes) at most this much of the pages a sandbox wrote and
# gives the rest back to the host: a call's usual working set stays mapped (the next
# call does not fault it in again), a memory-hungry call's pages do not stay resident.
RESET_KEEP_BYTES = 4 << 20
# Holes of at most this size between two extents of an image are filled with zeros.
HOLE_FILL_BYTES = 1 << 20

# madvise(2) advice values (Linux 5.14+), not yet named by Python 3.11's mmap module.
_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)
_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)
_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
_SCAN_BATCH = 256  # (offset, length) pairs per native scan
_memory_reset = lib.sbx_memory_reset


class _Pagemap:
    """The process's /proc/self/pagemap, opened once."""

    _fd = -1
    _lock = threading.Lock()

    @classmethod
    def fd(cls) -> int:
        if cls._fd < 0:
            with cls._lock:
                if cls._fd < 0:
                    cls._fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        return cls._fd


def use_pagemap_entries(on: bool) -> None:
    """Finds written pages by reading /proc/self/pagemap entries (what kernels before
    6.7 offer) even where PAGEMAP_SCAN exists (for tests of that path)."""
    lib.sbx_memory_use_pagemap_entries(int(on))


class MemoryImage:
    """A sealed, immutable memfd holding the contents of guest memory (`pieces` of
    (address, bytes); zero elsewhere). Many GuestMemory objects map it copy-on-write.
    `MemoryImage.unsealed` makes an empty one to `write` into and then `seal` (the
    snapshot reader's, which writes what it reads as it reads it)."""

    def __init__(
        self,
        size: int,
        pieces: Sequence[tuple[int, bytes | memoryview]],
        name: str = "sandbox-image",
    ) -> None:
        self._open(size, name)
        try:
            for addr, data in pieces:
                self.write(addr, data)
            self.seal()
        except BaseException:
            self.close()
            raise

    @classmethod
    def unsealed(cls, size: int, name: str = "sandbox-image") -> MemoryImage:
        """An empty image (zeros) to `write` into, then `seal` before any use."""
        image = cls.__new__(cls)
        image._open(size, name)
        return image

    def _open(self, size: int, name: str) -> None:
        self.size = size
        self._readonly: Mapping | None = None
        self._lock = threading.Lock()
        self._sealed = False
        self.fd = -1
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(self.fd, size)
        except BaseException:
            self.close()
            raise

    def write(self, addr: int, data: bytes | memoryview) -> None:
        """Writes `data` at `addr` of an image not sealed yet."""
        if self._sealed:
            raise ValueError("the memory image is sealed")
        if addr < 0 or addr + len(data) > self.size:
            raise ValueError("memory image piece outside the image")
        self._pwrite(addr, data)

    def seal(self) -> None:
        """Makes the image immutable (F_SEAL_WRITE and the rest) and lists its extents."""
        self._fill_small_holes()
        self.extents: tuple[tuple[int, int], ...] = tuple(self._data_ranges())
        fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, _SEALS)
        self._sealed = True
        flat = [n for extent in self.extents for n in extent]
        # The extents as the native mappers take them (sbx_memory_map, sbx_machine_boot).
        self.extents_array: Any = ffi.new("uint64_t[]", flat or [0])

    def _pwrite(self, addr: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        written = 0
        while written < len(view):
            written += os.pwrite(self.fd, view[written:], addr + written)

    def _data_ranges(self) -> list[tuple[int, int]]:
        """Page-aligned (offset, length) of the parts that hold data (SEEK_DATA/HOLE)."""
        out: list[tuple[int, int]] = []
        pos = 0
        while pos < self.size:
            try:
                start = os.lseek(self.fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after pos
                break
            end = min(os.lseek(self.fd, start, os.SEEK_HOLE), self.size)
            start, end = start & ~(PAGE - 1), min((end + PAGE - 1) & ~(PAGE - 1), self.size)
            if out and start <= out[-1][0] + out[-1][1]:
                out[-1] = (out[-1][0], max(end, out[-1][0] + out[-1][1]) - out[-1][0])
            else:
                out.append((start, end - start))
            pos = end
        return out

    def _fill_small_holes(self) -> None:
        ranges = self._data_ranges()
        for (a, n), (b, _) in zip(ranges, ranges[1:], strict=False):
            gap = b - (a + n)
            if 0 < gap <= HOLE_FILL_BYTES:
                self._pwrite(a + n, bytes(gap))

    def data_ranges(self) -> tuple[tuple[int, int], ...]:
        """(offset, length) of the parts of the image that hold data."""
        return self.extents

    def read(self, addr: int, length: int) -> bytes:
        """Bytes of the image (holes read as zeros without filling them)."""
        return os.pread(self.fd, length, addr)

    @property
    def readonly(self) -> memoryview:
        """A shared read-only mapping of the image (one per image, made on first use).
        Read only its extents (`data_ranges`): a read in a hole would fill it."""
        return self._readonly_mapping().view

    def _readonly_mapping(self) -> Mapping:
        if self._readonly is None:
            with self._lock:
                if self._readonly is None:
                    self._readonly = Mapping(self.fd, self.size, private=False, writable=False)
        return self._readonly

    def close(self) -> None:
        if self._readonly is not None:
            self._readonly.close()
            self._readonly = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        self.close()


class PageRanges:
    """Sorted (guest address, length) ranges in the form the native reset takes them
    (one uint64_t array of pairs). Immutable: made once, given to any number of
    mappings (a new VM's spawn builds none)."""

    __slots__ = ("ranges", "array", "count")

    def __init__(self, ranges: Sequence[tuple[int, int]]) -> None:
        self.ranges = tuple(sorted(ranges))
        flat = [n for pair in self.ranges for n in pair]
        self.array: Any = ffi.new("uint64_t[]", flat or [0])
        self.count = len(self.ranges)


_NONE = PageRanges(())


@functools.lru_cache(maxsize=8)
def _whole(size: int) -> PageRanges:
    return PageRanges([(0, size)])


def _check_range(addr: int, length: int, size: int, what: str) -> None:
    if addr < 0 or length < 0 or addr + length > size:
        raise GuestProtocolError(
            f"{what}: range 0x{addr:x}+{length} lies outside guest memory (0x{size:x})"
        )


@functools.lru_cache(maxsize=64)
def _scan(ranges: tuple[tuple[int, int], ...], size: int) -> PageRanges:
    """Reset scan ranges, checked (GuestMemory.set_scan): made once per set of ranges (a
    Wasm snapshot's are set on every spawn of it)."""
    ordered = sorted(ranges)
    end = 0
    for addr, length in ordered:
        _check_range(addr, length, size, "reset scan range")
        if addr % PAGE or length % PAGE or addr < end:
            raise ValueError(f"reset scan ranges must be page-aligned and disjoint: {ranges}")
        end = addr + length
    return PageRanges(ordered)


class GuestMemory:
    """The memory of one sandbox: a private mapping of a MemoryImage (see the module
    docstring). The owner of the mapping; the VM only borrows its address."""

    def __init__(
        self,
        image: MemoryImage,
        mapping: Mapping | None = None,
        populated: Sequence[tuple[int, int, bool]] = (),
    ) -> None:
        """Maps `image`; or takes over `mapping`, a mapping of it that native code made
        as `Mapping.of_image` does, with the `populated` ranges (as `prefault` takes
        them) already prefaulted (Kvm.boot)."""
        self.size = image.size
        self._mapping: Mapping | None = None
        self._map(image, mapping)
        self._populated.update(populated)

    def _map(self, image: MemoryImage, mapping: Mapping | None = None) -> None:
        self.image = image
        # sbx_memory_reset's arguments but `keep`, made on the first reset of a mapping.
        self._reset_args: tuple[Any, ...] | None = None
        self._stable = _NONE
        self._scan = _whole(image.size)  # set_scan
        self._regions: dict[tuple[int, int], memoryview] = {}
        self._populated: set[tuple[int, int, bool]] = set()  # ranges prefault() did
        self._image_bytes: dict[tuple[int, int], bytes] = {}  # differs_from_image's
        # The address is given to KVM as the memslot's backing: it is unmapped only after
        # the VM that uses it is closed (or its slot removed).
        if mapping is None:
            mapping = Mapping.of_image(
                image.fd, image.size, image.extents_array, len(image.extents)
            )
        self._mapping = mapping
        self.host_address = mapping.address
        self.view = mapping.view

    def set_stable(self, ranges: PageRanges) -> None:
        """Names the pages nobody writes once mapped (read-only to the guest, never
        written by the host: Layout.stable_ranges): a reset leaves their private copies
        (made by a populate-for-write) as they are. For this mapping only."""
        self._stable = ranges
        self._reset_args = None

    def set_scan(self, ranges: Sequence[tuple[int, int]] | None) -> None:
        """Names the only ranges a reset searches for written pages (None: all of the
        memory). The caller promises that every page written since the memory was last
        equal to its image, and every page written until the next call of this method,
        lies in them: a layer that knows the guest and the host cannot write elsewhere
        (the Wasm windows' pool, sandbox/wasm/windows.py). For this mapping only."""
        self._scan = _whole(self.size) if ranges is None else _scan(tuple(ranges), self.size)
        self._reset_args = None

    def region(self, addr: int, length: int) -> memoryview:
        """A view of guest memory [addr, addr+length), kept (and released) with the
        mapping: callers on hot paths get the same view each time."""
        view = self._regions.get((addr, length))
        if view is None:
            self.check_range(addr, length)
            view = self._regions[(addr, length)] = self.view[addr : addr + length]
        return view

    def _ptr(self) -> Any:
        assert self._mapping is not None, "guest memory used after close"
        return self._mapping.ptr

    def written_ranges(self) -> list[tuple[int, int]]:
        """(guest address, length) of the pages written since the image was mapped."""
        out: list[tuple[int, int]] = []
        pairs = ffi.new("uint64_t[]", 2 * _SCAN_BATCH)
        following = ffi.new("uint64_t *")
        start = 0
        while start < self.size:
            n = check(
                lib.sbx_memory_written(
                    _Pagemap.fd(), self._ptr(), self.size, start, pairs, _SCAN_BATCH, following
                ),
                "PAGEMAP_SCAN",
            )
            out.extend((int(pairs[2 * i]), int(pairs[2 * i + 1])) for i in range(n))
            start = int(following[0])
        return out

    def reset(self, keep: int = RESET_KEEP_BYTES) -> int:
        """Makes the memory equal to its image again: written pages are copied back (in
        the image's extents) or zeroed (in its holes) up to `keep` bytes, and given back
        to the host beyond that. Returns the bytes of written pages found."""
        args = self._reset_args
        if args is None:
            image = self.image
            args = self._reset_args = (
                _Pagemap.fd(),
                self._ptr(),
                image._readonly_mapping().ptr,
                self.size,
                image.extents_array,
                len(image.extents),
                self._stable.array,
                self._stable.count,
                self._scan.array,
                self._scan.count,
            )
        found = int(_memory_reset(*args, keep))
        if found < 0:
            check(found, "guest memory reset")
        return found

    def differs_from_image(self, ranges: Sequence[tuple[int, int]]) -> bool:
        """Whether any of the guest ranges differs from the image."""
        view, image = self.view, self._image_bytes
        for a, n in ranges:
            want = image.get((a, n))
            if want is None:  # the image is sealed: read once per range and mapping
                want = image[(a, n)] = self.image.read(a, n)
            # bytes compare by memcmp; a memoryview compares element by element
            if view[a : a + n].tobytes() != want:
                return True
        return False

    def prefault(self, ranges: Sequence[tuple[int, int, bool]]) -> None:
        """Populates the host pages of `ranges` (address, size, write) in one system call
        each, so that the guest's first touch of them costs only the hypervisor's fault
        (a fault that must also allocate or copy a page costs several times more). Once
        per range and mapping: the pages stay populated through resets, and populating
        them again after a reset would only make the host drop KVM's mappings of the
        pages the reset write-protected (measured: +0.4 ms on a Python sandbox's spawn
        on a machine whose previous call wrote many heap pages)."""
        mapping = self._mapping
        assert mapping is not None
        for item in ranges:
            if item in self._populated:
                continue
            addr, size, write = item
            mapping.madvise(_POPULATE_WRITE if write else _POPULATE_READ, addr, size)
            self._populated.add(item)

    def check_range(self, addr: int, length: int, what: str = "guest memory") -> None:
        """Raises GuestProtocolError unless [addr, addr+length) lies in guest memory."""
        _check_range(addr, length, self.size, what)

    def write(self, addr: int, data: bytes | bytearray) -> None:
        self.check_range(addr, len(data))
        self.view[addr : addr + len(data)] = data

    def snapshot_image(self, host_owned: Sequence[tuple[int, int]] = ()) -> MemoryImage:
        """A new MemoryImage with this memory's current contents: the image's data plus
        the written pages (holes stay holes, so the copy costs what is in use). The
        `host_owned` ranges (scratch the host writes, like the restore trampoline) keep
        the image's contents."""
        pieces: list[tuple[int, bytes | memoryview]] = []
        for addr, length in _merge(list(self.image.extents) + self.written_ranges()):
            pieces.append((addr, self.view[addr : addr + length]))
        pieces += [(addr, self.image.read(addr, length)) for addr, length in host_owned]
        try:
            return MemoryImage(self.size, pieces, name="sandbox-snapshot")
        finally:
            for _, piece in pieces:
                if isinstance(piece, memoryview):
                    piece.release()

    def remap(self, image: MemoryImage) -> None:
        """Replaces the mapping with one of `image` (at a new address). The caller
        removed the old address from the VM first."""
        self.close()
        self._map(image)

    def close(self) -> None:
        """Unmaps the memory (the caller removed it from the VM first). Idempotent."""
        if self._mapping is not None:
            for view in self._regions.values():
                view.release()
            self._regions.clear()
            self._mapping.close()
            self._mapping = None


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, length in sorted(ranges):
        if out and start <= out[-1][0] + out[-1][1]:
            end = max(out[-1][0] + out[-1][1], start + length)
            out[-1] = (out[-1][0], end - out[-1][0])
        else:
            out.append((start, length))
    return out
