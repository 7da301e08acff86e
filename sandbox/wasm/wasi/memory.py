"""The program's linear memory as WASI functions use it: every access bounds-checked
before it reaches the `LinearMemory` (u32 addresses, nothing past 4 GiB, EFAULT for a
module without memory), and the iovec scatter/gather of fd_read/fd_write."""

from __future__ import annotations

import struct

from .types import ADDRESS_SPACE, IOVEC, MAX_IO, MAX_IOVECS, U32, Errno, Fail, LinearMemory

Iovecs = list[tuple[int, int]]  # (buf, buf_len) pairs


class GuardedMemory:
    """Bounds every access before it reaches the LinearMemory: addresses are u32 and a
    range may not run past 4 GiB (EFAULT), and a missing memory faults."""

    __slots__ = ("_memory",)

    def __init__(self, memory: LinearMemory | None) -> None:
        self._memory = memory

    def read(self, addr: int, size: int) -> bytes:
        if self._memory is None or addr < 0 or size < 0 or addr + size > ADDRESS_SPACE:
            raise Fail(Errno.FAULT)
        if size == 0:
            return b""
        return self._memory.read(addr, size)

    def write(self, addr: int, data: bytes) -> None:
        if self._memory is None or addr < 0 or addr + len(data) > ADDRESS_SPACE:
            raise Fail(Errno.FAULT)
        if data:
            self._memory.write(addr, data)

    def probe_range(self, addr: int, size: int) -> None:
        """Faults now (EFAULT) unless [addr, addr + size) lies inside memory: linear memory
        is contiguous, so its last byte decides."""
        if addr + size > ADDRESS_SPACE:
            raise Fail(Errno.FAULT)
        if size:
            self.read(addr + size - 1, 1)

    def put_u32(self, addr: int, value: int) -> None:
        self.write(addr, struct.pack("<I", value))

    def put_u64(self, addr: int, value: int) -> None:
        self.write(addr, struct.pack("<Q", value))


def iovecs(mem: GuardedMemory, ptr: int, count: int) -> Iovecs:
    """The `count` iovecs at `ptr`: EINVAL for too many or a total past u32, EFAULT for a
    buffer running past 4 GiB."""
    if count > MAX_IOVECS:
        raise Fail(Errno.INVAL)
    raw = mem.read(ptr, count * IOVEC.size)
    vecs = []
    total = 0
    for buf, length in IOVEC.iter_unpack(raw):
        if buf + length > ADDRESS_SPACE:
            raise Fail(Errno.FAULT)
        total += length
        vecs.append((buf, length))
    if total > U32:
        raise Fail(Errno.INVAL)  # the byte count would not fit the u32 result
    return vecs


def transfer_size(vecs: Iovecs) -> int:
    """The bytes one fd_read/fd_write moves through `vecs`: all of them, at most MAX_IO."""
    return min(sum(n for _, n in vecs), MAX_IO)


def probe(mem: GuardedMemory, vecs: Iovecs) -> None:
    """Faults now if a buffer the transfer would touch lies outside memory, so that no
    input is consumed and no output written before the fault."""
    room = MAX_IO
    for buf, length in vecs:
        n = min(length, room)
        if n:
            mem.read(buf + n - 1, 1)
            room -= n


def gather(mem: GuardedMemory, vecs: Iovecs, limit: int = MAX_IO) -> bytes:
    """The first `limit` (at most MAX_IO) bytes of the buffers, read in one pass."""
    pieces = []
    room = min(limit, MAX_IO)
    for buf, length in vecs:
        n = min(length, room)
        if n:
            pieces.append(mem.read(buf, n))
            room -= n
    return b"".join(pieces)


def scatter(mem: GuardedMemory, vecs: Iovecs, data: bytes) -> None:
    """Writes `data` across the buffers in order."""
    offset = 0
    for buf, length in vecs:
        if offset >= len(data):
            break
        piece = data[offset : offset + length]
        mem.write(buf, piece)
        offset += len(piece)
