"""`GuestMemory`: the guest's physical memory, mapped into this process.

A sandbox's memory is a private (copy-on-write) mapping of a sealed memfd image: every
sandbox of one guest shares the image's pages until it writes to them, and spawning
copies nothing. Guest addresses are plain integers; access by guest address goes through
`check_range`, the one bounds-checking translator.
"""

from __future__ import annotations

import fcntl
import mmap
import os

from ._native import buffer_address, ffi
from .errors import GuestProtocolError

# madvise(2) advice values (Linux 5.14+), not yet named by Python 3.11's mmap module.
_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)
_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)
_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


class MemoryImage:
    """A sealed, immutable memfd holding the initial contents of guest memory (`pieces`
    of (address, bytes); zero elsewhere). Many GuestMemory objects map it copy-on-write."""

    def __init__(
        self, size: int, pieces: list[tuple[int, bytes]], name: str = "sandbox-image"
    ) -> None:
        self.size = size
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(self.fd, size)
            for addr, data in pieces:
                if addr < 0 or addr + len(data) > size:
                    raise ValueError("memory image piece outside the image")
                view = memoryview(data)
                written = 0
                while written < len(data):
                    written += os.pwrite(self.fd, view[written:], addr + written)
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, _SEALS)
        except BaseException:
            os.close(self.fd)
            raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        self.close()


class GuestMemory:
    """A private, writable mapping of a MemoryImage: the memory of one sandbox."""

    def __init__(self, image: MemoryImage) -> None:
        self.size = image.size
        self.map = mmap.mmap(
            image.fd, image.size, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE
        )
        # Safe: the address is given to KVM as the memslot's backing and the pointer is
        # released in close(), after the VM that uses it is closed.
        self._ptr, self.host_address = buffer_address(self.map)
        self.view = memoryview(self.map)
        self._closed = False

    def prefault(self, ranges: list[tuple[int, int, bool]]) -> None:
        """Populates the host pages of `ranges` (address, size, write) in one system call
        each, so that the guest's first touch of them costs only the hypervisor's fault
        (a fault that must also allocate or copy a page costs several times more)."""
        for addr, size, write in ranges:
            self.map.madvise(_POPULATE_WRITE if write else _POPULATE_READ, addr, size)

    def check_range(self, addr: int, length: int, what: str = "guest memory") -> None:
        """Raises GuestProtocolError unless [addr, addr+length) lies in guest memory."""
        if addr < 0 or length < 0 or addr + length > self.size:
            raise GuestProtocolError(
                f"{what}: range 0x{addr:x}+{length} lies outside guest memory (0x{self.size:x})"
            )

    def write(self, addr: int, data: bytes | bytearray) -> None:
        self.check_range(addr, len(data))
        self.map[addr : addr + len(data)] = data

    def read(self, addr: int, length: int) -> bytes:
        self.check_range(addr, length)
        return self.map[addr : addr + length]

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.view.release()
            ffi.release(self._ptr)
            self.map.close()
