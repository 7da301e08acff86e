"""WASI preview1 path confinement (sandbox/wasm/wasi/confine.py, path.py) driven directly,
without KVM: a bytearray stands for the program's linear memory (wasi_support.Guest plays
the program) and a temporary directory on the real file system is what the program is
granted (the `tree` fixture in conftest.py). Escapes by '..', absolute paths and symlinks,
links created to escape, read-only preopens."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support import fd_count
from wasi_support import (
    ALL_RIGHTS,
    DIR_RIGHTS,
    FDSTAT,
    FOLLOW,
    O_CREAT,
    O_DIRECTORY,
    O_EXCL,
    O_TRUNC,
    Guest,
    make,
    snapshot,
)

from sandbox.wasm.wasi import (
    Errno,
    Rights,
)

# -- confinement -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "../outside/secret.txt",
        "/etc/passwd",
        "/data/a.txt",
        "sub/../../outside/secret.txt",
        "..",
        "sub/deep/../../..",
        "link_abs/etc/passwd",
        "link_etc",
        "link_out",
        "sub/up/secret.txt",
        "chain_out1",
        "link_dir/../../outside",
    ],
)
def test_path_escapes_are_refused(tree: Path, path: str) -> None:
    g = make(tree)
    before = snapshot(tree)
    assert g.open(path)[0] == Errno.NOTCAPABLE
    assert g.open(path, oflags=O_CREAT)[0] == Errno.NOTCAPABLE
    assert g.filestat(path)[0] == Errno.NOTCAPABLE
    assert g.path_call("path_create_directory", path + "/x") == Errno.NOTCAPABLE
    assert g.path_call("path_unlink_file", path + "/x") == Errno.NOTCAPABLE
    assert snapshot(tree) == before


ESCAPING_LINKS = ["link_out/", "sub/up/", "link_abs/", "link_etc/", "chain_out1/", "sub/up//"]


def two(g: Guest, name: str, old: str, new: str, lookup: int = 0) -> int:
    """path_link (with `lookup`) or path_rename of `old` to `new`, both under fd 3."""
    o, on = g.put(old.encode())
    n, nn = g.put(new.encode())
    if name == "path_link":
        return g.call(name, 3, lookup, o, on, 3, n, nn)
    return g.call(name, 3, o, on, 3, n, nn)


@pytest.mark.parametrize("path", ESCAPING_LINKS)
def test_a_trailing_slash_never_follows_a_link_out(tree: Path, path: str) -> None:
    """ "link/" names the link's target (POSIX): where that is outside, every operation
    that resolves it is refused, with or without SYMLINK_FOLLOW; those that act on the
    name itself fail without touching the target."""
    g = make(tree)
    before = snapshot(tree)
    nc = Errno.NOTCAPABLE
    for lookup in (0, FOLLOW):
        assert g.open(path, lookup=lookup, rights=DIR_RIGHTS)[0] == nc
        assert g.open(path, lookup=lookup, oflags=O_DIRECTORY, rights=DIR_RIGHTS)[0] == nc
        assert g.filestat(path, lookup=lookup)[0] == nc
        p, n = g.put(path.encode())
        assert g.call("path_filestat_set_times", 3, lookup, p, n, 0, 0, 10) == nc
        assert two(g, "path_link", path, "copy", lookup) == nc
    assert g.path_call("path_unlink_file", path) == nc
    p, n = g.put(path.encode())
    assert g.call("path_readlink", 3, p, n, g.alloc(64), 64, g.alloc(4)) == nc
    assert g.path_call("path_remove_directory", path) == Errno.NOTDIR  # the link is no dir
    assert two(g, "path_rename", path, "moved") == Errno.NOTDIR
    assert two(g, "path_rename", "sub/deep", path) == Errno.NOTDIR
    assert g.path_call("path_create_directory", path) == Errno.EXIST  # the name is taken
    assert g.open(path, oflags=O_CREAT, lookup=0)[0] == Errno.ISDIR  # "name/": EISDIR
    assert g.open(path, oflags=O_CREAT)[0] == nc  # following the link
    t, tn = g.put(b"sub")
    assert g.call("path_symlink", t, tn, 3, p, n) == Errno.EXIST
    assert two(g, "path_link", "a.txt", path) == Errno.EXIST
    assert snapshot(tree) == before


def test_hard_links_and_moves_never_leave_a_link_pointing_out(tree: Path) -> None:
    """A hard link to a symlink is a symlink: from a shallower directory its relative
    target may climb out, and a host tool walking the tree would follow it there."""
    (tree / "data" / "sub" / "inner").symlink_to("../a.txt")  # inside from sub/ only
    g = make(tree)
    before = snapshot(tree)
    nc = Errno.NOTCAPABLE
    for name in ("path_link", "path_rename"):
        assert two(g, name, "link_out", "copy") == nc  # already points out
        assert two(g, name, "sub/up", "sub/deep/../up2") == nc
        assert two(g, name, "sub/inner", "inner") == nc  # one level up: ../a.txt escapes
        assert two(g, name, "link_etc", "sub/etc") == nc  # absolute
        assert two(g, name, "a.txt", "../outside/copy") == nc
        assert two(g, name, "a.txt", "sub/up/copy") == nc
        assert two(g, name, "a.txt", "link_abs/tmp/copy") == nc
    assert two(g, "path_link", "chain_out1", "copy", FOLLOW) == nc
    assert snapshot(tree) == before
    # The same links where their targets stay inside are fine.
    assert two(g, "path_link", "sub/inner", "sub/deep/../inner2") == 0
    assert os.readlink(tree / "data" / "sub" / "inner2") == "../a.txt"
    assert two(g, "path_rename", "sub/inner", "sub/deep/inner") == 0  # ../a.txt -> sub/a.txt
    assert two(g, "path_link", "link_in", "sub/deep/../../copy") == 0


def test_renumbered_preopens_stay_confined_and_are_closed_when_replaced(tree: Path) -> None:
    g = make(tree)
    opened = fd_count()
    err, fd = g.open("a.txt", rights=int(Rights.FD_READ))
    assert err == 0 and fd_count() == opened + 1
    assert g.call("fd_renumber", 3, fd) == 0  # the preopen moves onto the file's number
    assert fd_count() == opened  # the file it replaced is closed on the host
    assert g.call("fd_fdstat_get", 3, g.alloc(24)) == Errno.BADF
    assert g.open("../outside/secret.txt", dirfd=fd)[0] == Errno.NOTCAPABLE
    assert g.open("sub/up/secret.txt", dirfd=fd)[0] == Errno.NOTCAPABLE
    assert g.open("a.txt", dirfd=fd)[0] == 0
    # The read-only preopen moved onto the read-write one's number keeps its own rights.
    assert g.call("fd_renumber", 4, fd) == 0
    assert g.open("r.txt", dirfd=fd, oflags=O_TRUNC)[0] == Errno.NOTCAPABLE
    assert g.open("new.txt", dirfd=fd, oflags=O_CREAT)[0] == Errno.NOTCAPABLE
    assert g.call("fd_renumber", fd, 0xFFFFFFFF) == Errno.BADF
    assert g.call("fd_renumber", 0xFFFFFFFF, fd) == Errno.BADF
    g.ctx.close()
    assert fd_count() < opened


def test_opening_the_preopen_itself(tree: Path) -> None:
    g = make(tree)
    before = snapshot(tree)
    for path in (".", "./", "sub/..", "link_dir/.."):
        err, fd = g.open(path, rights=DIR_RIGHTS)
        assert err == 0, path
        assert g.call("fd_prestat_get", fd, g.alloc(8)) == Errno.BADF  # not a preopen
        assert g.open("../outside/secret.txt", dirfd=fd)[0] == Errno.NOTCAPABLE
        assert g.open(path)[0] == Errno.ISDIR  # FD_WRITE asked
        assert g.open(path, oflags=O_TRUNC)[0] == Errno.ISDIR
        assert g.open(path, oflags=O_CREAT | O_EXCL)[0] == Errno.EXIST
        assert g.open(path, oflags=O_CREAT)[0] == Errno.ISDIR
    assert g.open(".", dirfd=4, rights=DIR_RIGHTS & ~Rights.PATH_OPEN)[0] == 0
    assert g.open(".", dirfd=4, oflags=O_CREAT)[0] == Errno.NOTCAPABLE  # read-only
    assert snapshot(tree) == before


def test_escape_from_an_opened_subdirectory_is_refused(tree: Path) -> None:
    g = make(tree)
    assert g.open("sub")[0] == Errno.ISDIR  # all rights: FD_WRITE on a directory
    err, sub = g.open("sub", rights=DIR_RIGHTS, inheriting=ALL_RIGHTS)
    assert err == 0
    # Still inside the preopen, but above the descriptor the path is relative to.
    assert g.open("../a.txt", dirfd=sub)[0] == Errno.NOTCAPABLE
    assert g.open("deep/../b.txt", dirfd=sub)[0] == 0


def test_symlinks_inside_the_tree_are_followed(tree: Path) -> None:
    g = make(tree)
    for path in ("link_in", "chain1", "link_dir/b.txt", "sub/./deep/../b.txt", "link_dir/"):
        assert g.open(path, rights=DIR_RIGHTS)[0] == 0, path
    err, fd = g.open("chain1")
    assert g.read(fd, 10) == (0, [b"bee"])
    assert g.open("link_in", lookup=0)[0] == Errno.LOOP  # O_NOFOLLOW on a symlink
    assert g.open("loop1")[0] == Errno.LOOP
    assert g.path_call("path_remove_directory", "link_dir/") == Errno.NOTDIR  # not sub
    # "link_dir/" names sub (POSIX, wasmtime): a directory, which unlink refuses.
    assert g.path_call("path_unlink_file", "link_dir/") == Errno.ISDIR
    assert (tree / "data" / "sub").is_dir() and (tree / "data" / "link_dir").is_symlink()
    assert g.filestat("link_out", lookup=0)[0] == 0  # the link itself is inside
    assert g.path_call("path_unlink_file", "link_out") == 0  # removes the link only
    assert (tree / "outside" / "secret.txt").read_bytes() == b"secret"


def test_opening_a_fifo_does_not_block(tree: Path) -> None:
    os.mkfifo(tree / "data" / "fifo")
    g = make(tree)
    err, fd = g.open("fifo", rights=int(Rights.FD_READ))
    assert err == 0
    buf = g.alloc(24)
    assert g.call("fd_fdstat_get", fd, buf) == 0
    assert FDSTAT.unpack_from(g.mem.data, buf)[:2] == (0, 0)  # unknown type, blocking
    assert g.call("fd_close", fd) == 0
    assert g.open("fifo", rights=int(Rights.FD_WRITE))[0] == Errno.NXIO  # no reader


def test_creating_through_a_dangling_inside_link(tree: Path) -> None:
    g = make(tree)
    (tree / "data" / "dangling").symlink_to("sub/created.txt")
    err, fd = g.open("dangling", oflags=O_CREAT)
    assert err == 0
    assert (tree / "data" / "sub" / "created.txt").exists()
    (tree / "data" / "dangling_out").symlink_to("../outside/new.txt")
    assert g.open("dangling_out", oflags=O_CREAT)[0] == Errno.NOTCAPABLE
    assert not (tree / "outside" / "new.txt").exists()


def test_symlinks_that_escape_cannot_be_created(tree: Path) -> None:
    g = make(tree)
    for target, where in [
        ("/etc", "l1"),
        ("../outside", "l2"),
        ("../../x", "sub/l3"),
        ("deep/../../../x", "sub/l4"),
    ]:
        t, tn = g.put(target.encode())
        p, pn = g.put(where.encode())
        assert g.call("path_symlink", t, tn, 3, p, pn) == Errno.NOTCAPABLE, target
        assert not os.path.lexists(tree / "data" / where)
    t, tn = g.put(b"../a.txt")
    p, pn = g.put(b"sub/ok")
    assert g.call("path_symlink", t, tn, 3, p, pn) == 0
    assert (tree / "data" / "sub" / "ok").read_bytes() == b"hello world"


def test_hard_link_does_not_follow_an_escaping_symlink(tree: Path) -> None:
    g = make(tree)
    src, sn = g.put(b"link_out")
    dst, dn = g.put(b"copy")
    assert g.call("path_link", 3, FOLLOW, src, sn, 3, dst, dn) == Errno.NOTCAPABLE
    assert not os.path.lexists(tree / "data" / "copy")


def test_read_only_preopen_refuses_every_change(tree: Path) -> None:
    g = make(tree)
    before = snapshot(tree / "ro")
    buf = g.alloc(24)
    assert g.call("fd_fdstat_get", 4, buf) == 0
    _, _, base, inheriting = FDSTAT.unpack_from(g.mem.data, buf)
    writes = (
        Rights.FD_WRITE
        | Rights.PATH_CREATE_FILE
        | Rights.PATH_CREATE_DIRECTORY
        | Rights.PATH_UNLINK_FILE
        | Rights.PATH_REMOVE_DIRECTORY
        | Rights.PATH_RENAME_SOURCE
        | Rights.PATH_RENAME_TARGET
        | Rights.PATH_SYMLINK
        | Rights.PATH_LINK_SOURCE
        | Rights.PATH_LINK_TARGET
        | Rights.FD_FILESTAT_SET_SIZE
    )
    assert not (base | inheriting) & writes
    assert base & Rights.PATH_OPEN and inheriting & Rights.FD_READ
    nc = Errno.NOTCAPABLE
    assert g.open("r.txt", dirfd=4, oflags=O_TRUNC)[0] == nc
    assert g.open("new.txt", dirfd=4, oflags=O_CREAT)[0] == nc
    assert g.open("r.txt", dirfd=4, rights=int(Rights.FD_WRITE))[0] == nc
    assert g.path_call("path_create_directory", "x", dirfd=4) == nc
    assert g.path_call("path_unlink_file", "r.txt", dirfd=4) == nc
    assert g.path_call("path_remove_directory", "dir", dirfd=4) == nc
    t, tn = g.put(b"r.txt")
    assert g.call("path_symlink", t, tn, 4, *g.put(b"l")) == nc
    assert g.call("path_link", 4, 0, t, tn, 3, *g.put(b"stolen")) == nc
    assert g.call("path_filestat_set_times", 4, 0, t, tn, 0, 0, 8) == nc
    # wasi-libc asks for (wanted rights & the directory's inheriting rights): the file
    # opens read-only and every write on it is refused.
    err, fd = g.open("r.txt", dirfd=4, rights=ALL_RIGHTS & inheriting)
    assert err == 0
    assert g.write(fd, b"x")[0] == nc
    assert g.call("fd_filestat_set_size", fd, 0) == nc
    assert g.call("fd_allocate", fd, 0, 10) == nc
    assert g.call("fd_fdstat_set_flags", fd, 1) == nc
    assert g.read(fd, 100) == (0, [b"read only"])
    # A subdirectory opened beneath it inherits no write rights either.
    assert g.open("dir", dirfd=4, rights=ALL_RIGHTS)[0] == nc  # FD_WRITE asked
    err, sub = g.open("dir", dirfd=4, rights=ALL_RIGHTS & inheriting)
    assert err == 0
    assert g.open("f", dirfd=sub, oflags=O_CREAT)[0] == nc
    assert g.call("fd_fdstat_set_rights", sub, ALL_RIGHTS, ALL_RIGHTS) == nc
    assert snapshot(tree / "ro") == before


def test_fdstat_set_rights_only_drops(tree: Path) -> None:
    g = make(tree)
    err, fd = g.open("a.txt")
    assert g.call("fd_fdstat_set_rights", fd, int(Rights.FD_READ), 0) == 0
    assert g.write(fd, b"x")[0] == Errno.NOTCAPABLE
    assert g.call("fd_fdstat_set_rights", fd, int(Rights.FD_READ | Rights.FD_WRITE), 0) == (
        Errno.NOTCAPABLE
    )
