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
  captured, written to the host's fds 1 and 2, or discarded; none has seek/tell rights;
  each is a character device, so that wasi-libc's isatty() is true, only where it is the
  host's own descriptor and that is a terminal, and UNKNOWN otherwise, as wasmtime
  reports a pipe or a file), preopened directories from fd 3 in configuration order,
  and files and
  directories opened with path_open: read, write, pread, pwrite (iovec scatter/gather),
  seek, tell, advise, allocate, sync, datasync, fdstat get/set_flags (APPEND,
  NONBLOCK)/set_rights (only dropping rights), filestat get/set_size/set_times, readdir
  (dirents with cookies, "." and ".." included), renumber (any descriptor onto any
  open one, preopens and stdio included: a preopen keeps its name at its new number, and
  the one replaced is closed), close, prestat get/dir_name.
- path_*: open (oflags CREAT, DIRECTORY, EXCL, TRUNC; fdflags APPEND, DSYNC, NONBLOCK,
  RSYNC, SYNC; lookupflags SYMLINK_FOLLOW), create_directory, remove_directory,
  unlink_file, rename, link, symlink, readlink, filestat_get, filestat_set_times.
  path_open gives the new descriptor the rights asked for, intersected with the
  directory's inheriting rights and with those that apply to a file or a directory
  (asking for FD_WRITE where the directory cannot grant it is ENOTCAPABLE; asking for it
  on a directory, the preopen itself included, is EISDIR, as in wasmtime). FIFOs open
  without blocking.
- poll_oneoff: clock subscriptions (relative or absolute, realtime or monotonic) sleep;
  fd_read/fd_write subscriptions are reported ready at once (regular files and stdio
  never block). A sleep ends early with EINTR when `WasiContext.interrupt()` is called
  (for call timeouts and cancellation).
- proc_exit raises `WasiExit(code)` (and records `exit_code`); sched_yield succeeds.

Not supported: sockets (sock_accept/recv/send/shutdown return EBADF for a closed fd and
ENOTSOCK otherwise: no descriptor is ever a socket), proc_raise (ENOSYS),
fd_fdstat_set_flags with DSYNC/RSYNC/SYNC (ENOTSUP, Linux cannot change them on an open
file), CPU-time clocks in poll_oneoff (the event carries EINVAL).

Failures: an address or length outside linear memory (or past 4 GiB) gives EFAULT (21),
checked before anything happens (a failed fd_read consumes no input, a failed fd_write
writes nothing);
malformed values (an unknown whence, advice, clock, oflag or fstflags bit, an iovec count
over 1024, zero or more than 16384 subscriptions) give EINVAL (28); a path that is not
UTF-8 gives EILSEQ (25); a path longer than 4096 bytes ENAMETOOLONG (37); an fd that is
not open EBADF (8); an operation the descriptor has no right for ENOTCAPABLE (76); host
errors map to the WASI errno of the same name (EIO when there is none). fd_read/fd_write
move at most 4 MiB per call (a short count, as POSIX allows). Captured stdout/stderr
keep the first `output_limit` bytes each (default 1 MiB): what comes after is dropped,
the capture is marked truncated (`WasiContext.truncated`, `output_truncated_since`), and
fd_write still reports every byte written, so that a program neither retries nor fails. More than
`max_open_files` descriptors: EMFILE. Where wasmtime's own WASI differs: it traps on a
bad pointer or an invalid enum value (here EFAULT / EINVAL), gives EPERM for a write
into a read-only directory and for a path that leaves the preopen (here ENOTCAPABLE),
refuses SYMLINK_FOLLOW in path_link (EINVAL; here a link inside is followed) and lets
path_link and path_rename place a symlink whose target climbs out (here ENOTCAPABLE, see
below); otherwise compiled programs behave the same (tests/wasm/test_wasi_programs.py
and test_wasi_edges.py run them under both).

Confinement: every path is resolved by this module one component at a time, starting at
the directory descriptor the guest names, with O_NOFOLLOW opens; the kernel never follows
a symlink on the guest's behalf. An absolute path, a ".." above the starting directory,
an absolute symlink target or a relative target that climbs above it gives ENOTCAPABLE;
a symlink inside the tree that points inside is followed (at most 32 per lookup, then
ELOOP). A trailing slash requires a directory and, after a symlink, names the link's
target as POSIX says ("link/" is confined like any symlink), except for rmdir and rename,
which act on the name and give ENOTDIR (see `confine` and `path`). path_symlink refuses
(ENOTCAPABLE) to create a link whose target is absolute or climbs out of the preopened
directory, and path_link and path_rename to put an existing one where its target would
climb out, so host tools that later walk the directory are not led out of it either.

Read-only preopens (`Preopen(read_only=True)`, the default) are enforced through rights:
their descriptors and everything opened under them lack every write right (FD_WRITE,
PATH_CREATE_*, PATH_UNLINK_FILE, PATH_RENAME_*, PATH_LINK_*, PATH_SYMLINK, set_size,
set_times, ...), so writes, creates, truncations, unlinks, renames and links give
ENOTCAPABLE (76), never EROFS; the host file is also only ever opened O_RDONLY there.
fd_fdstat_get reports exactly the rights enforced.

The package, by concern: `types` (errno, rights, file types, flags, struct layouts,
limits, `WasiExit`), `config` (`WasiConfig`, `Preopen`), `fdtable` (the descriptor table
and its rights), `confine` (path resolution and confinement), `memory` (bounds-checked
access to linear memory, iovecs), `state` (stdin, output captures, clocks), the functions
in `env` (args, environ, clocks, random), `fd` and `fdio` (descriptors; reading and
writing), `path` (path_*) and `poll` (poll_oneoff, proc_*, sched_yield, sock_*), and
`context` (`WasiContext`: the state and the table of wrapped functions).
"""

from __future__ import annotations

from .config import Preopen, WasiConfig
from .context import WasiContext
from .types import (
    CLOCK_MONOTONIC,
    CLOCK_PROCESS_CPUTIME,
    CLOCK_REALTIME,
    CLOCK_THREAD_CPUTIME,
    DIRENT,
    EVENT,
    EVENTTYPE_CLOCK,
    EVENTTYPE_FD_READ,
    EVENTTYPE_FD_WRITE,
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
    I32,
    I64,
    IOVEC,
    LOOKUP_SYMLINK_FOLLOW,
    OFLAGS_CREAT,
    OFLAGS_DIRECTORY,
    OFLAGS_EXCL,
    OFLAGS_TRUNC,
    PREOPENTYPE_DIR,
    PRESTAT,
    SUBCLOCKFLAGS_ABSTIME,
    SUBSCRIPTION,
    SUBSCRIPTION_CLOCK,
    WHENCE_CUR,
    WHENCE_END,
    WHENCE_SET,
    Errno,
    Filetype,
    LinearMemory,
    MemoryOutOfBounds,
    MiB,
    Rights,
    WasiExit,
    WasiFunction,
)

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
    # The ABI's constants and struct layouts (wasi/api.h), as the one-module wasi.py had them.
    "MiB",
    "CLOCK_REALTIME",
    "CLOCK_MONOTONIC",
    "CLOCK_PROCESS_CPUTIME",
    "CLOCK_THREAD_CPUTIME",
    "WHENCE_SET",
    "WHENCE_CUR",
    "WHENCE_END",
    "FDFLAGS_APPEND",
    "FDFLAGS_DSYNC",
    "FDFLAGS_NONBLOCK",
    "FDFLAGS_RSYNC",
    "FDFLAGS_SYNC",
    "OFLAGS_CREAT",
    "OFLAGS_DIRECTORY",
    "OFLAGS_EXCL",
    "OFLAGS_TRUNC",
    "LOOKUP_SYMLINK_FOLLOW",
    "FSTFLAGS_ATIM",
    "FSTFLAGS_ATIM_NOW",
    "FSTFLAGS_MTIM",
    "FSTFLAGS_MTIM_NOW",
    "EVENTTYPE_CLOCK",
    "EVENTTYPE_FD_READ",
    "EVENTTYPE_FD_WRITE",
    "SUBCLOCKFLAGS_ABSTIME",
    "PREOPENTYPE_DIR",
    "IOVEC",
    "FDSTAT",
    "FILESTAT",
    "DIRENT",
    "PRESTAT",
    "SUBSCRIPTION",
    "SUBSCRIPTION_CLOCK",
    "EVENT",
]
