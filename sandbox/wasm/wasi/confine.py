"""Path confinement: every path a program names is resolved here, one component at a
time from the directory descriptor it names, with O_NOFOLLOW opens, so the kernel never
follows a symlink or a ".." on the program's behalf.

An absolute path, a ".." above the starting directory, an absolute symlink target or a
relative target that climbs above it gives ENOTCAPABLE; a symlink inside the tree that
points inside is followed (at most MAX_SYMLINKS per lookup, then ELOOP). If the tree
is moved while a ".." is being resolved (a directory renamed under the lookup), the
identity check on the way up catches it (ENOTCAPABLE).

A trailing slash requires a directory (ENOTDIR otherwise). On a lookup that does not
follow a final symlink, what "link/" means is the caller's `slash` (POSIX path
resolution, as Linux and wasmtime do it):
- "follow" (stat, open with O_NOFOLLOW, unlink, readlink, set_times, the source of a
  link): "link/" names the link's target, which must be a directory; resolving it is
  confined like any other symlink.
- "notdir" (rmdir, rename): the operation acts on names, and a link is not a directory:
  ENOTDIR, never the target.
- "create" (mkdir, symlink, the new name of a link): the final name is taken as it is;
  the operation itself fails with EEXIST when something (a link too) has that name."""

from __future__ import annotations

import errno
import os
import stat
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

from .fdtable import Descriptor, ident
from .memory import GuardedMemory
from .types import MAX_PATH, MAX_SYMLINKS, Errno, Fail

_PATH_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

Slash = Literal["follow", "notdir", "create"]


@dataclass
class Lookup:
    """A resolved path: `name` (no slash; "." for the directory itself) in the host
    directory descriptor `parent`."""

    parent: int
    name: str
    trailing_slash: bool


def read_path(mem: GuardedMemory, ptr: int, length: int) -> str:
    """The path the program passed: ENAMETOOLONG past MAX_PATH bytes, EINVAL for a NUL,
    EILSEQ (from the UnicodeError) when it is not UTF-8."""
    if length > MAX_PATH:
        raise Fail(Errno.NAMETOOLONG)
    raw = mem.read(ptr, length)
    if b"\0" in raw:
        raise Fail(Errno.INVAL)
    return raw.decode("utf-8", "strict")


@contextmanager
def lookup(base: Descriptor, path: str, follow: bool, slash: Slash = "follow") -> Iterator[Lookup]:
    """Resolves `path` beneath directory `base` (see the module docstring): `follow`
    follows a final symlink, `slash` says what a trailing slash after one means. Yields
    the final component and its parent directory's host fd, valid inside the `with`."""
    if not path:
        raise Fail(Errno.NOENT)
    if path.startswith("/"):
        raise Fail(Errno.NOTCAPABLE)
    trailing = path.endswith("/")
    parts = deque(p for p in path.split("/") if p)
    current = base.host_fd
    owned = -1  # == current when this lookup opened it
    identities = [ident(os.fstat(current))]  # the directories from base down
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
                    raise Fail(Errno.NOTCAPABLE)
                up = os.open("..", _PATH_FLAGS, dir_fd=current)
                if owned >= 0:
                    os.close(owned)
                current = owned = up
                identities.pop()
                if ident(os.fstat(current)) != identities[-1]:
                    raise Fail(Errno.NOTCAPABLE)  # the tree moved under us
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
                if not follow and slash == "notdir":  # "link/" where the link is meant
                    raise Fail(Errno.NOTDIR)
                if not follow and slash == "create":  # the name itself: EEXIST follows
                    break
            else:
                try:
                    down = os.open(part, _PATH_FLAGS, dir_fd=current)
                except OSError as exc:
                    if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                        raise
                    st = os.stat(part, dir_fd=current, follow_symlinks=False)
                    if not stat.S_ISLNK(st.st_mode):
                        raise Fail(Errno.NOTDIR) from None
                else:
                    if owned >= 0:
                        os.close(owned)
                    current = owned = down
                    identities.append(ident(os.fstat(current)))
                    name = "."
                    continue
            # `part` is a symlink to follow: splice its target into the path.
            links += 1
            if links > MAX_SYMLINKS:
                raise Fail(Errno.LOOP)
            target = os.readlink(part, dir_fd=current)
            if target.startswith("/") or not target:
                raise Fail(Errno.NOTCAPABLE if target else Errno.NOENT)
            if last and target.endswith("/"):
                trailing = True
            parts.extendleft(reversed([p for p in target.split("/") if p]))
            name = "."
        if trailing and name != "." and slash != "create":
            try:
                st = os.stat(name, dir_fd=current, follow_symlinks=False)
            except FileNotFoundError:
                pass
            else:
                if not stat.S_ISDIR(st.st_mode):
                    raise Fail(Errno.NOTDIR)
        yield Lookup(current, name, trailing)
    finally:
        if owned >= 0:
            os.close(owned)


def depth_below_root(dir_fd: int, root: tuple[int, int]) -> int:
    """How many ".." steps lead from dir_fd up to the preopened directory `root`
    (ENOTCAPABLE when root is not above it)."""
    fd = os.open(".", _PATH_FLAGS, dir_fd=dir_fd)
    try:
        for depth in range(MAX_PATH):
            st = os.fstat(fd)
            if ident(st) == root:
                return depth
            up = os.open("..", _PATH_FLAGS, dir_fd=fd)
            same = ident(os.fstat(up)) == ident(st)
            os.close(fd)
            fd = up
            if same:  # the host's root directory: root is not above us
                break
    finally:
        os.close(fd)
    raise Fail(Errno.NOTCAPABLE)


def symlink_stays_inside(target: str, depth: int) -> bool:
    """Whether a symlink with this relative `target`, created `depth` directories below
    its preopen, resolves inside the preopen (no prefix of it climbs above)."""
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return False
        elif part not in ("", "."):
            depth += 1
    return True
