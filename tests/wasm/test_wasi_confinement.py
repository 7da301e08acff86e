"""WASI preview1 path confinement (sandbox/wasm/wasi/confine.py, path.py) driven directly,
without KVM: a bytearray stands for the program's linear memory (wasi_support.Guest plays
the program) and a temporary directory on the real file system is what the program is
granted (the `tree` fixture in conftest.py). Escapes by '..', absolute paths and symlinks,
links created to escape, read-only preopens."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from wasi_support import (
    ALL_RIGHTS,
    DIR_RIGHTS,
    FDSTAT,
    FOLLOW,
    O_CREAT,
    O_TRUNC,
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
