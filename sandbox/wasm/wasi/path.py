"""WASI path functions: open, create_directory, remove_directory, unlink_file, rename,
link, symlink, readlink, filestat_get and filestat_set_times. Every path goes through
`confine.lookup`; every operation is done relative to the parent directory's descriptor
that the lookup holds, never through a host path string.

path_open gives the new descriptor the rights asked for, intersected with the
directory's inheriting rights and with those that apply to a file or a directory (asking
for FD_WRITE where the directory cannot grant it is ENOTCAPABLE; asking for it on a
directory, the preopen itself included, is EISDIR, as in Linux and wasmtime). FIFOs open
without blocking.

No operation leaves a symlink behind that points out of the preopened directory, so host
tools that later walk the directory are not led out of it either: path_symlink refuses
(ENOTCAPABLE) a target that is absolute or climbs out, and path_link and path_rename
refuse to put an existing symlink where its relative target would climb out (a hard link
or a move to a shallower directory). A directory moved by path_rename takes the links
inside it along unchecked; the lookups here never follow them out all the same.

Trailing slashes follow POSIX (see `confine`): "name/" must be a directory; path_open
with O_CREAT of "name/" is EISDIR; a new name with a trailing slash for path_symlink or
path_link is EEXIST when taken and ENOENT when not; path_rename of a non-directory with a
trailing slash on either side is ENOTDIR."""

from __future__ import annotations

import fcntl
import os
import stat
from collections.abc import Callable

from .confine import Lookup, depth_below_root, lookup, read_path, symlink_stays_inside
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
    follow = bool(lookupflags & LOOKUP_SYMLINK_FOLLOW)
    creating = bool(oflags & OFLAGS_CREAT)
    with lookup(d, path, follow, slash="create" if creating else "follow") as at:
        if at.trailing_slash and at.name != ".":  # "." is a directory anyway
            if creating:
                raise Fail(Errno.ISDIR)  # O_CREAT of "name/" never makes a directory
            flags |= os.O_DIRECTORY
        if write:
            # On a directory (the preopen itself too) Linux refuses both: EISDIR.
            flags |= os.O_RDWR if read else os.O_WRONLY
        try:
            # O_NONBLOCK so that opening a FIFO never blocks; cleared again below.
            host = os.open(at.name, flags | os.O_NONBLOCK, 0o666, dir_fd=at.parent)
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
    with lookup(d, read_path(mem, ptr, n), False, slash="create") as at:
        os.mkdir(at.name, 0o777, dir_fd=at.parent)
    return 0


def path_remove_directory(s: WasiState, mem: GuardedMemory, fd: int, ptr: int, n: int) -> int:
    d = s.fds.directory(fd, Rights.PATH_REMOVE_DIRECTORY)
    with lookup(d, read_path(mem, ptr, n), False, slash="notdir") as at:
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
    with (
        lookup(src, old_path, False, slash="notdir") as a,
        lookup(dst, new_path, False, slash="notdir") as b,
    ):
        st = os.stat(a.name, dir_fd=a.parent, follow_symlinks=False)
        if (a.trailing_slash or b.trailing_slash) and not stat.S_ISDIR(st.st_mode):
            raise Fail(Errno.NOTDIR)
        _check_moved_link(st, a, b, dst)
        os.rename(a.name, b.name, src_dir_fd=a.parent, dst_dir_fd=b.parent)
    return 0


def _check_new_name(at: Lookup) -> None:
    """A new name given with a trailing slash (path_symlink, path_link): EEXIST when the
    name is taken, ENOENT when not (as Linux does: the slash asks for a directory that
    these calls never make)."""
    if at.trailing_slash:
        try:
            os.stat(at.name, dir_fd=at.parent, follow_symlinks=False)
        except FileNotFoundError:
            raise Fail(Errno.NOENT) from None
        raise Fail(Errno.EXIST)


def _check_moved_link(st: os.stat_result, a: Lookup, b: Lookup, dst: Descriptor) -> None:
    """ENOTCAPABLE when `a` is a symlink whose target, read from where `b` puts it,
    climbs out of dst's preopen (a hard link or a move to a shallower directory)."""
    if not stat.S_ISLNK(st.st_mode):
        return
    target = os.readlink(a.name, dir_fd=a.parent)
    if target.startswith("/") or not symlink_stays_inside(
        target, depth_below_root(b.parent, dst.root)
    ):
        raise Fail(Errno.NOTCAPABLE)


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
    with lookup(src, old_path, follow) as a, lookup(dst, new_path, False, slash="create") as b:
        _check_new_name(b)
        st = os.stat(a.name, dir_fd=a.parent, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            raise Fail(Errno.PERM)  # Linux: no hard links to directories
        _check_moved_link(st, a, b, dst)
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
    with lookup(d, new_path, False, slash="create") as at:
        _check_new_name(at)
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
