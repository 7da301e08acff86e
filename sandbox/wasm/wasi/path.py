"""WASI path functions: open, create_directory, remove_directory, unlink_file, rename,
link, symlink, readlink, filestat_get and filestat_set_times. Every path goes through
`confine.lookup`; every operation is done relative to the parent directory's descriptor
that the lookup holds, never through a host path string.

path_open gives the new descriptor the rights asked for, intersected with the
directory's inheriting rights and with those that apply to a file or a directory (asking
for FD_WRITE where the directory cannot grant it is ENOTCAPABLE; a directory opened with
write rights opens read-only). FIFOs open without blocking. path_symlink refuses
(ENOTCAPABLE) a target that is absolute or climbs out of the preopened directory, so host
tools that later walk the directory are not led out of it either."""

from __future__ import annotations

import fcntl
import os
import stat
from collections.abc import Callable

from .confine import depth_below_root, lookup, read_path, symlink_stays_inside
from .fd import new_times
from .fdtable import Descriptor
from .memory import GuardedMemory
from .state import WasiState
from .types import (
    DIR_RIGHTS,
    FDFLAGS_APPEND,
    FDFLAGS_DSYNC,
    FDFLAGS_NONBLOCK,
    FDFLAGS_RSYNC,
    FDFLAGS_SYNC,
    FILE_RIGHTS,
    LOOKUP_SYMLINK_FOLLOW,
    OFLAGS_CREAT,
    OFLAGS_DIRECTORY,
    OFLAGS_EXCL,
    OFLAGS_TRUNC,
    Errno,
    Fail,
    Filetype,
    Rights,
    filestat,
    filetype,
)


def _host_flags(oflags: int, fdflags: int) -> int:
    """The host open(2) flags for WASI oflags and fdflags (access mode not included)."""
    flags = os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NOCTTY
    if oflags & OFLAGS_DIRECTORY:
        flags |= os.O_DIRECTORY
    if oflags & OFLAGS_CREAT:
        flags |= os.O_CREAT
    if oflags & OFLAGS_EXCL:
        flags |= os.O_EXCL
    if oflags & OFLAGS_TRUNC:
        flags |= os.O_TRUNC
    if fdflags & FDFLAGS_APPEND:
        flags |= os.O_APPEND
    if fdflags & FDFLAGS_DSYNC:
        flags |= os.O_DSYNC
    if fdflags & (FDFLAGS_SYNC | FDFLAGS_RSYNC):
        flags |= os.O_SYNC
    if fdflags & FDFLAGS_NONBLOCK:
        flags |= os.O_NONBLOCK
    return flags


def path_open(
    s: WasiState,
    mem: GuardedMemory,
    fd: int,
    lookupflags: int,
    path_ptr: int,
    path_len: int,
    oflags: int,
    base: int,
    inheriting: int,
    fdflags: int,
    fd_ptr: int,
) -> int:
    d = s.fds.directory(fd, Rights.PATH_OPEN)
    s.fds.check_room()  # before O_CREAT leaves a file behind
    oflags &= 0xFFFF
    fdflags &= 0xFFFF
    if oflags & ~0xF or fdflags & ~0x1F:
        raise Fail(Errno.INVAL)
    if oflags & OFLAGS_DIRECTORY and oflags & (OFLAGS_CREAT | OFLAGS_TRUNC):
        raise Fail(Errno.INVAL)
    if oflags & OFLAGS_CREAT and not d.base & Rights.PATH_CREATE_FILE:
        raise Fail(Errno.NOTCAPABLE)
    if oflags & OFLAGS_TRUNC and not d.base & Rights.PATH_FILESTAT_SET_SIZE:
        raise Fail(Errno.NOTCAPABLE)
    write = bool(base & Rights.FD_WRITE)
    if write and not d.inheriting & Rights.FD_WRITE:
        raise Fail(Errno.NOTCAPABLE)
    if d.read_only and (write or oflags & (OFLAGS_CREAT | OFLAGS_TRUNC)):
        raise Fail(Errno.NOTCAPABLE)  # unreachable through rights; kept as a backstop
    read = bool(base & (Rights.FD_READ | Rights.FD_READDIR))
    path = read_path(mem, path_ptr, path_len)
    mem.read(fd_ptr, 4)
    flags = _host_flags(oflags, fdflags)
    with lookup(d, path, bool(lookupflags & LOOKUP_SYMLINK_FOLLOW)) as at:
        if at.trailing_slash:
            flags |= os.O_DIRECTORY
        if write and not flags & os.O_DIRECTORY:
            flags |= os.O_RDWR if read else os.O_WRONLY
        try:
            # O_NONBLOCK so that opening a FIFO never blocks; cleared again below.
            host = os.open(at.name, flags | os.O_NONBLOCK, 0o666, dir_fd=at.parent)
        except IsADirectoryError:
            # Write rights asked for a directory (e.g. "all rights"): it opens as a
            # directory, whose rights never include FD_WRITE.
            if flags & (os.O_CREAT | os.O_TRUNC):
                raise
            flags &= ~(os.O_RDWR | os.O_WRONLY | os.O_APPEND)
            host = os.open(at.name, flags | os.O_DIRECTORY, dir_fd=at.parent)
        except PermissionError:
            if write or read or flags & (os.O_CREAT | os.O_TRUNC):
                raise
            flags |= os.O_PATH
            host = os.open(at.name, flags, dir_fd=at.parent)
    try:
        st = os.fstat(host)
        if not fdflags & FDFLAGS_NONBLOCK and not flags & os.O_PATH:
            fcntl.fcntl(host, fcntl.F_SETFL, fcntl.fcntl(host, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        if stat.S_ISDIR(st.st_mode):
            entry = Descriptor(
                "dir",
                Filetype.DIRECTORY,
                base & d.inheriting & DIR_RIGHTS,
                inheriting & d.inheriting,
                host_fd=host,
                read_only=d.read_only,
                root=d.root,
            )
        else:
            entry = Descriptor(
                "file",
                filetype(st.st_mode),
                base & d.inheriting & FILE_RIGHTS,
                0,
                host_fd=host,
                flags=fdflags,
                read_only=d.read_only,
                root=d.root,
            )
    except BaseException:
        os.close(host)
        raise
    mem.put_u32(fd_ptr, s.fds.add(entry))
    return 0


def path_create_directory(s: WasiState, mem: GuardedMemory, fd: int, ptr: int, n: int) -> int:
    d = s.fds.directory(fd, Rights.PATH_CREATE_DIRECTORY)
    with lookup(d, read_path(mem, ptr, n), False) as at:
        os.mkdir(at.name, 0o777, dir_fd=at.parent)
    return 0


def path_remove_directory(s: WasiState, mem: GuardedMemory, fd: int, ptr: int, n: int) -> int:
    d = s.fds.directory(fd, Rights.PATH_REMOVE_DIRECTORY)
    with lookup(d, read_path(mem, ptr, n), False) as at:
        os.rmdir(at.name, dir_fd=at.parent)
    return 0


def path_unlink_file(s: WasiState, mem: GuardedMemory, fd: int, ptr: int, n: int) -> int:
    d = s.fds.directory(fd, Rights.PATH_UNLINK_FILE)
    with lookup(d, read_path(mem, ptr, n), False) as at:
        if at.trailing_slash:
            st = os.stat(at.name, dir_fd=at.parent, follow_symlinks=False)
            raise Fail(Errno.ISDIR if stat.S_ISDIR(st.st_mode) else Errno.NOTDIR)
        os.unlink(at.name, dir_fd=at.parent)
    return 0


def path_filestat_get(
    s: WasiState, mem: GuardedMemory, fd: int, lookupflags: int, ptr: int, n: int, buf: int
) -> int:
    d = s.fds.directory(fd, Rights.PATH_FILESTAT_GET)
    follow = bool(lookupflags & LOOKUP_SYMLINK_FOLLOW)
    with lookup(d, read_path(mem, ptr, n), follow) as at:
        st = os.stat(at.name, dir_fd=at.parent, follow_symlinks=False)
    mem.write(buf, filestat(st))
    return 0


def path_filestat_set_times(
    s: WasiState,
    mem: GuardedMemory,
    fd: int,
    lookupflags: int,
    ptr: int,
    n: int,
    atim: int,
    mtim: int,
    fst: int,
) -> int:
    d = s.fds.directory(fd, Rights.PATH_FILESTAT_SET_TIMES)
    follow = bool(lookupflags & LOOKUP_SYMLINK_FOLLOW)
    with lookup(d, read_path(mem, ptr, n), follow) as at:
        st = os.stat(at.name, dir_fd=at.parent, follow_symlinks=False)
        times = new_times(atim, mtim, fst, st)
        os.utime(at.name, ns=times, dir_fd=at.parent, follow_symlinks=False)
    return 0


def path_readlink(
    s: WasiState,
    mem: GuardedMemory,
    fd: int,
    ptr: int,
    n: int,
    buf: int,
    buf_len: int,
    used_ptr: int,
) -> int:
    d = s.fds.directory(fd, Rights.PATH_READLINK)
    with lookup(d, read_path(mem, ptr, n), False) as at:
        target = os.fsencode(os.readlink(at.name, dir_fd=at.parent))
    data = target[:buf_len]
    mem.read(used_ptr, 4)
    mem.write(buf, data)
    mem.put_u32(used_ptr, len(data))
    return 0


def path_rename(
    s: WasiState,
    mem: GuardedMemory,
    fd: int,
    old: int,
    old_len: int,
    new_fd: int,
    new: int,
    new_len: int,
) -> int:
    src = s.fds.directory(fd, Rights.PATH_RENAME_SOURCE)
    dst = s.fds.directory(new_fd, Rights.PATH_RENAME_TARGET)
    old_path = read_path(mem, old, old_len)
    new_path = read_path(mem, new, new_len)
    with lookup(src, old_path, False) as a, lookup(dst, new_path, False) as b:
        os.rename(a.name, b.name, src_dir_fd=a.parent, dst_dir_fd=b.parent)
    return 0


def path_link(
    s: WasiState,
    mem: GuardedMemory,
    fd: int,
    lookupflags: int,
    old: int,
    old_len: int,
    new_fd: int,
    new: int,
    new_len: int,
) -> int:
    src = s.fds.directory(fd, Rights.PATH_LINK_SOURCE)
    dst = s.fds.directory(new_fd, Rights.PATH_LINK_TARGET)
    old_path = read_path(mem, old, old_len)
    new_path = read_path(mem, new, new_len)
    follow = bool(lookupflags & LOOKUP_SYMLINK_FOLLOW)
    with lookup(src, old_path, follow) as a, lookup(dst, new_path, False) as b:
        os.link(a.name, b.name, src_dir_fd=a.parent, dst_dir_fd=b.parent, follow_symlinks=False)
    return 0


def path_symlink(
    s: WasiState, mem: GuardedMemory, old: int, old_len: int, fd: int, new: int, new_len: int
) -> int:
    d = s.fds.directory(fd, Rights.PATH_SYMLINK)
    target = read_path(mem, old, old_len)
    new_path = read_path(mem, new, new_len)
    if not target:
        raise Fail(Errno.NOENT)
    if target.startswith("/"):
        raise Fail(Errno.NOTCAPABLE)
    with lookup(d, new_path, False) as at:
        if not symlink_stays_inside(target, depth_below_root(at.parent, d.root)):
            raise Fail(Errno.NOTCAPABLE)
        os.symlink(target, at.name, dir_fd=at.parent)
    return 0


FUNCTIONS: dict[str, Callable[..., int]] = {
    "path_create_directory": path_create_directory,
    "path_filestat_get": path_filestat_get,
    "path_filestat_set_times": path_filestat_set_times,
    "path_link": path_link,
    "path_open": path_open,
    "path_readlink": path_readlink,
    "path_remove_directory": path_remove_directory,
    "path_rename": path_rename,
    "path_symlink": path_symlink,
    "path_unlink_file": path_unlink_file,
}
