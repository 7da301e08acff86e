"""`GuestMemory`: the guest's physical memory, a memfd mapped into this process.

Guest addresses are plain integers; every access by guest address goes through
`check_range`, the one bounds-checking translator.
"""

from __future__ import annotations

import mmap
import os

from ._native import buffer_address, ffi
from .errors import GuestProtocolError


class GuestMemory:
    def __init__(self, size: int, name: str = "sandbox-guest") -> None:
        self.size = size
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, size)
            self.map = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(self.fd)
            raise
        # Safe: the address is given to KVM as the memslot's backing and the pointer is
        # released in close(), after the VM that uses it is closed.
        self._ptr, self.host_address = buffer_address(self.map)
        self.view = memoryview(self.map)

    def check_range(self, addr: int, length: int, what: str = "guest memory") -> None:
        """Raises GuestProtocolError unless [addr, addr+length) lies in guest memory."""
        if addr < 0 or length < 0 or addr + length > self.size:
            raise GuestProtocolError(
                f"{what}: range 0x{addr:x}+{length} lies outside guest memory (0x{self.size:x})"
            )

    def write(self, addr: int, data: bytes) -> None:
        self.check_range(addr, len(data))
        self.map[addr : addr + len(data)] = data

    def read(self, addr: int, length: int) -> bytes:
        self.check_range(addr, length)
        return self.map[addr : addr + length]

    def close(self) -> None:
        if self.fd >= 0:
            self.view.release()
            ffi.release(self._ptr)
            self.map.close()
            os.close(self.fd)
            self.fd = -1
