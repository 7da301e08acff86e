"""WASI functions on descriptors other than reading and writing: close, renumber, fdstat
(get, set_flags, set_rights: only dropping rights), filestat (get, set_size, set_times),
advise, allocate, sync, datasync, prestat and readdir."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable

from .fdtable import Descriptor
from .memory import GuardedMemory
from .state import WasiState
from .types import (
    ADDRESS_SPACE,
    DIRENT,
    FDFLAGS_APPEND,
    FDFLAGS_DSYNC,
    FDFLAGS_NONBLOCK,
    FDFLAGS_RSYNC,
    FDFLAGS_SYNC,
    FDSTAT,
    FILESTAT,
    FSTFLAGS_ATIM,
    FSTFLAGS_ATIM_NOW,
    FSTFLAGS_MTIM,
    FSTFLAGS_MTIM_NOW,
    I64_MAX,
    PREOPENTYPE_DIR,
    PRESTAT,
    U64,
    Errno,
    Fail,
    Filetype,
    Rights,
    filestat,
    filetype,
)

_SYNC_FLAGS = FDFLAGS_DSYNC | FDFLAGS_RSYNC | FDFLAGS_SYNC
_ADVICE = (
    os.POSIX_FADV_NORMAL,
    os.POSIX_FADV_SEQUENTIAL,
    os.POSIX_FADV_RANDOM,
    os.POSIX_FADV_WILLNEED,
    os.POSIX_FADV_DONTNEED,
    os.POSIX_FADV_NOREUSE,
)


def fd_close(s: WasiState, mem: GuardedMemory, fd: int) -> int:
    s.fds.remove(fd)
    return 0


def fd_renumber(s: WasiState, mem: GuardedMemory, fd: int, to: int) -> int:
    s.fds.renumber(fd, to)
    return 0


def fd_fdstat_get(s: WasiState, mem: GuardedMemory, fd: int, buf: int) -> int:
    e = s.fds.get(fd)
    mem.write(buf, FDSTAT.pack(e.filetype, e.flags, e.base, e.inheriting))
    return 0


def fd_fdstat_set_flags(s: WasiState, mem: GuardedMemory, fd: int, flags: int) -> int:
    e = s.fds.get(fd, Rights.FD_FDSTAT_SET_FLAGS)
    flags &= 0xFFFF
    if flags & ~(FDFLAGS_APPEND | FDFLAGS_NONBLOCK | _SYNC_FLAGS):
        raise Fail(Errno.INVAL)
    if (flags ^ e.flags) & _SYNC_FLAGS:
        raise Fail(Errno.NOTSUP)  # Linux cannot change them on an open file
    if e.kind == "file":
        if flags & FDFLAGS_APPEND and not e.base & Rights.FD_WRITE:
            raise Fail(Errno.NOTCAPABLE)
        host = fcntl.fcntl(e.host_fd, fcntl.F_GETFL) & ~(os.O_APPEND | os.O_NONBLOCK)
        if flags & FDFLAGS_APPEND:
            host |= os.O_APPEND
        if flags & FDFLAGS_NONBLOCK:
            host |= os.O_NONBLOCK
        fcntl.fcntl(e.host_fd, fcntl.F_SETFL, host)
    e.flags = flags
    return 0


def fd_fdstat_set_rights(
    s: WasiState, mem: GuardedMemory, fd: int, base: int, inheriting: int
) -> int:
    e = s.fds.get(fd)
    if base & ~e.base or inheriting & ~e.inheriting:
        raise Fail(Errno.NOTCAPABLE)
    e.base, e.inheriting = base, inheriting
    return 0


def _fstat(e: Descriptor) -> bytes:
    if e.host_fd < 0:
        return FILESTAT.pack(0, 0, e.filetype, 1, 0, 0, 0, 0)
    return filestat(os.fstat(e.host_fd))


def fd_filestat_get(s: WasiState, mem: GuardedMemory, fd: int, buf: int) -> int:
    e = s.fds.get(fd, Rights.FD_FILESTAT_GET)
    mem.write(buf, _fstat(e))
    return 0


def fd_filestat_set_size(s: WasiState, mem: GuardedMemory, fd: int, size: int) -> int:
    e = s.fds.get(fd, Rights.FD_FILESTAT_SET_SIZE)
    if size > I64_MAX:
        raise Fail(Errno.INVAL)
    os.ftruncate(e.host(), size)
    return 0


def new_times(atim: int, mtim: int, fst: int, current: os.stat_result) -> tuple[int, int]:
    """The (atime, mtime) in ns that fstflags ask for, given the file's current stat."""
    if (
        fst & ~0xF
        or (fst & FSTFLAGS_ATIM and fst & FSTFLAGS_ATIM_NOW)
        or (fst & FSTFLAGS_MTIM and fst & FSTFLAGS_MTIM_NOW)
    ):
        raise Fail(Errno.INVAL)
    if atim > I64_MAX or mtim > I64_MAX:
        raise Fail(Errno.INVAL)
    now = time.time_ns()
    a = atim if fst & FSTFLAGS_ATIM else now if fst & FSTFLAGS_ATIM_NOW else current.st_atime_ns
    m = mtim if fst & FSTFLAGS_MTIM else now if fst & FSTFLAGS_MTIM_NOW else current.st_mtime_ns
    return a, m


def fd_filestat_set_times(
    s: WasiState, mem: GuardedMemory, fd: int, atim: int, mtim: int, fst: int
) -> int:
    e = s.fds.get(fd, Rights.FD_FILESTAT_SET_TIMES)
    host = e.host()
    os.utime(host, ns=new_times(atim, mtim, fst, os.fstat(host)))
    return 0


def fd_advise(
    s: WasiState, mem: GuardedMemory, fd: int, offset: int, length: int, advice: int
) -> int:
    e = s.fds.get(fd)
    if advice >= len(_ADVICE) or offset > I64_MAX or length > I64_MAX:
        raise Fail(Errno.INVAL)
    if e.is_stdio:
        raise Fail(Errno.SPIPE)
    if not e.base & Rights.FD_ADVISE:
        raise Fail(Errno.NOTCAPABLE)
    if e.kind == "dir":
        raise Fail(Errno.BADF)
    os.posix_fadvise(e.host_fd, offset, length, _ADVICE[advice])
    return 0


def fd_allocate(s: WasiState, mem: GuardedMemory, fd: int, offset: int, length: int) -> int:
    e = s.fds.get(fd, Rights.FD_ALLOCATE)
    if offset > I64_MAX or length > I64_MAX or offset + length > I64_MAX:
        raise Fail(Errno.FBIG)
    if e.kind != "file":
        raise Fail(Errno.BADF)
    if length == 0:
        raise Fail(Errno.INVAL)
    os.posix_fallocate(e.host_fd, offset, length)
    return 0


def fd_datasync(s: WasiState, mem: GuardedMemory, fd: int) -> int:
    os.fdatasync(s.fds.get(fd, Rights.FD_DATASYNC).host())
    return 0


def fd_sync(s: WasiState, mem: GuardedMemory, fd: int) -> int:
    os.fsync(s.fds.get(fd, Rights.FD_SYNC).host())
    return 0


def fd_prestat_get(s: WasiState, mem: GuardedMemory, fd: int, buf: int) -> int:
    e = s.fds.get(fd)
    if e.preopen is None:
        raise Fail(Errno.BADF)
    mem.write(buf, PRESTAT.pack(PREOPENTYPE_DIR, len(e.preopen.encode())))
    return 0


def fd_prestat_dir_name(s: WasiState, mem: GuardedMemory, fd: int, path: int, length: int) -> int:
    e = s.fds.get(fd)
    if e.preopen is None:
        raise Fail(Errno.BADF)
    name = e.preopen.encode()
    if length < len(name):
        raise Fail(Errno.NAMETOOLONG)
    mem.write(path, name)
    return 0


def _listing(e: Descriptor) -> list[tuple[str, int, Filetype]]:
    own = os.fstat(e.host_fd)
    if e.preopen is not None:
        parent = own  # ".." of a preopen is not the program's to see
    else:
        parent = os.stat("..", dir_fd=e.host_fd, follow_symlinks=False)
    entries = [(".", own.st_ino, Filetype.DIRECTORY), ("..", parent.st_ino, Filetype.DIRECTORY)]
    with os.scandir(e.host_fd) as it:
        for d in it:
            try:
                if d.is_symlink():
                    kind = Filetype.SYMBOLIC_LINK
                elif d.is_dir(follow_symlinks=False):
                    kind = Filetype.DIRECTORY
                elif d.is_file(follow_symlinks=False):
                    kind = Filetype.REGULAR_FILE
                else:
                    kind = filetype(d.stat(follow_symlinks=False).st_mode)
            except OSError:
                kind = Filetype.UNKNOWN
            entries.append((d.name, d.inode(), kind))
    return entries


def fd_readdir(
    s: WasiState, mem: GuardedMemory, fd: int, buf: int, length: int, cookie: int, used_ptr: int
) -> int:
    """Dirents with cookies (an entry's cookie is its index + 1), "." and ".." included;
    the listing is taken at cookie 0 and served from it until the next cookie 0."""
    e = s.fds.get(fd)
    if e.kind != "dir":
        raise Fail(Errno.NOTDIR)
    if not e.base & Rights.FD_READDIR:
        raise Fail(Errno.NOTCAPABLE)
    if buf + length > ADDRESS_SPACE:
        raise Fail(Errno.FAULT)
    mem.read(used_ptr, 4)
    if cookie == 0 or e.listing is None:
        e.listing = _listing(e)
    out = bytearray()
    index = cookie
    while index < len(e.listing) and len(out) < length:
        name, ino, kind = e.listing[index]
        encoded = os.fsencode(name)
        out += DIRENT.pack(index + 1, ino & U64, len(encoded), kind) + encoded
        index += 1
    data = bytes(out[:length])
    mem.write(buf, data)
    mem.put_u32(used_ptr, len(data))
    return 0


FUNCTIONS: dict[str, Callable[..., int]] = {
    "fd_advise": fd_advise,
    "fd_allocate": fd_allocate,
    "fd_close": fd_close,
    "fd_datasync": fd_datasync,
    "fd_fdstat_get": fd_fdstat_get,
    "fd_fdstat_set_flags": fd_fdstat_set_flags,
    "fd_fdstat_set_rights": fd_fdstat_set_rights,
    "fd_filestat_get": fd_filestat_get,
    "fd_filestat_set_size": fd_filestat_set_size,
    "fd_filestat_set_times": fd_filestat_set_times,
    "fd_prestat_get": fd_prestat_get,
    "fd_prestat_dir_name": fd_prestat_dir_name,
    "fd_readdir": fd_readdir,
    "fd_renumber": fd_renumber,
    "fd_sync": fd_sync,
}
