"""WASI functions that move bytes: fd_read, fd_write, fd_pread, fd_pwrite (iovec scatter/
gather, at most MAX_IO bytes per call: a short count, as POSIX allows), fd_seek and
fd_tell. Stdio is here too: fd 0 reads `Stdin`; fds 1 and 2 go to a `Capture`, the
host's own fd 1 and 2, or nowhere, as configured. Every buffer is checked before anything
moves, so a failed fd_read consumes no input and a failed fd_write writes nothing."""

from __future__ import annotations

import os
from collections.abc import Callable

from .fdtable import Descriptor
from .memory import GuardedMemory, Iovecs, gather, iovecs, probe, scatter, transfer_size
from .state import WasiState
from .types import I64_MAX, WHENCE_CUR, WHENCE_END, WHENCE_SET, Errno, Fail, Rights


def _io_fd(s: WasiState, fd: int, right: Rights, offset: int | None = None) -> Descriptor:
    """The descriptor for a read or write (at `offset`: pread/pwrite), checked."""
    e = s.fds.get(fd)
    if e.kind == "dir":
        raise Fail(Errno.ISDIR)
    if offset is not None:
        if e.is_stdio:
            raise Fail(Errno.SPIPE)
        right |= Rights.FD_SEEK
    if (e.base & right) != right:
        raise Fail(Errno.NOTCAPABLE)
    if offset is not None and offset > I64_MAX:
        raise Fail(Errno.INVAL)
    return e


def _read(s: WasiState, e: Descriptor, n: int, offset: int | None) -> bytes:
    if e.kind == "stdin":
        return s.stdin.read(n)
    if offset is None:
        return os.read(e.host(), n)
    return os.pread(e.host(), n, offset)


def _write_stdio(s: WasiState, e: Descriptor, mem: GuardedMemory, vecs: Iovecs) -> int:
    """Writes to fd 1 or 2. A captured stream reads from the program's memory only what it
    keeps; past its limit a write still succeeds in full (the program must not retry or
    fail), and only the capture records the truncation."""
    mode = s.config.stdout if e.kind == "stdout" else s.config.stderr
    if mode == "inherit":
        data = gather(mem, vecs)
        view = memoryview(data)
        while view:
            view = view[os.write(1 if e.kind == "stdout" else 2, view) :]
        return len(data)
    probe(mem, vecs)
    size = transfer_size(vecs)
    if mode == "capture":
        capture = s.stdout if e.kind == "stdout" else s.stderr
        capture.append(gather(mem, vecs, capture.room), size)
    return size


def _readv(
    s: WasiState,
    mem: GuardedMemory,
    e: Descriptor,
    iovs: int,
    count: int,
    nread_ptr: int,
    offset: int | None = None,
) -> int:
    vecs = iovecs(mem, iovs, count)
    mem.read(nread_ptr, 4)  # fault before consuming input
    probe(mem, vecs)
    data = _read(s, e, transfer_size(vecs), offset)
    scatter(mem, vecs, data)
    mem.put_u32(nread_ptr, len(data))
    return 0


def _writev(
    s: WasiState,
    mem: GuardedMemory,
    e: Descriptor,
    iovs: int,
    count: int,
    nwritten_ptr: int,
    offset: int | None = None,
) -> int:
    vecs = iovecs(mem, iovs, count)
    mem.read(nwritten_ptr, 4)  # fault before writing
    if e.is_stdio:
        n = _write_stdio(s, e, mem, vecs)
    elif offset is None:
        n = os.write(e.host(), gather(mem, vecs))
    else:
        n = os.pwrite(e.host(), gather(mem, vecs), offset)
    mem.put_u32(nwritten_ptr, n)
    return 0


def fd_read(s: WasiState, mem: GuardedMemory, fd: int, iovs: int, count: int, n_ptr: int) -> int:
    return _readv(s, mem, _io_fd(s, fd, Rights.FD_READ), iovs, count, n_ptr)


def fd_pread(
    s: WasiState, mem: GuardedMemory, fd: int, iovs: int, count: int, offset: int, n_ptr: int
) -> int:
    e = _io_fd(s, fd, Rights.FD_READ, offset)
    return _readv(s, mem, e, iovs, count, n_ptr, offset)


def fd_write(s: WasiState, mem: GuardedMemory, fd: int, iovs: int, count: int, n_ptr: int) -> int:
    return _writev(s, mem, _io_fd(s, fd, Rights.FD_WRITE), iovs, count, n_ptr)


def fd_pwrite(
    s: WasiState, mem: GuardedMemory, fd: int, iovs: int, count: int, offset: int, n_ptr: int
) -> int:
    e = _io_fd(s, fd, Rights.FD_WRITE, offset)
    return _writev(s, mem, e, iovs, count, n_ptr, offset)


def fd_seek(
    s: WasiState, mem: GuardedMemory, fd: int, offset: int, whence: int, result_ptr: int
) -> int:
    e = s.fds.get(fd)
    if e.is_stdio:
        raise Fail(Errno.SPIPE)
    tell_only = offset == 0 and whence == WHENCE_CUR
    if not e.base & (Rights.FD_TELL if tell_only else Rights.FD_SEEK):
        raise Fail(Errno.NOTCAPABLE)
    if whence not in (WHENCE_SET, WHENCE_CUR, WHENCE_END):
        raise Fail(Errno.INVAL)
    signed = offset - (1 << 64) if offset > I64_MAX else offset
    mem.read(result_ptr, 8)
    where = os.lseek(e.host_fd, signed, (os.SEEK_SET, os.SEEK_CUR, os.SEEK_END)[whence])
    mem.put_u64(result_ptr, where)
    return 0


def fd_tell(s: WasiState, mem: GuardedMemory, fd: int, result_ptr: int) -> int:
    e = s.fds.get(fd)
    if e.is_stdio:
        raise Fail(Errno.SPIPE)
    if not e.base & Rights.FD_TELL:
        raise Fail(Errno.NOTCAPABLE)
    mem.put_u64(result_ptr, os.lseek(e.host_fd, 0, os.SEEK_CUR))
    return 0


FUNCTIONS: dict[str, Callable[..., int]] = {
    "fd_pread": fd_pread,
    "fd_pwrite": fd_pwrite,
    "fd_read": fd_read,
    "fd_seek": fd_seek,
    "fd_tell": fd_tell,
    "fd_write": fd_write,
}
