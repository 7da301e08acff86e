"""WASI preview1 types: the ABI's enums (errno, rights, file types), flag constants and
struct layouts as wasi/api.h defines them, the limits this implementation enforces, and
the exceptions and protocols shared by the modules of this package."""

from __future__ import annotations

import enum
import errno as _errno
import os
import stat
import struct
from collections.abc import Callable
from typing import NamedTuple, Protocol

from ..._native import lib

# Wasm value type codes, from guests/wasm/wasm_abi.h (WASM_TYPE_I32, WASM_TYPE_I64).
I32: int = lib.WASM_TYPE_I32
I64: int = lib.WASM_TYPE_I64

MiB = 1024 * 1024
U32 = 0xFFFF_FFFF
U64 = 0xFFFF_FFFF_FFFF_FFFF
I64_MAX = (1 << 63) - 1
ADDRESS_SPACE = 1 << 32  # a wasm32 address range may not run past it
MAX_IOVECS = 1024  # IOV_MAX: more gives EINVAL
MAX_IO = 4 * MiB  # bytes moved by one fd_read/fd_write/pread/pwrite at most
MAX_PATH = 4096
MAX_SYMLINKS = 32
MAX_SUBSCRIPTIONS = 16384
RANDOM_CHUNK = 64 * 1024


class MemoryOutOfBounds(Exception):
    """Raised by a `LinearMemory` for an access outside the memory; WASI functions turn it
    into EFAULT."""


class WasiExit(Exception):
    """The program called proc_exit(code). Not an error: the caller maps it to the
    program's exit status."""

    def __init__(self, code: int) -> None:
        super().__init__(f"the program exited with code {code}")
        self.code = code


class LinearMemory(Protocol):
    """A Wasm linear memory as the host sees it. Both methods raise MemoryOutOfBounds when
    any byte of [addr, addr + size) lies outside the memory."""

    def read(self, addr: int, size: int) -> bytes: ...

    def write(self, addr: int, data: bytes) -> None: ...


class WasiFunction(NamedTuple):
    """One WASI import: its Wasm parameter and result types (I32/I64 codes) and the host
    function, called as call(memory, *args) with one int per parameter (signed or
    unsigned; it is reduced to the parameter's width). `memory` may be None for a module
    without memory (then anything touching memory gives EFAULT). Returns the errno, or
    nothing for proc_exit, which raises WasiExit. A different number of arguments raises
    TypeError: check the import's type against params/results when linking."""

    params: tuple[int, ...]
    results: tuple[int, ...]
    call: Callable[..., int]


class Errno(enum.IntEnum):
    """WASI preview1 errno values (wasi/api.h, __WASI_ERRNO_*)."""

    SUCCESS = 0
    TOOBIG = 1  # 2BIG
    ACCES = 2
    ADDRINUSE = 3
    ADDRNOTAVAIL = 4
    AFNOSUPPORT = 5
    AGAIN = 6
    ALREADY = 7
    BADF = 8
    BADMSG = 9
    BUSY = 10
    CANCELED = 11
    CHILD = 12
    CONNABORTED = 13
    CONNREFUSED = 14
    CONNRESET = 15
    DEADLK = 16
    DESTADDRREQ = 17
    DOM = 18
    DQUOT = 19
    EXIST = 20
    FAULT = 21
    FBIG = 22
    HOSTUNREACH = 23
    IDRM = 24
    ILSEQ = 25
    INPROGRESS = 26
    INTR = 27
    INVAL = 28
    IO = 29
    ISCONN = 30
    ISDIR = 31
    LOOP = 32
    MFILE = 33
    MLINK = 34
    MSGSIZE = 35
    MULTIHOP = 36
    NAMETOOLONG = 37
    NETDOWN = 38
    NETRESET = 39
    NETUNREACH = 40
    NFILE = 41
    NOBUFS = 42
    NODEV = 43
    NOENT = 44
    NOEXEC = 45
    NOLCK = 46
    NOLINK = 47
    NOMEM = 48
    NOMSG = 49
    NOPROTOOPT = 50
    NOSPC = 51
    NOSYS = 52
    NOTCONN = 53
    NOTDIR = 54
    NOTEMPTY = 55
    NOTRECOVERABLE = 56
    NOTSOCK = 57
    NOTSUP = 58
    NOTTY = 59
    NXIO = 60
    OVERFLOW = 61
    OWNERDEAD = 62
    PERM = 63
    PIPE = 64
    PROTO = 65
    PROTONOSUPPORT = 66
    PROTOTYPE = 67
    RANGE = 68
    ROFS = 69
    SPIPE = 70
    SRCH = 71
    STALE = 72
    TIMEDOUT = 73
    TXTBSY = 74
    XDEV = 75
    NOTCAPABLE = 76


class Rights(enum.IntFlag):
    """WASI preview1 rights (__WASI_RIGHTS_*)."""

    FD_DATASYNC = 1 << 0
    FD_READ = 1 << 1
    FD_SEEK = 1 << 2
    FD_FDSTAT_SET_FLAGS = 1 << 3
    FD_SYNC = 1 << 4
    FD_TELL = 1 << 5
    FD_WRITE = 1 << 6
    FD_ADVISE = 1 << 7
    FD_ALLOCATE = 1 << 8
    PATH_CREATE_DIRECTORY = 1 << 9
    PATH_CREATE_FILE = 1 << 10
    PATH_LINK_SOURCE = 1 << 11
    PATH_LINK_TARGET = 1 << 12
    PATH_OPEN = 1 << 13
    FD_READDIR = 1 << 14
    PATH_READLINK = 1 << 15
    PATH_RENAME_SOURCE = 1 << 16
    PATH_RENAME_TARGET = 1 << 17
    PATH_FILESTAT_GET = 1 << 18
    PATH_FILESTAT_SET_SIZE = 1 << 19
    PATH_FILESTAT_SET_TIMES = 1 << 20
    FD_FILESTAT_GET = 1 << 21
    FD_FILESTAT_SET_SIZE = 1 << 22
    FD_FILESTAT_SET_TIMES = 1 << 23
    PATH_SYMLINK = 1 << 24
    PATH_REMOVE_DIRECTORY = 1 << 25
    PATH_UNLINK_FILE = 1 << 26
    POLL_FD_READWRITE = 1 << 27
    SOCK_SHUTDOWN = 1 << 28
    SOCK_ACCEPT = 1 << 29


class Filetype(enum.IntEnum):
    UNKNOWN = 0
    BLOCK_DEVICE = 1
    CHARACTER_DEVICE = 2
    DIRECTORY = 3
    REGULAR_FILE = 4
    SOCKET_DGRAM = 5
    SOCKET_STREAM = 6
    SYMBOLIC_LINK = 7


# Clock ids, whence, fdflags, oflags, lookupflags, fstflags, event types (wasi/api.h).
CLOCK_REALTIME, CLOCK_MONOTONIC, CLOCK_PROCESS_CPUTIME, CLOCK_THREAD_CPUTIME = 0, 1, 2, 3
WHENCE_SET, WHENCE_CUR, WHENCE_END = 0, 1, 2
FDFLAGS_APPEND, FDFLAGS_DSYNC, FDFLAGS_NONBLOCK, FDFLAGS_RSYNC, FDFLAGS_SYNC = 1, 2, 4, 8, 16
OFLAGS_CREAT, OFLAGS_DIRECTORY, OFLAGS_EXCL, OFLAGS_TRUNC = 1, 2, 4, 8
LOOKUP_SYMLINK_FOLLOW = 1
FSTFLAGS_ATIM, FSTFLAGS_ATIM_NOW, FSTFLAGS_MTIM, FSTFLAGS_MTIM_NOW = 1, 2, 4, 8
EVENTTYPE_CLOCK, EVENTTYPE_FD_READ, EVENTTYPE_FD_WRITE = 0, 1, 2
SUBCLOCKFLAGS_ABSTIME = 1
PREOPENTYPE_DIR = 0

# Struct layouts (little endian, offsets as in wasi/api.h's _Static_asserts).
IOVEC = struct.Struct("<II")  # buf, buf_len
FDSTAT = struct.Struct("<BxHxxxxQQ")  # filetype, flags, rights_base, rights_inheriting
FILESTAT = struct.Struct("<QQBxxxxxxxQQQQQ")  # dev ino filetype nlink size atim mtim ctim
DIRENT = struct.Struct("<QQIBxxx")  # d_next, d_ino, d_namlen, d_type
PRESTAT = struct.Struct("<BxxxI")  # tag, pr_name_len
SUBSCRIPTION = struct.Struct("<QB7x32s")  # userdata, tag, union (clock or fd_readwrite)
SUBSCRIPTION_CLOCK = struct.Struct("<IxxxxQQH")  # id, timeout, precision, flags
EVENT = struct.Struct("<QHBxxxxxQHxxxxxx")  # userdata error type; nbytes flags

FILE_READ_RIGHTS = (
    Rights.FD_READ
    | Rights.FD_SEEK
    | Rights.FD_TELL
    | Rights.FD_FILESTAT_GET
    | Rights.FD_ADVISE
    | Rights.FD_FDSTAT_SET_FLAGS
    | Rights.POLL_FD_READWRITE
)
FILE_WRITE_RIGHTS = (
    Rights.FD_WRITE
    | Rights.FD_DATASYNC
    | Rights.FD_SYNC
    | Rights.FD_ALLOCATE
    | Rights.FD_FILESTAT_SET_SIZE
    | Rights.FD_FILESTAT_SET_TIMES
)
DIR_READ_RIGHTS = (
    Rights.PATH_OPEN
    | Rights.FD_READDIR
    | Rights.PATH_READLINK
    | Rights.PATH_FILESTAT_GET
    | Rights.FD_FILESTAT_GET
)
DIR_WRITE_RIGHTS = (
    Rights.PATH_CREATE_DIRECTORY
    | Rights.PATH_CREATE_FILE
    | Rights.PATH_LINK_SOURCE
    | Rights.PATH_LINK_TARGET
    | Rights.PATH_RENAME_SOURCE
    | Rights.PATH_RENAME_TARGET
    | Rights.PATH_FILESTAT_SET_SIZE
    | Rights.PATH_FILESTAT_SET_TIMES
    | Rights.PATH_SYMLINK
    | Rights.PATH_REMOVE_DIRECTORY
    | Rights.PATH_UNLINK_FILE
    | Rights.FD_FILESTAT_SET_TIMES
    | Rights.FD_SYNC
    | Rights.FD_DATASYNC
)
FILE_RIGHTS = FILE_READ_RIGHTS | FILE_WRITE_RIGHTS
DIR_RIGHTS = DIR_READ_RIGHTS | DIR_WRITE_RIGHTS
STDIN_RIGHTS = (
    Rights.FD_READ | Rights.FD_FILESTAT_GET | Rights.FD_FDSTAT_SET_FLAGS | Rights.POLL_FD_READWRITE
)
STDOUT_RIGHTS = (
    Rights.FD_WRITE | Rights.FD_FILESTAT_GET | Rights.FD_FDSTAT_SET_FLAGS | Rights.POLL_FD_READWRITE
)


class Fail(Exception):
    """Ends a WASI function with an errno (internal to this package: the function table
    turns it into the function's result)."""

    def __init__(self, code: Errno) -> None:
        super().__init__(code.name)
        self.code = code


def _host_errno_table() -> dict[int, Errno]:
    table: dict[int, Errno] = {}
    for member in Errno:
        name = "E2BIG" if member is Errno.TOOBIG else "E" + member.name
        value = getattr(_errno, name, None)
        if value is not None and member is not Errno.SUCCESS:
            table.setdefault(value, member)
    table[_errno.EOPNOTSUPP] = Errno.NOTSUP
    table[_errno.EWOULDBLOCK] = Errno.AGAIN
    return table


_HOST_ERRNO = _host_errno_table()


def from_oserror(exc: OSError) -> Errno:
    """The WASI errno of a host error: the one of the same name, EIO when there is none."""
    return _HOST_ERRNO.get(exc.errno or 0, Errno.IO)


def filetype(mode: int) -> Filetype:
    """The WASI file type of a host st_mode."""
    if stat.S_ISREG(mode):
        return Filetype.REGULAR_FILE
    if stat.S_ISDIR(mode):
        return Filetype.DIRECTORY
    if stat.S_ISLNK(mode):
        return Filetype.SYMBOLIC_LINK
    if stat.S_ISCHR(mode):
        return Filetype.CHARACTER_DEVICE
    if stat.S_ISBLK(mode):
        return Filetype.BLOCK_DEVICE
    if stat.S_ISSOCK(mode):
        return Filetype.SOCKET_STREAM
    return Filetype.UNKNOWN


def filestat(st: os.stat_result) -> bytes:
    """A host stat result as a WASI filestat struct."""
    return FILESTAT.pack(
        st.st_dev & U64,
        st.st_ino & U64,
        filetype(st.st_mode),
        st.st_nlink,
        max(st.st_size, 0),
        max(st.st_atime_ns, 0),
        max(st.st_mtime_ns, 0),
        max(st.st_ctime_ns, 0),
    )
