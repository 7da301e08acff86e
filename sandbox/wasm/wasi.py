"""WASI preview1 (`wasi_snapshot_preview1`) on the host: the system interface of a Wasm
program running in the engine guest. The engine turns each WASI import into a host call;
`WasiContext.functions[name].call(memory, *args)` handles it against the program's
linear memory and returns the WASI errno (an i32), or raises `WasiExit` for proc_exit.

Supported (all 46 functions are present; each returns an errno and never raises for
anything a guest can pass; see "Failures" below):

- args_*/environ_*: the exact preview1 layout (an array of u32 pointers, then the
  NUL-terminated strings packed one after another; environ strings are "KEY=VALUE").
- clock_res_get/clock_time_get: realtime, monotonic, process and thread CPU time (both
  CPU clocks read the CPU time of the host thread running the call, which includes the
  vCPU's guest time). With `WasiConfig(clock="virtual")` every clock starts at a fixed
  value and advances only when poll_oneoff sleeps (deterministic runs).
- random_get: os.urandom, or a seeded generator with `WasiConfig(random_seed=...)`.
- fd_*: stdio (fd 0 reads `WasiConfig.stdin` or the host's stdin; fds 1 and 2 are
  captured, written to the host's fds 1 and 2, or discarded; all three are character
  devices without seek/tell rights, so wasi-libc's isatty() is true and stdout is line
  buffered), preopened directories from fd 3 in configuration order, and files and
  directories opened with path_open: read, write, pread, pwrite (iovec scatter/gather),
  seek, tell, advise, allocate, sync, datasync, fdstat get/set_flags (APPEND,
  NONBLOCK)/set_rights (only dropping rights), filestat get/set_size/set_times, readdir
  (dirents with cookies, "." and ".." included), renumber, close, prestat get/dir_name.
- path_*: open (oflags CREAT, DIRECTORY, EXCL, TRUNC; fdflags APPEND, DSYNC, NONBLOCK,
  RSYNC, SYNC; lookupflags SYMLINK_FOLLOW), create_directory, remove_directory,
  unlink_file, rename, link, symlink, readlink, filestat_get, filestat_set_times.
  path_open gives the new descriptor the rights asked for, intersected with the
  directory's inheriting rights and with those that apply to a file or a directory
  (asking for FD_WRITE where the directory cannot grant it is ENOTCAPABLE; a directory
  opened with write rights opens read-only). FIFOs open without blocking.
- poll_oneoff: clock subscriptions (relative or absolute, realtime or monotonic) sleep;
  fd_read/fd_write subscriptions are reported ready at once (regular files and stdio
  never block). A sleep ends early with EINTR when `WasiContext.interrupt()` is called
  (for call timeouts and cancellation).
- proc_exit raises `WasiExit(code)` (and records `exit_code`); sched_yield succeeds.

Not supported: sockets (sock_accept/recv/send/shutdown return EBADF for a closed fd and
ENOTSOCK otherwise: no descriptor is ever a socket), proc_raise (ENOSYS), fd_renumber to
or from a preopened directory (ENOTSUP), fd_fdstat_set_flags with DSYNC/RSYNC/SYNC
(ENOTSUP, Linux cannot change them on an open file), CPU-time clocks in poll_oneoff (the
event carries EINVAL).

Failures: an address or length outside linear memory (or past 4 GiB) gives EFAULT (21),
checked before anything happens (a failed fd_read consumes no input, a failed fd_write
writes nothing);
malformed values (an unknown whence, advice, clock, oflag or fstflags bit, an iovec count
over 1024, zero or more than 16384 subscriptions) give EINVAL (28); a path that is not
UTF-8 gives EILSEQ (25); a path longer than 4096 bytes ENAMETOOLONG (37); an fd that is
not open EBADF (8); an operation the descriptor has no right for ENOTCAPABLE (76); host
errors map to the WASI errno of the same name (EIO when there is none). fd_read/fd_write
move at most 4 MiB per call (a short count, as POSIX allows). Captured stdout/stderr
hold at most `capture_limit` bytes each; beyond it fd_write returns ENOSPC. More than
`max_open_files` descriptors: EMFILE. Where wasmtime's own WASI differs: it traps on a
bad pointer or an invalid enum value (here EFAULT / EINVAL) and gives EPERM for a write
into a read-only directory (here ENOTCAPABLE); otherwise compiled programs behave the
same (tests/wasm/test_wasi.py runs them under both).

Confinement: every path is resolved by this module one component at a time, starting at
the directory descriptor the guest names, with O_NOFOLLOW opens; the kernel never follows
a symlink on the guest's behalf. An absolute path, a ".." above the starting directory,
an absolute symlink target or a relative target that climbs above it gives ENOTCAPABLE;
a symlink inside the tree that points inside is followed (at most 32 per lookup, then
ELOOP). A trailing slash requires a directory; on a lookup that does not follow symlinks
(unlink, rmdir, rename, O_NOFOLLOW), "link/" gives ENOTDIR rather than acting on the
link's target. path_symlink refuses (ENOTCAPABLE) to create a link whose target is absolute or
climbs out of the preopened directory, so host tools that later walk the directory are
not led out of it either.

Read-only preopens (`Preopen(read_only=True)`, the default) are enforced through rights:
their descriptors and everything opened under them lack every write right (FD_WRITE,
PATH_CREATE_*, PATH_UNLINK_FILE, PATH_RENAME_*, PATH_LINK_*, PATH_SYMLINK, set_size,
set_times, ...), so writes, creates, truncations, unlinks, renames and links give
ENOTCAPABLE (76), never EROFS; the host file is also only ever opened O_RDONLY there.
fd_fdstat_get reports exactly the rights enforced.
"""

from __future__ import annotations

import enum
import errno as _errno
import fcntl
import os
import random
import stat
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal, NamedTuple, NoReturn, Protocol

from pydantic import BaseModel, ConfigDict, Field, StrictBytes, field_validator, model_validator

from .._native import lib
from ..errors import ConfigError

# Wasm value type codes, from guests/wasm/wasm_abi.h (WASM_TYPE_I32, WASM_TYPE_I64).
I32: int = lib.WASM_TYPE_I32
I64: int = lib.WASM_TYPE_I64

MiB = 1024 * 1024
_U32 = 0xFFFF_FFFF
_U64 = 0xFFFF_FFFF_FFFF_FFFF
_I64_MAX = (1 << 63) - 1
_MAX_IOVECS = 1024  # IOV_MAX: more gives EINVAL
_MAX_IO = 4 * MiB  # bytes moved by one fd_read/fd_write/pread/pwrite at most
_MAX_PATH = 4096
_MAX_SYMLINKS = 32
_MAX_SUBSCRIPTIONS = 16384
_RANDOM_CHUNK = 64 * 1024


# --------------------------------------------------------------------------------------
# Public types


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

_FILE_READ_RIGHTS = (
    Rights.FD_READ
    | Rights.FD_SEEK
    | Rights.FD_TELL
    | Rights.FD_FILESTAT_GET
    | Rights.FD_ADVISE
    | Rights.FD_FDSTAT_SET_FLAGS
    | Rights.POLL_FD_READWRITE
)
_FILE_WRITE_RIGHTS = (
    Rights.FD_WRITE
    | Rights.FD_DATASYNC
    | Rights.FD_SYNC
    | Rights.FD_ALLOCATE
    | Rights.FD_FILESTAT_SET_SIZE
    | Rights.FD_FILESTAT_SET_TIMES
)
_DIR_READ_RIGHTS = (
    Rights.PATH_OPEN
    | Rights.FD_READDIR
    | Rights.PATH_READLINK
    | Rights.PATH_FILESTAT_GET
    | Rights.FD_FILESTAT_GET
)
_DIR_WRITE_RIGHTS = (
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
_FILE_RIGHTS = _FILE_READ_RIGHTS | _FILE_WRITE_RIGHTS
_DIR_RIGHTS = _DIR_READ_RIGHTS | _DIR_WRITE_RIGHTS
_STDIN_RIGHTS = (
    Rights.FD_READ | Rights.FD_FILESTAT_GET | Rights.FD_FDSTAT_SET_FLAGS | Rights.POLL_FD_READWRITE
)
_STDOUT_RIGHTS = (
    Rights.FD_WRITE | Rights.FD_FILESTAT_GET | Rights.FD_FDSTAT_SET_FLAGS | Rights.POLL_FD_READWRITE
)


# --------------------------------------------------------------------------------------
# Configuration


def _check_utf8(text: str) -> None:
    try:
        text.encode()
    except UnicodeEncodeError:
        raise ValueError(f"{text!r} cannot be encoded as UTF-8") from None


class Preopen(BaseModel):
    """A host directory the program may use, under the name `guest_path` (what
    fd_prestat_dir_name reports; wasi-libc matches absolute paths against it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host_path: Path = Field(description="an existing host directory")
    guest_path: str = Field(description='the name the program sees, e.g. "/", "/data" or "."')
    read_only: bool = Field(True, description="refuse every write, create, rename and unlink")

    @field_validator("guest_path")
    @classmethod
    def _guest_path(cls, v: str) -> str:
        if not v or "\0" in v:
            raise ValueError("must be a non-empty path without NUL characters")
        return v


class WasiConfig(BaseModel):
    """What a WASI program sees of the world. Invalid values raise pydantic's
    ValidationError (a ValueError) naming the field."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    args: list[str] = Field(default_factory=list, description="argv, argv[0] included")
    env: dict[str, str] = Field(default_factory=dict, description="the environment")
    stdin: StrictBytes | Literal["inherit"] = Field(
        b"", description='the bytes fd 0 reads, or "inherit": the host process\'s stdin'
    )
    stdout: Literal["capture", "inherit", "discard"] = Field(
        "capture", description="fd 1: kept in WasiContext.stdout, the host's fd 1, or dropped"
    )
    stderr: Literal["capture", "inherit", "discard"] = Field(
        "capture", description="fd 2: kept in WasiContext.stderr, the host's fd 2, or dropped"
    )
    preopens: list[Preopen] = Field(default_factory=list, description="fds 3, 4, ... in order")
    capture_limit: int = Field(
        16 * MiB, description="bytes kept per captured stream; beyond it fd_write gives ENOSPC"
    )
    max_open_files: int = Field(1024, description="descriptors open at once (EMFILE beyond)")
    random_seed: int | None = Field(
        None, description="None: random_get reads os.urandom; an int: a reproducible stream"
    )
    clock: Literal["real", "virtual"] = Field(
        "real",
        description='"virtual": clocks start at virtual_epoch_ns (realtime) and 0 (the '
        "others) and advance only when poll_oneoff sleeps, which returns at once",
    )
    virtual_epoch_ns: int = Field(
        1_700_000_000 * 10**9, description="realtime clock of a virtual clock at the start"
    )

    @field_validator("args")
    @classmethod
    def _args(cls, v: list[str]) -> list[str]:
        for arg in v:
            if "\0" in arg:
                raise ValueError(f"argument {arg!r} contains a NUL character")
            _check_utf8(arg)
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if not key or "=" in key or "\0" in key:
                raise ValueError(f"variable name {key!r} is empty or contains '=' or NUL")
            if "\0" in value:
                raise ValueError(f"the value of {key} contains a NUL character")
            _check_utf8(key)
            _check_utf8(value)
        return v

    @field_validator("capture_limit")
    @classmethod
    def _capture_limit(cls, v: int) -> int:
        if v < 0:
            raise ValueError("must be a number of bytes, 0 or more")
        return v

    @field_validator("virtual_epoch_ns")
    @classmethod
    def _epoch(cls, v: int) -> int:
        if not 0 <= v <= _I64_MAX:
            raise ValueError("must be between 0 and 2**63 - 1 nanoseconds")
        return v

    @model_validator(mode="after")
    def _check(self) -> WasiConfig:
        names = [p.guest_path for p in self.preopens]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"preopens: guest_path {duplicates[0]!r} is used twice")
        if self.max_open_files < 3 + len(self.preopens) or self.max_open_files > 1 << 20:
            raise ValueError(
                "max_open_files must hold stdio and the preopens (3 + len(preopens)) and be "
                "at most 1048576"
            )
        return self


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


# name -> (params, results); "i" is i32, "I" is i64 (wasi_snapshot_preview1.witx).
_SIGNATURES: dict[str, tuple[str, str]] = {
    "args_get": ("ii", "i"),
    "args_sizes_get": ("ii", "i"),
    "environ_get": ("ii", "i"),
    "environ_sizes_get": ("ii", "i"),
    "clock_res_get": ("ii", "i"),
    "clock_time_get": ("iIi", "i"),
    "fd_advise": ("iIIi", "i"),
    "fd_allocate": ("iII", "i"),
    "fd_close": ("i", "i"),
    "fd_datasync": ("i", "i"),
    "fd_fdstat_get": ("ii", "i"),
    "fd_fdstat_set_flags": ("ii", "i"),
    "fd_fdstat_set_rights": ("iII", "i"),
    "fd_filestat_get": ("ii", "i"),
    "fd_filestat_set_size": ("iI", "i"),
    "fd_filestat_set_times": ("iIIi", "i"),
    "fd_pread": ("iiiIi", "i"),
    "fd_prestat_get": ("ii", "i"),
    "fd_prestat_dir_name": ("iii", "i"),
    "fd_pwrite": ("iiiIi", "i"),
    "fd_read": ("iiii", "i"),
    "fd_readdir": ("iiiIi", "i"),
    "fd_renumber": ("ii", "i"),
    "fd_seek": ("iIii", "i"),
    "fd_sync": ("i", "i"),
    "fd_tell": ("ii", "i"),
    "fd_write": ("iiii", "i"),
    "path_create_directory": ("iii", "i"),
    "path_filestat_get": ("iiiii", "i"),
    "path_filestat_set_times": ("iiiiIIi", "i"),
    "path_link": ("iiiiiii", "i"),
    "path_open": ("iiiiiIIii", "i"),
    "path_readlink": ("iiiiii", "i"),
    "path_remove_directory": ("iii", "i"),
    "path_rename": ("iiiiii", "i"),
    "path_symlink": ("iiiii", "i"),
    "path_unlink_file": ("iii", "i"),
    "poll_oneoff": ("iiii", "i"),
    "proc_exit": ("i", ""),
    "proc_raise": ("i", "i"),
    "sched_yield": ("", "i"),
    "random_get": ("ii", "i"),
    "sock_accept": ("iii", "i"),
    "sock_recv": ("iiiiii", "i"),
    "sock_send": ("iiiii", "i"),
    "sock_shutdown": ("ii", "i"),
}
_TYPE_CODES = {"i": I32, "I": I64}


# --------------------------------------------------------------------------------------
# Internals


class _Fail(Exception):
    """Ends a WASI function with an errno."""

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


def _from_oserror(exc: OSError) -> Errno:
    return _HOST_ERRNO.get(exc.errno or 0, Errno.IO)


def _filetype(mode: int) -> Filetype:
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


def _filestat(st: os.stat_result) -> bytes:
    return FILESTAT.pack(
        st.st_dev & _U64,
        st.st_ino & _U64,
        _filetype(st.st_mode),
        st.st_nlink,
        max(st.st_size, 0),
        max(st.st_atime_ns, 0),
        max(st.st_mtime_ns, 0),
        max(st.st_ctime_ns, 0),
    )


@dataclass(eq=False)
class _Fd:
    """One open descriptor of the guest."""

    kind: Literal["stdin", "stdout", "stderr", "file", "dir"]
    filetype: Filetype
    base: int  # rights
    inheriting: int
    host_fd: int = -1  # -1 for stdio
    flags: int = 0  # fdflags
    preopen: str | None = None  # guest_path of a preopened directory
    read_only: bool = True
    root: tuple[int, int] = (0, 0)  # (st_dev, st_ino) of the preopen it lives in
    listing: list[tuple[str, int, Filetype]] | None = field(default=None, repr=False)


@dataclass
class _Lookup:
    """A resolved path: `name` (no slash; "." for the directory itself) in `parent`."""

    parent: int
    name: str
    trailing_slash: bool


def _ident(st: os.stat_result) -> tuple[int, int]:
    return (st.st_dev, st.st_ino)


_PATH_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


# --------------------------------------------------------------------------------------
# The context


class WasiContext:
    """The WASI state of one program: its descriptor table, captured output and exit
    code. Owns host file descriptors: close() (or `with`) releases them; closing twice is
    harmless. Not thread-safe: one program calls it at a time."""

    def __init__(self, config: WasiConfig) -> None:
        if not isinstance(config, WasiConfig):
            raise TypeError(f"config must be a WasiConfig, not {type(config).__name__}")
        self.config = config
        self.exit_code: int | None = None
        self._stdout = bytearray()
        self._stderr = bytearray()
        self._stdin = b"" if config.stdin == "inherit" else config.stdin
        self._stdin_pos = 0
        self._stdin_inherit = config.stdin == "inherit"
        self._interrupt = threading.Event()
        self._deadline_ns: int | None = None
        self._random = random.Random(config.random_seed) if config.random_seed is not None else None
        self._virtual_ns = 0
        self._fds: dict[int, _Fd] = {
            0: _Fd("stdin", Filetype.CHARACTER_DEVICE, _STDIN_RIGHTS, 0),
            1: _Fd("stdout", Filetype.CHARACTER_DEVICE, _STDOUT_RIGHTS, 0),
            2: _Fd("stderr", Filetype.CHARACTER_DEVICE, _STDOUT_RIGHTS, 0),
        }
        self._args = [a.encode() + b"\0" for a in config.args]
        self._environ = [f"{k}={v}".encode() + b"\0" for k, v in config.env.items()]
        try:
            for number, pre in enumerate(config.preopens, start=3):
                try:
                    host_fd = os.open(pre.host_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                except OSError as exc:
                    raise ConfigError(
                        f"preopen {pre.guest_path!r}: cannot open host directory "
                        f"{str(pre.host_path)!r}: {exc.strerror}"
                    ) from exc
                if pre.read_only:
                    base, inheriting = _DIR_READ_RIGHTS, _DIR_READ_RIGHTS | _FILE_READ_RIGHTS
                else:
                    base, inheriting = _DIR_RIGHTS, _DIR_RIGHTS | _FILE_RIGHTS
                self._fds[number] = _Fd(
                    "dir",
                    Filetype.DIRECTORY,
                    int(base),
                    int(inheriting),
                    host_fd=host_fd,
                    preopen=pre.guest_path,
                    read_only=pre.read_only,
                    root=_ident(os.fstat(host_fd)),
                )
        except BaseException:
            self.close()
            raise
        self.functions: Mapping[str, WasiFunction] = {
            name: self._wrap(name, params, results)
            for name, (params, results) in _SIGNATURES.items()
        }

    # -- public ------------------------------------------------------------------------

    @property
    def stdout(self) -> bytes:
        """What the program wrote to fd 1 (with stdout="capture")."""
        return bytes(self._stdout)

    @property
    def stderr(self) -> bytes:
        """What the program wrote to fd 2 (with stderr="capture")."""
        return bytes(self._stderr)

    def output_marks(self) -> tuple[int, int]:
        """Where the captured stdout and stderr end now (see output_since)."""
        return len(self._stdout), len(self._stderr)

    def output_since(self, marks: tuple[int, int]) -> tuple[bytes, bytes]:
        """The captured stdout and stderr written after `marks` (from output_marks)."""
        return bytes(self._stdout[marks[0] :]), bytes(self._stderr[marks[1] :])

    def clear_output(self) -> None:
        """Empties the captured stdout and stderr."""
        self._stdout.clear()
        self._stderr.clear()

    def set_stdin(self, data: bytes) -> None:
        """What fd 0 reads from now on (e.g. one request's body), instead of the
        configured stdin."""
        self._stdin, self._stdin_pos, self._stdin_inherit = bytes(data), 0, False

    def set_deadline(self, deadline_ns: int | None) -> None:
        """A poll_oneoff sleep ends at this time.monotonic_ns() value with EINTR (the
        running call's time limit; None: no limit)."""
        self._deadline_ns = deadline_ns

    def interrupt(self) -> None:
        """Ends a poll_oneoff sleep in progress (and the next one) with EINTR: call it from
        another thread when the program's call times out or is cancelled."""
        self._interrupt.set()

    def close(self) -> None:
        """Closes every host descriptor; the program's later calls get EBADF."""
        fds, self._fds = getattr(self, "_fds", {}), {}
        for entry in fds.values():
            if entry.host_fd >= 0:
                try:
                    os.close(entry.host_fd)
                except OSError:
                    pass

    def __enter__(self) -> WasiContext:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    # -- plumbing ----------------------------------------------------------------------

    def _wrap(self, name: str, params: str, results: str) -> WasiFunction:
        method: Callable[..., int] = getattr(self, "_" + name)
        masks = tuple(_U32 if p == "i" else _U64 for p in params)

        def call(memory: LinearMemory | None, *args: int) -> int:
            if len(args) != len(masks):
                raise TypeError(f"{name} takes {len(masks)} arguments, got {len(args)}")
            values = [int(a) & m for a, m in zip(args, masks, strict=True)]
            try:
                return int(method(_Memory(memory), *values))
            except _Fail as exc:
                return int(exc.code)
            except MemoryOutOfBounds:
                return int(Errno.FAULT)
            except OSError as exc:
                return int(_from_oserror(exc))
            except UnicodeError:
                return int(Errno.ILSEQ)
            except (ValueError, OverflowError, struct.error):
                return int(Errno.INVAL)
            except MemoryError:
                return int(Errno.NOMEM)

        call.__name__ = name
        call.__qualname__ = f"WasiContext.{name}"
        return WasiFunction(
            tuple(_TYPE_CODES[p] for p in params), tuple(_TYPE_CODES[r] for r in results), call
        )

    def _get(self, fd: int, right: int = 0) -> _Fd:
        entry = self._fds.get(fd)
        if entry is None:
            raise _Fail(Errno.BADF)
        if right and (entry.base & right) != right:
            raise _Fail(Errno.NOTCAPABLE)
        return entry

    def _dir(self, fd: int, right: int) -> _Fd:
        entry = self._get(fd)
        if entry.kind != "dir":
            raise _Fail(Errno.NOTDIR)
        if (entry.base & right) != right:
            raise _Fail(Errno.NOTCAPABLE)
        return entry

    def _new_fd(self, entry: _Fd) -> int:
        if len(self._fds) >= self.config.max_open_files:
            if entry.host_fd >= 0:
                os.close(entry.host_fd)
            raise _Fail(Errno.MFILE)
        number = 0
        while number in self._fds:
            number += 1
        self._fds[number] = entry
        return number

    # -- path resolution -----------------------------------------------------------------

    def _path(self, mem: _Memory, ptr: int, length: int) -> str:
        if length > _MAX_PATH:
            raise _Fail(Errno.NAMETOOLONG)
        raw = mem.read(ptr, length)
        if b"\0" in raw:
            raise _Fail(Errno.INVAL)
        return raw.decode("utf-8", "strict")

    @contextmanager
    def _lookup(self, base: _Fd, path: str, follow: bool) -> Iterator[_Lookup]:
        """Resolves `path` beneath directory `base` (see the module docstring). Yields the
        final component and its parent directory's host fd, valid inside the `with`."""
        if not path:
            raise _Fail(Errno.NOENT)
        if path.startswith("/"):
            raise _Fail(Errno.NOTCAPABLE)
        trailing = path.endswith("/")
        parts = deque(p for p in path.split("/") if p)
        current = base.host_fd
        owned = -1  # == current when this lookup opened it
        identities = [_ident(os.fstat(current))]  # the directories from base down
        links = 0
        try:
            name = "."
            while parts:
                part = parts.popleft()
                last = not parts
                if part == ".":
                    name = "."
                    continue
                if part == "..":
                    if len(identities) == 1:
                        raise _Fail(Errno.NOTCAPABLE)
                    up = os.open("..", _PATH_FLAGS, dir_fd=current)
                    if owned >= 0:
                        os.close(owned)
                    current = owned = up
                    identities.pop()
                    if _ident(os.fstat(current)) != identities[-1]:
                        raise _Fail(Errno.NOTCAPABLE)  # the tree moved under us
                    name = "."
                    continue
                if last:
                    name = part
                    if not (follow or trailing):
                        break
                    try:
                        st = os.stat(part, dir_fd=current, follow_symlinks=False)
                    except FileNotFoundError:
                        break
                    if not stat.S_ISLNK(st.st_mode):
                        break
                    if not follow:  # "link/" where the link itself is meant
                        raise _Fail(Errno.NOTDIR)
                else:
                    try:
                        down = os.open(part, _PATH_FLAGS, dir_fd=current)
                    except OSError as exc:
                        if exc.errno not in (_errno.ENOTDIR, _errno.ELOOP):
                            raise
                        st = os.stat(part, dir_fd=current, follow_symlinks=False)
                        if not stat.S_ISLNK(st.st_mode):
                            raise _Fail(Errno.NOTDIR) from None
                    else:
                        if owned >= 0:
                            os.close(owned)
                        current = owned = down
                        identities.append(_ident(os.fstat(current)))
                        name = "."
                        continue
                # `part` is a symlink to follow: splice its target into the path.
                links += 1
                if links > _MAX_SYMLINKS:
                    raise _Fail(Errno.LOOP)
                target = os.readlink(part, dir_fd=current)
                if target.startswith("/") or not target:
                    raise _Fail(Errno.NOTCAPABLE if target else Errno.NOENT)
                if last and target.endswith("/"):
                    trailing = True
                parts.extendleft(reversed([p for p in target.split("/") if p]))
                name = "."
            if trailing and name != ".":
                try:
                    st = os.stat(name, dir_fd=current, follow_symlinks=False)
                except FileNotFoundError:
                    pass
                else:
                    if not stat.S_ISDIR(st.st_mode):
                        raise _Fail(Errno.NOTDIR)
            yield _Lookup(current, name, trailing)
        finally:
            if owned >= 0:
                os.close(owned)

    def _depth_below_root(self, dir_fd: int, root: tuple[int, int]) -> int:
        """How many ".." steps lead from dir_fd up to the preopened directory `root`."""
        fd = os.open(".", _PATH_FLAGS, dir_fd=dir_fd)
        try:
            for depth in range(_MAX_PATH):
                st = os.fstat(fd)
                if _ident(st) == root:
                    return depth
                up = os.open("..", _PATH_FLAGS, dir_fd=fd)
                same = _ident(os.fstat(up)) == _ident(st)
                os.close(fd)
                fd = up
                if same:  # the host's root directory: root is not above us
                    break
        finally:
            os.close(fd)
        raise _Fail(Errno.NOTCAPABLE)

    # -- memory helpers ------------------------------------------------------------------

    def _iovecs(self, mem: _Memory, ptr: int, count: int) -> list[tuple[int, int]]:
        if count > _MAX_IOVECS:
            raise _Fail(Errno.INVAL)
        raw = mem.read(ptr, count * IOVEC.size)
        vecs = []
        total = 0
        for buf, length in IOVEC.iter_unpack(raw):
            if buf + length > 1 << 32:
                raise _Fail(Errno.FAULT)
            total += length
            vecs.append((buf, length))
        if total > _U32:
            raise _Fail(Errno.INVAL)  # the byte count would not fit the u32 result
        return vecs

    @staticmethod
    def _probe(mem: _Memory, vecs: list[tuple[int, int]]) -> None:
        """Faults now if a buffer the transfer would fill lies outside memory (linear
        memory is contiguous: its last byte decides), so that no input is consumed."""
        room = _MAX_IO
        for buf, length in vecs:
            n = min(length, room)
            if n:
                mem.read(buf + n - 1, 1)
                room -= n

    @staticmethod
    def _gather(mem: _Memory, vecs: list[tuple[int, int]]) -> bytes:
        pieces = []
        room = _MAX_IO
        for buf, length in vecs:
            n = min(length, room)
            if n:
                pieces.append(mem.read(buf, n))
                room -= n
        return b"".join(pieces)

    @staticmethod
    def _scatter(mem: _Memory, vecs: list[tuple[int, int]], data: bytes) -> None:
        offset = 0
        for buf, length in vecs:
            if offset >= len(data):
                break
            piece = data[offset : offset + length]
            mem.write(buf, piece)
            offset += len(piece)

    # -- args and environment ------------------------------------------------------------

    @staticmethod
    def _put_strings(mem: _Memory, ptrs: int, buf: int, strings: list[bytes]) -> int:
        pointers = []
        offset = buf
        for s in strings:
            pointers.append(offset & _U32)
            offset += len(s)
        mem.write(ptrs, struct.pack(f"<{len(pointers)}I", *pointers))
        mem.write(buf, b"".join(strings))
        return 0

    @staticmethod
    def _put_sizes(mem: _Memory, count_ptr: int, size_ptr: int, strings: list[bytes]) -> int:
        mem.write(count_ptr, struct.pack("<I", len(strings)))
        mem.write(size_ptr, struct.pack("<I", sum(map(len, strings))))
        return 0

    def _args_get(self, mem: _Memory, argv: int, buf: int) -> int:
        return self._put_strings(mem, argv, buf, self._args)

    def _args_sizes_get(self, mem: _Memory, count: int, size: int) -> int:
        return self._put_sizes(mem, count, size, self._args)

    def _environ_get(self, mem: _Memory, environ: int, buf: int) -> int:
        return self._put_strings(mem, environ, buf, self._environ)

    def _environ_sizes_get(self, mem: _Memory, count: int, size: int) -> int:
        return self._put_sizes(mem, count, size, self._environ)

    # -- clocks and randomness -----------------------------------------------------------

    _CLOCKS = {
        CLOCK_REALTIME: time.CLOCK_REALTIME,
        CLOCK_MONOTONIC: time.CLOCK_MONOTONIC,
        CLOCK_PROCESS_CPUTIME: time.CLOCK_THREAD_CPUTIME_ID,
        CLOCK_THREAD_CPUTIME: time.CLOCK_THREAD_CPUTIME_ID,
    }

    def _now(self, clock: int) -> int:
        if clock not in self._CLOCKS:
            raise _Fail(Errno.INVAL)
        if self.config.clock == "virtual":
            epoch = self.config.virtual_epoch_ns if clock == CLOCK_REALTIME else 0
            return (epoch + self._virtual_ns) & _U64
        return time.clock_gettime_ns(self._CLOCKS[clock])

    def _clock_res_get(self, mem: _Memory, clock: int, res_ptr: int) -> int:
        if clock not in self._CLOCKS:
            raise _Fail(Errno.INVAL)
        if self.config.clock == "virtual":
            res = 1
        else:
            res = max(1, round(time.clock_getres(self._CLOCKS[clock]) * 1e9))
        mem.write(res_ptr, struct.pack("<Q", res))
        return 0

    def _clock_time_get(self, mem: _Memory, clock: int, precision: int, time_ptr: int) -> int:
        mem.write(time_ptr, struct.pack("<Q", self._now(clock)))
        return 0

    def _random_get(self, mem: _Memory, buf: int, length: int) -> int:
        if buf + length > 1 << 32:
            raise _Fail(Errno.FAULT)
        if length:
            mem.read(buf + length - 1, 1)  # fault before filling anything
        done = 0
        while done < length:
            n = min(_RANDOM_CHUNK, length - done)
            data = self._random.randbytes(n) if self._random is not None else os.urandom(n)
            mem.write(buf + done, data)
            done += n
        return 0

    def _sched_yield(self, mem: _Memory) -> int:
        return 0

    def _proc_exit(self, mem: _Memory, code: int) -> NoReturn:
        self.exit_code = code
        raise WasiExit(code)

    def _proc_raise(self, mem: _Memory, signal: int) -> int:
        return Errno.NOSYS

    # -- descriptors -----------------------------------------------------------------------

    def _fd_close(self, mem: _Memory, fd: int) -> int:
        entry = self._get(fd)
        del self._fds[fd]
        if entry.host_fd >= 0:
            os.close(entry.host_fd)
        return 0

    def _fd_renumber(self, mem: _Memory, fd: int, to: int) -> int:
        entry = self._get(fd)
        target = self._get(to)
        if entry.preopen is not None or target.preopen is not None:
            raise _Fail(Errno.NOTSUP)
        if fd == to:
            return 0
        if target.host_fd >= 0:
            os.close(target.host_fd)
        self._fds[to] = self._fds.pop(fd)
        return 0

    def _fd_fdstat_get(self, mem: _Memory, fd: int, buf: int) -> int:
        e = self._get(fd)
        mem.write(buf, FDSTAT.pack(e.filetype, e.flags, e.base, e.inheriting))
        return 0

    def _fd_fdstat_set_flags(self, mem: _Memory, fd: int, flags: int) -> int:
        e = self._get(fd, Rights.FD_FDSTAT_SET_FLAGS)
        flags &= 0xFFFF
        if flags & ~(
            FDFLAGS_APPEND | FDFLAGS_NONBLOCK | FDFLAGS_DSYNC | FDFLAGS_RSYNC | FDFLAGS_SYNC
        ):
            raise _Fail(Errno.INVAL)
        if (flags ^ e.flags) & (FDFLAGS_DSYNC | FDFLAGS_RSYNC | FDFLAGS_SYNC):
            raise _Fail(Errno.NOTSUP)
        if e.kind == "file":
            if flags & FDFLAGS_APPEND and not e.base & Rights.FD_WRITE:
                raise _Fail(Errno.NOTCAPABLE)
            host = fcntl.fcntl(e.host_fd, fcntl.F_GETFL) & ~(os.O_APPEND | os.O_NONBLOCK)
            if flags & FDFLAGS_APPEND:
                host |= os.O_APPEND
            if flags & FDFLAGS_NONBLOCK:
                host |= os.O_NONBLOCK
            fcntl.fcntl(e.host_fd, fcntl.F_SETFL, host)
        e.flags = flags
        return 0

    def _fd_fdstat_set_rights(self, mem: _Memory, fd: int, base: int, inheriting: int) -> int:
        e = self._get(fd)
        if base & ~e.base or inheriting & ~e.inheriting:
            raise _Fail(Errno.NOTCAPABLE)
        e.base, e.inheriting = base, inheriting
        return 0

    def _fstat(self, e: _Fd) -> bytes:
        if e.host_fd < 0:
            return FILESTAT.pack(0, 0, e.filetype, 1, 0, 0, 0, 0)
        return _filestat(os.fstat(e.host_fd))

    def _fd_filestat_get(self, mem: _Memory, fd: int, buf: int) -> int:
        e = self._get(fd, Rights.FD_FILESTAT_GET)
        mem.write(buf, self._fstat(e))
        return 0

    def _fd_filestat_set_size(self, mem: _Memory, fd: int, size: int) -> int:
        e = self._get(fd, Rights.FD_FILESTAT_SET_SIZE)
        if size > _I64_MAX:
            raise _Fail(Errno.INVAL)
        os.ftruncate(self._host(e), size)
        return 0

    def _times(self, atim: int, mtim: int, fst: int, current: os.stat_result) -> tuple[int, int]:
        if (
            fst & ~0xF
            or (fst & FSTFLAGS_ATIM and fst & FSTFLAGS_ATIM_NOW)
            or (fst & FSTFLAGS_MTIM and fst & FSTFLAGS_MTIM_NOW)
        ):
            raise _Fail(Errno.INVAL)
        if atim > _I64_MAX or mtim > _I64_MAX:
            raise _Fail(Errno.INVAL)
        now = time.time_ns()
        a = atim if fst & FSTFLAGS_ATIM else now if fst & FSTFLAGS_ATIM_NOW else current.st_atime_ns
        m = mtim if fst & FSTFLAGS_MTIM else now if fst & FSTFLAGS_MTIM_NOW else current.st_mtime_ns
        return a, m

    def _fd_filestat_set_times(self, mem: _Memory, fd: int, atim: int, mtim: int, fst: int) -> int:
        e = self._get(fd, Rights.FD_FILESTAT_SET_TIMES)
        host = self._host(e)
        os.utime(host, ns=self._times(atim, mtim, fst, os.fstat(host)))
        return 0

    @staticmethod
    def _host(e: _Fd) -> int:
        if e.host_fd < 0:
            raise _Fail(Errno.BADF if e.kind == "stdin" else Errno.INVAL)
        return e.host_fd

    def _fd_advise(self, mem: _Memory, fd: int, offset: int, length: int, advice: int) -> int:
        e = self._get(fd)
        if advice > 5 or offset > _I64_MAX or length > _I64_MAX:
            raise _Fail(Errno.INVAL)
        if e.kind in ("stdin", "stdout", "stderr"):
            raise _Fail(Errno.SPIPE)
        if not e.base & Rights.FD_ADVISE:
            raise _Fail(Errno.NOTCAPABLE)
        if e.kind == "dir":
            raise _Fail(Errno.BADF)
        kinds = (
            os.POSIX_FADV_NORMAL,
            os.POSIX_FADV_SEQUENTIAL,
            os.POSIX_FADV_RANDOM,
            os.POSIX_FADV_WILLNEED,
            os.POSIX_FADV_DONTNEED,
            os.POSIX_FADV_NOREUSE,
        )
        os.posix_fadvise(e.host_fd, offset, length, kinds[advice])
        return 0

    def _fd_allocate(self, mem: _Memory, fd: int, offset: int, length: int) -> int:
        e = self._get(fd, Rights.FD_ALLOCATE)
        if offset > _I64_MAX or length > _I64_MAX or offset + length > _I64_MAX:
            raise _Fail(Errno.FBIG)
        if e.kind != "file":
            raise _Fail(Errno.BADF)
        if length == 0:
            raise _Fail(Errno.INVAL)
        os.posix_fallocate(e.host_fd, offset, length)
        return 0

    def _fd_datasync(self, mem: _Memory, fd: int) -> int:
        e = self._get(fd, Rights.FD_DATASYNC)
        os.fdatasync(self._host(e))
        return 0

    def _fd_sync(self, mem: _Memory, fd: int) -> int:
        e = self._get(fd, Rights.FD_SYNC)
        os.fsync(self._host(e))
        return 0

    # -- reading and writing -------------------------------------------------------------

    def _read(self, e: _Fd, n: int, offset: int | None = None) -> bytes:
        if e.kind == "dir":
            raise _Fail(Errno.ISDIR)
        if e.kind == "stdin":
            if self._stdin_inherit:
                return os.read(0, n)
            data = self._stdin[self._stdin_pos : self._stdin_pos + n]
            self._stdin_pos += len(data)
            return data
        if e.host_fd < 0:
            raise _Fail(Errno.BADF)
        if offset is None:
            return os.read(e.host_fd, n)
        return os.pread(e.host_fd, n, offset)

    def _write(self, e: _Fd, data: bytes, offset: int | None = None) -> int:
        if e.kind == "dir":
            raise _Fail(Errno.ISDIR)
        if e.kind in ("stdout", "stderr"):
            mode = self.config.stdout if e.kind == "stdout" else self.config.stderr
            if mode == "discard":
                return len(data)
            if mode == "inherit":
                host = 1 if e.kind == "stdout" else 2
                view = memoryview(data)
                while view:
                    view = view[os.write(host, view) :]
                return len(data)
            sink = self._stdout if e.kind == "stdout" else self._stderr
            room = self.config.capture_limit - len(sink)
            if data and room <= 0:
                raise _Fail(Errno.NOSPC)
            sink += data[:room]
            return min(len(data), room)
        if e.host_fd < 0:
            raise _Fail(Errno.BADF)
        if offset is None:
            return os.write(e.host_fd, data)
        return os.pwrite(e.host_fd, data, offset)

    def _fd_read(self, mem: _Memory, fd: int, iovs: int, count: int, nread_ptr: int) -> int:
        return self._readv(mem, self._io_fd(fd, Rights.FD_READ), iovs, count, nread_ptr)

    def _fd_pread(
        self, mem: _Memory, fd: int, iovs: int, count: int, offset: int, nread_ptr: int
    ) -> int:
        e = self._io_fd(fd, Rights.FD_READ, offset)
        return self._readv(mem, e, iovs, count, nread_ptr, offset)

    def _fd_write(self, mem: _Memory, fd: int, iovs: int, count: int, nwritten_ptr: int) -> int:
        return self._writev(mem, self._io_fd(fd, Rights.FD_WRITE), iovs, count, nwritten_ptr)

    def _fd_pwrite(
        self, mem: _Memory, fd: int, iovs: int, count: int, offset: int, nwritten_ptr: int
    ) -> int:
        e = self._io_fd(fd, Rights.FD_WRITE, offset)
        return self._writev(mem, e, iovs, count, nwritten_ptr, offset)

    def _io_fd(self, fd: int, right: Rights, offset: int | None = None) -> _Fd:
        """The descriptor for a read or write (at `offset`: pread/pwrite), checked."""
        e = self._get(fd)
        if e.kind == "dir":
            raise _Fail(Errno.ISDIR)
        if offset is not None:
            if e.kind in ("stdin", "stdout", "stderr"):
                raise _Fail(Errno.SPIPE)
            right |= Rights.FD_SEEK
        if (e.base & right) != right:
            raise _Fail(Errno.NOTCAPABLE)
        if offset is not None and offset > _I64_MAX:
            raise _Fail(Errno.INVAL)
        return e

    def _readv(
        self,
        mem: _Memory,
        e: _Fd,
        iovs: int,
        count: int,
        nread_ptr: int,
        offset: int | None = None,
    ) -> int:
        vecs = self._iovecs(mem, iovs, count)
        mem.read(nread_ptr, 4)  # fault before consuming input
        self._probe(mem, vecs)
        data = self._read(e, min(sum(n for _, n in vecs), _MAX_IO), offset)
        self._scatter(mem, vecs, data)
        mem.write(nread_ptr, struct.pack("<I", len(data)))
        return 0

    def _writev(
        self,
        mem: _Memory,
        e: _Fd,
        iovs: int,
        count: int,
        nwritten_ptr: int,
        offset: int | None = None,
    ) -> int:
        vecs = self._iovecs(mem, iovs, count)
        mem.read(nwritten_ptr, 4)  # fault before writing
        n = self._write(e, self._gather(mem, vecs), offset)
        mem.write(nwritten_ptr, struct.pack("<I", n))
        return 0

    def _fd_seek(self, mem: _Memory, fd: int, offset: int, whence: int, result_ptr: int) -> int:
        e = self._get(fd)
        if e.kind in ("stdin", "stdout", "stderr"):
            raise _Fail(Errno.SPIPE)
        tell_only = offset == 0 and whence == WHENCE_CUR
        if not e.base & (Rights.FD_TELL if tell_only else Rights.FD_SEEK):
            raise _Fail(Errno.NOTCAPABLE)
        if whence not in (WHENCE_SET, WHENCE_CUR, WHENCE_END):
            raise _Fail(Errno.INVAL)
        signed = offset - (1 << 64) if offset > _I64_MAX else offset
        mem.read(result_ptr, 8)
        where = os.lseek(e.host_fd, signed, (os.SEEK_SET, os.SEEK_CUR, os.SEEK_END)[whence])
        mem.write(result_ptr, struct.pack("<Q", where))
        return 0

    def _fd_tell(self, mem: _Memory, fd: int, result_ptr: int) -> int:
        e = self._get(fd)
        if e.kind in ("stdin", "stdout", "stderr"):
            raise _Fail(Errno.SPIPE)
        if not e.base & Rights.FD_TELL:
            raise _Fail(Errno.NOTCAPABLE)
        mem.write(result_ptr, struct.pack("<Q", os.lseek(e.host_fd, 0, os.SEEK_CUR)))
        return 0

    # -- directories ---------------------------------------------------------------------

    def _fd_prestat_get(self, mem: _Memory, fd: int, buf: int) -> int:
        e = self._get(fd)
        if e.preopen is None:
            raise _Fail(Errno.BADF)
        mem.write(buf, PRESTAT.pack(PREOPENTYPE_DIR, len(e.preopen.encode())))
        return 0

    def _fd_prestat_dir_name(self, mem: _Memory, fd: int, path: int, length: int) -> int:
        e = self._get(fd)
        if e.preopen is None:
            raise _Fail(Errno.BADF)
        name = e.preopen.encode()
        if length < len(name):
            raise _Fail(Errno.NAMETOOLONG)
        mem.write(path, name)
        return 0

    def _listing(self, e: _Fd) -> list[tuple[str, int, Filetype]]:
        own = os.fstat(e.host_fd)
        if e.preopen is not None:
            parent = own
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
                        kind = _filetype(d.stat(follow_symlinks=False).st_mode)
                except OSError:
                    kind = Filetype.UNKNOWN
                entries.append((d.name, d.inode(), kind))
        return entries

    def _fd_readdir(
        self, mem: _Memory, fd: int, buf: int, length: int, cookie: int, used_ptr: int
    ) -> int:
        e = self._get(fd)
        if e.kind != "dir":
            raise _Fail(Errno.NOTDIR)
        if not e.base & Rights.FD_READDIR:
            raise _Fail(Errno.NOTCAPABLE)
        if buf + length > 1 << 32:
            raise _Fail(Errno.FAULT)
        mem.read(used_ptr, 4)
        if cookie == 0 or e.listing is None:
            e.listing = self._listing(e)
        out = bytearray()
        index = cookie
        while index < len(e.listing) and len(out) < length:
            name, ino, kind = e.listing[index]
            encoded = os.fsencode(name)
            out += DIRENT.pack(index + 1, ino & _U64, len(encoded), kind) + encoded
            index += 1
        data = bytes(out[:length])
        mem.write(buf, data)
        mem.write(used_ptr, struct.pack("<I", len(data)))
        return 0

    # -- paths ---------------------------------------------------------------------------

    def _path_open(
        self,
        mem: _Memory,
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
        d = self._dir(fd, Rights.PATH_OPEN)
        if len(self._fds) >= self.config.max_open_files:
            raise _Fail(Errno.MFILE)  # before O_CREAT leaves a file behind
        oflags &= 0xFFFF
        fdflags &= 0xFFFF
        if oflags & ~0xF or fdflags & ~0x1F:
            raise _Fail(Errno.INVAL)
        if oflags & OFLAGS_DIRECTORY and oflags & (OFLAGS_CREAT | OFLAGS_TRUNC):
            raise _Fail(Errno.INVAL)
        if oflags & OFLAGS_CREAT and not d.base & Rights.PATH_CREATE_FILE:
            raise _Fail(Errno.NOTCAPABLE)
        if oflags & OFLAGS_TRUNC and not d.base & Rights.PATH_FILESTAT_SET_SIZE:
            raise _Fail(Errno.NOTCAPABLE)
        write = bool(base & Rights.FD_WRITE)
        if write and not d.inheriting & Rights.FD_WRITE:
            raise _Fail(Errno.NOTCAPABLE)
        if d.read_only and (write or oflags & (OFLAGS_CREAT | OFLAGS_TRUNC)):
            raise _Fail(Errno.NOTCAPABLE)  # unreachable through rights; kept as a backstop
        read = bool(base & (Rights.FD_READ | Rights.FD_READDIR))
        path = self._path(mem, path_ptr, path_len)
        mem.read(fd_ptr, 4)
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
        follow = bool(lookupflags & LOOKUP_SYMLINK_FOLLOW)
        with self._lookup(d, path, follow) as at:
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
                entry = _Fd(
                    "dir",
                    Filetype.DIRECTORY,
                    base & d.inheriting & _DIR_RIGHTS,
                    inheriting & d.inheriting,
                    host_fd=host,
                    read_only=d.read_only,
                    root=d.root,
                )
            else:
                entry = _Fd(
                    "file",
                    _filetype(st.st_mode),
                    base & d.inheriting & _FILE_RIGHTS,
                    0,
                    host_fd=host,
                    flags=fdflags,
                    read_only=d.read_only,
                    root=d.root,
                )
        except BaseException:
            os.close(host)
            raise
        new = self._new_fd(entry)
        mem.write(fd_ptr, struct.pack("<I", new))
        return 0

    def _path_create_directory(self, mem: _Memory, fd: int, ptr: int, length: int) -> int:
        d = self._dir(fd, Rights.PATH_CREATE_DIRECTORY)
        with self._lookup(d, self._path(mem, ptr, length), False) as at:
            os.mkdir(at.name, 0o777, dir_fd=at.parent)
        return 0

    def _path_remove_directory(self, mem: _Memory, fd: int, ptr: int, length: int) -> int:
        d = self._dir(fd, Rights.PATH_REMOVE_DIRECTORY)
        with self._lookup(d, self._path(mem, ptr, length), False) as at:
            os.rmdir(at.name, dir_fd=at.parent)
        return 0

    def _path_unlink_file(self, mem: _Memory, fd: int, ptr: int, length: int) -> int:
        d = self._dir(fd, Rights.PATH_UNLINK_FILE)
        with self._lookup(d, self._path(mem, ptr, length), False) as at:
            if at.trailing_slash:
                st = os.stat(at.name, dir_fd=at.parent, follow_symlinks=False)
                raise _Fail(Errno.ISDIR if stat.S_ISDIR(st.st_mode) else Errno.NOTDIR)
            os.unlink(at.name, dir_fd=at.parent)
        return 0

    def _path_filestat_get(
        self, mem: _Memory, fd: int, lookupflags: int, ptr: int, length: int, buf: int
    ) -> int:
        d = self._dir(fd, Rights.PATH_FILESTAT_GET)
        follow = bool(lookupflags & LOOKUP_SYMLINK_FOLLOW)
        with self._lookup(d, self._path(mem, ptr, length), follow) as at:
            st = os.stat(at.name, dir_fd=at.parent, follow_symlinks=False)
        mem.write(buf, _filestat(st))
        return 0

    def _path_filestat_set_times(
        self,
        mem: _Memory,
        fd: int,
        lookupflags: int,
        ptr: int,
        length: int,
        atim: int,
        mtim: int,
        fst: int,
    ) -> int:
        d = self._dir(fd, Rights.PATH_FILESTAT_SET_TIMES)
        follow = bool(lookupflags & LOOKUP_SYMLINK_FOLLOW)
        with self._lookup(d, self._path(mem, ptr, length), follow) as at:
            st = os.stat(at.name, dir_fd=at.parent, follow_symlinks=False)
            times = self._times(atim, mtim, fst, st)
            os.utime(at.name, ns=times, dir_fd=at.parent, follow_symlinks=False)
        return 0

    def _path_readlink(
        self, mem: _Memory, fd: int, ptr: int, length: int, buf: int, buf_len: int, used_ptr: int
    ) -> int:
        d = self._dir(fd, Rights.PATH_READLINK)
        with self._lookup(d, self._path(mem, ptr, length), False) as at:
            target = os.fsencode(os.readlink(at.name, dir_fd=at.parent))
        data = target[:buf_len]
        mem.read(used_ptr, 4)
        mem.write(buf, data)
        mem.write(used_ptr, struct.pack("<I", len(data)))
        return 0

    def _path_rename(
        self, mem: _Memory, fd: int, old: int, old_len: int, new_fd: int, new: int, new_len: int
    ) -> int:
        src = self._dir(fd, Rights.PATH_RENAME_SOURCE)
        dst = self._dir(new_fd, Rights.PATH_RENAME_TARGET)
        old_path = self._path(mem, old, old_len)
        new_path = self._path(mem, new, new_len)
        with self._lookup(src, old_path, False) as a, self._lookup(dst, new_path, False) as b:
            os.rename(a.name, b.name, src_dir_fd=a.parent, dst_dir_fd=b.parent)
        return 0

    def _path_link(
        self,
        mem: _Memory,
        fd: int,
        lookupflags: int,
        old: int,
        old_len: int,
        new_fd: int,
        new: int,
        new_len: int,
    ) -> int:
        src = self._dir(fd, Rights.PATH_LINK_SOURCE)
        dst = self._dir(new_fd, Rights.PATH_LINK_TARGET)
        old_path = self._path(mem, old, old_len)
        new_path = self._path(mem, new, new_len)
        follow = bool(lookupflags & LOOKUP_SYMLINK_FOLLOW)
        with self._lookup(src, old_path, follow) as a, self._lookup(dst, new_path, False) as b:
            os.link(a.name, b.name, src_dir_fd=a.parent, dst_dir_fd=b.parent, follow_symlinks=False)
        return 0

    def _path_symlink(
        self, mem: _Memory, old: int, old_len: int, fd: int, new: int, new_len: int
    ) -> int:
        d = self._dir(fd, Rights.PATH_SYMLINK)
        target = self._path(mem, old, old_len)
        new_path = self._path(mem, new, new_len)
        if not target:
            raise _Fail(Errno.NOENT)
        if target.startswith("/"):
            raise _Fail(Errno.NOTCAPABLE)
        with self._lookup(d, new_path, False) as at:
            depth = self._depth_below_root(at.parent, d.root)
            for part in target.split("/"):
                if part == "..":
                    depth -= 1
                    if depth < 0:
                        raise _Fail(Errno.NOTCAPABLE)
                elif part not in ("", "."):
                    depth += 1
            os.symlink(target, at.name, dir_fd=at.parent)
        return 0

    # -- polling -------------------------------------------------------------------------

    def _poll_oneoff(self, mem: _Memory, in_ptr: int, out_ptr: int, count: int, n_ptr: int) -> int:
        if count == 0 or count > _MAX_SUBSCRIPTIONS:
            raise _Fail(Errno.INVAL)
        raw = mem.read(in_ptr, count * SUBSCRIPTION.size)
        if out_ptr + count * EVENT.size > 1 << 32:
            raise _Fail(Errno.FAULT)
        mem.read(n_ptr, 4)
        events: list[bytes] = []
        timers: list[tuple[int, int]] = []  # (delay ns, userdata)
        for userdata, tag, body in SUBSCRIPTION.iter_unpack(raw):
            if tag == EVENTTYPE_CLOCK:
                clock, timeout, _precision, flags = SUBSCRIPTION_CLOCK.unpack_from(body)
                if clock not in (CLOCK_REALTIME, CLOCK_MONOTONIC):
                    events.append(EVENT.pack(userdata, Errno.INVAL, tag, 0, 0))
                    continue
                delay = timeout - self._now(clock) if flags & SUBCLOCKFLAGS_ABSTIME else timeout
                timers.append((max(delay, 0), userdata))
            elif tag in (EVENTTYPE_FD_READ, EVENTTYPE_FD_WRITE):
                (number,) = struct.unpack_from("<I", body)
                events.append(self._fd_event(userdata, tag, number))
            else:
                raise _Fail(Errno.INVAL)
        if not events and timers:
            wait = min(d for d, _ in timers)
            if self.config.clock == "virtual":
                self._virtual_ns += wait
            else:
                self._sleep(wait)
            events += [EVENT.pack(u, 0, EVENTTYPE_CLOCK, 0, 0) for d, u in timers if d <= wait]
        else:
            events += [EVENT.pack(u, 0, EVENTTYPE_CLOCK, 0, 0) for d, u in timers if d == 0]
        mem.write(out_ptr, b"".join(events))
        mem.write(n_ptr, struct.pack("<I", len(events)))
        return 0

    def _sleep(self, ns: int) -> None:
        deadline = time.monotonic_ns() + ns
        cut = self._deadline_ns is not None and self._deadline_ns < deadline
        if cut:
            deadline = self._deadline_ns  # type: ignore[assignment]
        while (left := deadline - time.monotonic_ns()) > 0:
            # In slices: Event.wait refuses timeouts of centuries, which a guest may ask.
            if self._interrupt.wait(min(left, 3600 * 10**9) / 1e9):
                self._interrupt.clear()
                raise _Fail(Errno.INTR)
        if cut:
            raise _Fail(Errno.INTR)  # the call's time limit ended the sleep

    def _fd_event(self, userdata: int, tag: int, number: int) -> bytes:
        e = self._fds.get(number)
        if e is None:
            return EVENT.pack(userdata, Errno.BADF, tag, 0, 0)
        if not e.base & Rights.POLL_FD_READWRITE:
            return EVENT.pack(userdata, Errno.NOTCAPABLE, tag, 0, 0)
        available = 0
        if tag == EVENTTYPE_FD_READ:
            if e.kind == "stdin" and not self._stdin_inherit:
                available = len(self._stdin) - self._stdin_pos
            elif e.kind == "file":
                try:
                    st = os.fstat(e.host_fd)
                    available = max(st.st_size - os.lseek(e.host_fd, 0, os.SEEK_CUR), 0)
                except OSError:
                    available = 0
        return EVENT.pack(userdata, 0, tag, available, 0)

    # -- sockets -------------------------------------------------------------------------

    def _sock_accept(self, mem: _Memory, fd: int, flags: int, fd_ptr: int) -> int:
        self._get(fd)
        return Errno.NOTSOCK

    def _sock_recv(
        self, mem: _Memory, fd: int, ri: int, ri_len: int, flags: int, n_ptr: int, fl_ptr: int
    ) -> int:
        self._get(fd)
        return Errno.NOTSOCK

    def _sock_send(
        self, mem: _Memory, fd: int, si: int, si_len: int, flags: int, n_ptr: int
    ) -> int:
        self._get(fd)
        return Errno.NOTSOCK

    def _sock_shutdown(self, mem: _Memory, fd: int, how: int) -> int:
        self._get(fd)
        return Errno.NOTSOCK


class _Memory:
    """Bounds every access before it reaches the LinearMemory: addresses are u32 and a
    range may not run past 4 GiB (EFAULT), and a missing memory faults."""

    __slots__ = ("_memory",)

    def __init__(self, memory: LinearMemory | None) -> None:
        self._memory = memory

    def read(self, addr: int, size: int) -> bytes:
        if self._memory is None or addr < 0 or size < 0 or addr + size > 1 << 32:
            raise _Fail(Errno.FAULT)
        if size == 0:
            return b""
        return self._memory.read(addr, size)

    def write(self, addr: int, data: bytes) -> None:
        if self._memory is None or addr < 0 or addr + len(data) > 1 << 32:
            raise _Fail(Errno.FAULT)
        if data:
            self._memory.write(addr, data)


__all__ = [
    "I32",
    "I64",
    "Errno",
    "Rights",
    "Filetype",
    "LinearMemory",
    "MemoryOutOfBounds",
    "Preopen",
    "WasiConfig",
    "WasiContext",
    "WasiExit",
    "WasiFunction",
]
