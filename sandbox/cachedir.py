"""The runtime's cache directory on disk, shared by every cache that lives there (the
Wasm AOT tier's compiled guests, the Wasm module cache's engine snapshots, the Python
guest's packages): `$KVM_SANDBOX_CACHE`, else `$XDG_CACHE_HOME/kvm-sandbox`, else
`~/.cache/kvm-sandbox`, one subdirectory per cache. Subdirectories are created private
to the user (0700): what is cached there is run. The file caches (compiled guests,
engine snapshots) are bounded: after writing an entry, a cache deletes its least
recently used files beyond $KVM_SANDBOX_CACHE_MAX_MIB (default 4 GiB each), and the
work directories (`work_dir`) of processes that were killed before they removed them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger("sandbox.cache")

CACHE_ENVIRONMENT = "KVM_SANDBOX_CACHE"
DEFAULT_NAME = "kvm-sandbox"  # the default root's name


def cache_root() -> Path:
    base = os.environ.get(CACHE_ENVIRONMENT) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), DEFAULT_NAME
    )
    return Path(base)


def cache_subdir(name: str, *, create: bool = False) -> Path:
    """`<cache root>/<name>`, made (with its parents, mode 0700) if `create`, and then
    checked: the subdirectory must be the user's and is made private if others may
    write to it (what an older version made under umask 002); so is the root where it
    has the default name, and a root of the user's choosing that others may write to is
    refused, unless it is sticky (a /tmp: others cannot move what is ours in it).
    Raises PermissionError."""
    path = cache_root() / name
    if create:
        make_private(path.parent)
        root = os.stat(path.parent)
        if not root.st_mode & stat.S_ISVTX:
            _private(path.parent, root, ours=path.parent.name == DEFAULT_NAME)
        make_private(path)
        _private(path, os.stat(path), ours=True)
    return path


def _private(path: Path, st: os.stat_result, *, ours: bool) -> None:
    """Refuses a directory of another user's, or one that others may write to unless it
    is `ours` (named by the runtime): that is made private."""
    if st.st_uid != os.geteuid():
        raise PermissionError(f"the cache directory {path} belongs to another user")
    if st.st_mode & 0o022:
        if not ours:
            raise PermissionError(
                f"the cache directory {path} may be written by others: make it private "
                f"(chmod 700) or set ${CACHE_ENVIRONMENT} to a private directory"
            )
        os.chmod(path, st.st_mode & 0o700)


def make_private(path: Path) -> None:
    """Makes the directory `path` and each of its missing parents with mode 0700 (what
    exists is left as it is). Path.mkdir(parents=True) makes the parents with the
    umask's mode: a group-writable cache root under umask 002, in which another member
    of the group could swap a cache subdirectory for one of theirs."""
    missing = []
    while not path.is_dir() and path != path.parent:
        missing.append(path)
        path = path.parent
    for part in reversed(missing):
        part.mkdir(mode=0o700, exist_ok=True)


def entry_key(*parts: str) -> str:
    """A cache entry's name: a hash of the parts (each ended by a NUL, so that no two
    lists of parts run together into one text)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:40]


LIMIT_ENVIRONMENT = "KVM_SANDBOX_CACHE_MAX_MIB"
DEFAULT_LIMIT_MIB = 4096  # per cache subdirectory


def limit_bytes() -> int:
    """The most a cache subdirectory's files may take: $KVM_SANDBOX_CACHE_MAX_MIB MiB
    (default 4096; a value that is not a positive integer is the default)."""
    text = os.environ.get(LIMIT_ENVIRONMENT, "")
    mib = int(text) if text.isdigit() and int(text) > 0 else DEFAULT_LIMIT_MIB
    return mib << 20


def touch(path: Path, st: os.stat_result | None = None) -> None:
    """Marks a cache file as just used: its access time is set to now, its modification
    time kept (the caches key loaded guests by it). `st`: the file's stat, if known."""
    try:
        mtime = (st or os.stat(path)).st_mtime_ns
        os.utime(path, ns=(time.time_ns(), mtime))
    except OSError:  # gone, or a read-only cache: nothing to mark
        pass


WORK_PREFIX = ".work-"
# A work directory is left alone this long after it changed, locked or not: its maker
# locks it just after making it.
WORK_GRACE_S = 60.0


@contextlib.contextmanager
def work_dir(name: str, prefix: str) -> Iterator[Path]:
    """A new directory `.work-<prefix>-XXXX` in the cache subdirectory `name`, for files
    being made (a compile's): locked (flock) while the block runs, and removed after it
    unless the block renamed it away. One left behind by a process that was killed is
    removed by `trim` once no process holds its lock."""
    path = Path(
        tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{prefix}-", dir=cache_subdir(name, create=True))
    )
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)  # (unlocked only once removed)


def _remove_abandoned(entry: os.DirEntry[str]) -> None:
    """Removes the work directory `entry` if no process holds it and it has not changed
    for WORK_GRACE_S."""
    try:
        if time.time() - entry.stat(follow_symlinks=False).st_mtime < WORK_GRACE_S:
            return
        fd = os.open(entry.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held: a compile in progress
        os.close(fd)
        return
    try:
        shutil.rmtree(entry.path, ignore_errors=True)
        log.info("removed the work directory %s that a killed process left", entry.path)
    finally:
        os.close(fd)


def trim(name: str, keep: Path, limit: int | None = None) -> list[Path]:
    """Deletes the least recently used files (by access time: written or `touch`ed) in
    the cache subdirectory `name` until they take at most `limit` bytes (default
    limit_bytes()), never `keep` (the file just written); returns what it deleted.
    Subdirectories (a toolchain's runtime objects, compiles in progress) are left, but
    for work directories (`work_dir`) that no process holds. A process that found a
    file just before it is deleted still has it open or fails to open it as it would on
    a cold cache; errors are ignored (another process trimming)."""
    limit = limit_bytes() if limit is None else limit
    entries = []
    with os.scandir(cache_subdir(name)) as it:
        for entry in it:
            try:
                if entry.name.startswith(WORK_PREFIX) and entry.is_dir(follow_symlinks=False):
                    _remove_abandoned(entry)
                elif entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    used = max(st.st_atime_ns, st.st_mtime_ns)
                    entries.append((used, st.st_size, Path(entry.path)))
            except OSError:
                continue
    total = sum(size for _, size, _ in entries)
    deleted = []
    for _, size, path in sorted(entries):
        if total <= limit:
            break
        if path == keep:
            continue
        try:
            path.unlink()
        except OSError:
            continue
        total -= size
        deleted.append(path)
    return deleted


class BackgroundWrites:
    """Writes the files of one cache subdirectory on threads of their own, so that the
    caller does not wait for the disk: at most one write per path at a time, each then
    trimming the subdirectory to its limit (`trim`). Not daemon threads: an exiting
    process finishes its writes (a write cut short leaves no file: `write` is expected
    to write a temporary file and rename it, as Snapshot.save does). A write that fails
    (a full or read-only disk) is logged with `what` and changes nothing."""

    def __init__(self, subdir: str, what: str, log: logging.Logger) -> None:
        self.subdir, self.what, self.log = subdir, what, log
        self._threads: dict[Path, threading.Thread] = {}
        self._lock = threading.Lock()
        _all_writes.append(self)

    def start(self, path: Path, write: Callable[[Path], None]) -> None:
        """Runs `write(path)` on a thread of its own (nothing if one is writing it)."""
        with self._lock:
            if path in self._threads:
                return
            thread = threading.Thread(
                target=self._write, args=(path, write), name=f"{self.subdir}-write"
            )
            self._threads[path] = thread
        thread.start()

    def _write(self, path: Path, write: Callable[[Path], None]) -> None:
        try:
            cache_subdir(self.subdir, create=True)
            write(path)
            for old in trim(self.subdir, keep=path):
                self.log.info("the %s is over its limit: deleted %s", self.what, old.name)
        except Exception as exc:
            self.log.warning("cannot write the %s file %s: %s", self.what, path, exc)
        finally:
            with self._lock:
                self._threads.pop(path, None)

    def flush(self, timeout: float | None = None) -> None:
        """Waits for the files being written (tests, benchmarks, short programs)."""
        with self._lock:
            threads = list(self._threads.values())
        for thread in threads:
            thread.join(timeout)


_all_writes: list[BackgroundWrites] = []  # every cache's writer (module-level objects)


def flush_all(timeout: float) -> None:
    """Waits at most `timeout` seconds in all for every cache's background writes: for
    a process about to end with os._exit (the function host), which would cut them."""
    deadline = time.monotonic() + timeout
    for writes in list(_all_writes):
        writes.flush(max(0.0, deadline - time.monotonic()))
