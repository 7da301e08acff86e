"""WASI preview1 (sandbox/wasm/wasi/fd.py, fdio.py, fdtable.py) driven directly, without KVM: a
bytearray stands for the program's linear memory (wasi_support.Guest plays the program) and
a temporary directory on the real file system is what the program is granted (the `tree`
fixture in conftest.py). Stdio and its captures, files and directories through descriptors,
and the descriptor table."""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

import pytest
from wasi_support import (
    ALL_RIGHTS,
    DIR_RIGHTS,
    DIRENT,
    FDSTAT,
    FILESTAT,
    O_CREAT,
    O_DIRECTORY,
    O_EXCL,
    O_TRUNC,
    Guest,
    make,
    parse_dirents,
)

from sandbox.wasm.wasi import (
    Errno,
    Rights,
    WasiConfig,
    WasiContext,
)

# -- stdio -------------------------------------------------------------------------------


def test_stdout_and_stderr_are_captured_with_gather() -> None:
    g = Guest(WasiContext(WasiConfig()))
    assert g.write(1, b"hello", b", ", b"", b"world\n") == (0, 13)
    assert g.write(2, b"oops") == (0, 4)
    assert g.ctx.stdout == b"hello, world\n"
    assert g.ctx.stderr == b"oops"


def test_output_limit_keeps_the_start_and_marks_the_capture_truncated() -> None:
    g = Guest(WasiContext(WasiConfig(output_limit=10)))
    assert WasiConfig().output_limit == 1 << 20
    assert not g.ctx.truncated
    assert g.write(1, b"0123456789") == (0, 10)  # exactly the limit: nothing dropped
    assert not g.ctx.truncated
    marks = g.ctx.output_marks()
    # Past the limit every write still succeeds in full: the program must not retry.
    assert g.write(1, b"abc") == (0, 3)
    assert g.write(1, b"x") == (0, 1)
    assert g.write(2, b"err") == (0, 3)
    assert g.ctx.stdout == b"0123456789"
    assert g.ctx.truncated
    assert g.ctx.output_since(marks) == (b"", b"err")
    assert g.ctx.output_truncated_since(marks) == (True, False)
    assert g.ctx.output_truncated_since(g.ctx.output_marks()) == (False, False)
    g.ctx.clear_output()
    assert not g.ctx.truncated and g.ctx.stdout == b""
    assert g.write(1, b"0123456789abc") == (0, 13)
    assert g.ctx.stdout == b"0123456789" and g.ctx.truncated
    # The earlier name of the setting is still accepted.
    assert WasiConfig(capture_limit=5).output_limit == 5
    assert WasiConfig(capture_limit=5).capture_limit == 5


def test_output_flood_is_linear_and_bounded() -> None:
    """50 MiB written in 4 KiB writes and in 1 MiB writes: every write succeeds in full,
    the capture keeps the first output_limit bytes, it takes well under a second, and the
    host allocates about the limit, not the flood."""
    import tracemalloc

    limit = 1 << 20
    for chunk in (4096, 1 << 20):
        g = Guest(WasiContext(WasiConfig(output_limit=limit)), size=(1 << 20) + (1 << 16))
        iov = g.alloc(8)
        out = g.alloc(4)
        buf, n = g.put(bytes(range(256)) * (chunk // 256))
        struct.pack_into("<II", g.mem.data, iov, buf, n)
        tracemalloc.start()
        try:
            t0 = time.perf_counter()
            total = 0
            for _ in range((50 << 20) // chunk):
                assert g.call("fd_write", 1, iov, 1, out) == 0
                total += g.u32(out)
            elapsed = time.perf_counter() - t0
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert total == 50 << 20
        assert g.ctx.stdout == (bytes(range(256)) * (limit // 256))[:limit]
        assert g.ctx.truncated
        assert elapsed < 5.0, f"{chunk}-byte writes: {elapsed:.2f} s"
        assert peak < 4 * limit, f"{chunk}-byte writes: peak {peak} bytes"


def test_discarded_output_and_stdin_bytes_with_scatter() -> None:
    g = Guest(WasiContext(WasiConfig(stdin=b"abcdefgh", stdout="discard")))
    assert g.write(1, b"gone") == (0, 4)
    assert g.ctx.stdout == b""
    assert g.read(0, 3, 2) == (0, [b"abc", b"de"])
    assert g.read(0, 10) == (0, [b"fgh"])
    assert g.read(0, 10) == (0, [b""])  # end of input
    assert g.write(0, b"x")[0] == Errno.NOTCAPABLE
    assert g.read(1, 4)[0] == Errno.NOTCAPABLE


def test_inherited_stdio_uses_the_host_fds(capfd: pytest.CaptureFixture[str]) -> None:
    read_end, write_end = os.pipe()
    saved = os.dup(0)
    try:
        os.write(write_end, b"from host stdin")
        os.close(write_end)
        os.dup2(read_end, 0)
        config = WasiConfig(stdin="inherit", stdout="inherit", stderr="inherit")
        g = Guest(WasiContext(config))
        assert g.read(0, 4, 100) == (0, [b"from", b" host stdin"])
        assert g.write(1, b"to host ", b"stdout\n") == (0, 15)
        assert g.write(2, b"to host stderr\n") == (0, 15)
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        os.close(read_end)
    out, err = capfd.readouterr()
    assert out == "to host stdout\n" and err == "to host stderr\n"
    assert g.ctx.stdout == g.ctx.stderr == b""


def test_captured_stdio_is_not_a_terminal_and_cannot_seek() -> None:
    g = Guest(WasiContext(WasiConfig()))
    buf = g.alloc(24)
    for fd in (0, 1, 2):
        assert g.call("fd_fdstat_get", fd, buf) == 0
        # UNKNOWN, as wasmtime reports a pipe or a file: wasi-libc's isatty() is false.
        assert FDSTAT.unpack_from(g.mem.data, buf)[0] == 0
    assert g.call("fd_fdstat_get", 1, buf) == 0
    filetype, flags, base, inheriting = FDSTAT.unpack_from(g.mem.data, buf)
    assert filetype == 0 and flags == 0 and inheriting == 0
    assert base & Rights.FD_WRITE and not base & (Rights.FD_SEEK | Rights.FD_TELL | Rights.FD_READ)
    assert g.call("fd_seek", 1, 0, 0, g.alloc(8)) == Errno.SPIPE
    assert g.call("fd_tell", 0, g.alloc(8)) == Errno.SPIPE


# -- files -------------------------------------------------------------------------------


def test_read_write_seek_tell_pread_pwrite(tree: Path) -> None:
    g = make(tree)
    err, fd = g.open("new.txt", oflags=O_CREAT | O_EXCL)
    assert err == 0 and fd == 5
    assert g.write(fd, b"abc", b"defgh") == (0, 8)
    pos = g.alloc(8)
    assert g.call("fd_tell", fd, pos) == 0 and g.u64(pos) == 8
    assert g.call("fd_seek", fd, 2, 0, pos) == 0 and g.u64(pos) == 2
    assert g.read(fd, 2, 1, 100) == (0, [b"cd", b"e", b"fgh"])
    assert g.call("fd_seek", fd, -3, 2, pos) == 0 and g.u64(pos) == 5  # SEEK_END - 3
    assert g.call("fd_seek", fd, -100, 1, pos) == Errno.INVAL
    assert g.call("fd_seek", fd, 0, 3, pos) == Errno.INVAL
    iov, n = g.alloc(8), g.alloc(4)
    data, _ = g.put(b"XY")
    struct.pack_into("<II", g.mem.data, iov, data, 2)
    assert g.call("fd_pwrite", fd, iov, 1, 1, n) == 0 and g.u32(n) == 2
    dst = g.alloc(8)
    struct.pack_into("<II", g.mem.data, iov, dst, 8)
    assert g.call("fd_pread", fd, iov, 1, 0, n) == 0 and g.u32(n) == 8
    assert bytes(g.mem.data[dst : dst + 8]) == b"aXYdefgh"
    assert g.call("fd_tell", fd, pos) == 0 and g.u64(pos) == 5  # pread/pwrite keep the offset
    assert g.call("fd_close", fd) == 0
    assert g.call("fd_close", fd) == Errno.BADF
    assert (tree / "data" / "new.txt").read_bytes() == b"aXYdefgh"


def test_open_flags(tree: Path) -> None:
    g = make(tree)
    assert g.open("a.txt", oflags=O_CREAT | O_EXCL)[0] == Errno.EXIST
    assert g.open("a.txt", oflags=O_DIRECTORY)[0] == Errno.NOTDIR
    assert g.open("missing")[0] == Errno.NOENT
    assert g.open("sub", oflags=O_CREAT | O_DIRECTORY)[0] == Errno.INVAL
    assert g.open("a.txt", oflags=0x100)[0] == Errno.INVAL
    err, fd = g.open("a.txt", fdflags=1)  # APPEND
    assert err == 0
    assert g.write(fd, b"!") == (0, 1)
    assert (tree / "data" / "a.txt").read_bytes() == b"hello world!"
    buf = g.alloc(24)
    assert g.call("fd_fdstat_get", fd, buf) == 0
    assert FDSTAT.unpack_from(g.mem.data, buf)[:2] == (4, 1)
    assert g.call("fd_fdstat_set_flags", fd, 0) == 0
    assert g.call("fd_fdstat_set_flags", fd, 16) == Errno.NOTSUP  # SYNC
    err, fd = g.open("a.txt", oflags=O_TRUNC)
    assert err == 0 and (tree / "data" / "a.txt").read_bytes() == b""
    # Opened without FD_WRITE: writing is refused by rights.
    err, fd = g.open("sub/b.txt", rights=int(Rights.FD_READ | Rights.FD_SEEK))
    assert err == 0
    assert g.write(fd, b"x")[0] == Errno.NOTCAPABLE
    assert g.read(fd, 10) == (0, [b"bee"])
    # A directory opens as a directory (EISDIR when FD_WRITE is asked); reading it is EISDIR.
    assert g.open("sub")[0] == Errno.ISDIR
    err, dfd = g.open("sub", rights=DIR_RIGHTS, inheriting=ALL_RIGHTS)
    assert err == 0
    assert g.call("fd_fdstat_get", dfd, buf) == 0 and FDSTAT.unpack_from(g.mem.data, buf)[0] == 3
    assert g.read(dfd, 10)[0] == Errno.ISDIR
    assert g.open("b.txt", dirfd=dfd)[0] == 0
    assert g.open("a.txt", dirfd=fd)[0] == Errno.NOTDIR


def test_filestat_and_set_size_and_times(tree: Path) -> None:
    g = make(tree)
    err, st = g.filestat("a.txt")
    host = os.stat(tree / "data" / "a.txt")
    assert err == 0
    dev, ino, filetype, nlink, size, atim, mtim, ctim = st
    assert (ino, filetype, nlink, size, mtim) == (host.st_ino, 4, 1, 11, host.st_mtime_ns)
    assert g.filestat("sub")[1][2] == 3
    assert g.filestat("link_in", lookup=0)[1][2] == 7  # the link itself
    assert g.filestat("link_in")[1][4] == 3  # followed: sub/b.txt
    err, fd = g.open("a.txt")
    assert g.call("fd_filestat_set_size", fd, 4) == 0
    buf = g.alloc(64)
    assert g.call("fd_filestat_get", fd, buf) == 0
    assert FILESTAT.unpack_from(g.mem.data, buf)[4] == 4
    assert g.call("fd_filestat_set_size", fd, -1) == Errno.INVAL
    assert g.call("fd_filestat_set_times", fd, 5_000_000_000, 7_000_000_000, 1 | 4) == 0
    host = os.stat(tree / "data" / "a.txt")
    assert (host.st_atime_ns, host.st_mtime_ns) == (5_000_000_000, 7_000_000_000)
    assert g.call("fd_filestat_set_times", fd, 0, 0, 1 | 2) == Errno.INVAL
    p, n = g.put(b"sub/b.txt")
    assert g.call("path_filestat_set_times", 3, 0, p, n, 0, 9_000_000_000, 4) == 0
    host = os.stat(tree / "data" / "sub" / "b.txt")
    assert host.st_mtime_ns == 9_000_000_000
    before = time.time_ns()
    assert g.call("path_filestat_set_times", 3, 0, p, n, 0, 0, 8) == 0  # MTIM_NOW
    assert os.stat(tree / "data" / "sub" / "b.txt").st_mtime_ns >= before - 10**9


def test_directory_operations(tree: Path) -> None:
    g = make(tree)
    data = tree / "data"
    assert g.path_call("path_create_directory", "new") == 0 and (data / "new").is_dir()
    assert g.path_call("path_create_directory", "new") == Errno.EXIST
    assert g.path_call("path_create_directory", "nope/x") == Errno.NOENT
    assert g.path_call("path_remove_directory", "sub") == Errno.NOTEMPTY
    assert g.path_call("path_unlink_file", "sub") == Errno.ISDIR
    assert g.path_call("path_unlink_file", "a.txt/") == Errno.NOTDIR
    old, on = g.put(b"a.txt")
    new, nn = g.put(b"new/moved.txt")
    assert g.call("path_rename", 3, old, on, 3, new, nn) == 0
    assert (data / "new" / "moved.txt").read_bytes() == b"hello world"
    assert g.path_call("path_unlink_file", "new/moved.txt") == 0
    assert g.path_call("path_remove_directory", "new/") == 0 and not (data / "new").exists()
    src, sn = g.put(b"sub/b.txt")
    dst, dn = g.put(b"hard.txt")
    assert g.call("path_link", 3, 0, src, sn, 3, dst, dn) == 0
    assert os.stat(data / "hard.txt").st_ino == os.stat(data / "sub" / "b.txt").st_ino
    target, tn = g.put(b"sub/deep")
    link, ln = g.put(b"sub/../mylink")
    assert g.call("path_symlink", target, tn, 3, link, ln) == 0
    assert os.readlink(data / "mylink") == "sub/deep"
    buf, used = g.alloc(64), g.alloc(4)
    assert g.call("path_readlink", 3, link, ln, buf, 64, used) == 0
    assert bytes(g.mem.data[buf : buf + g.u32(used)]) == b"sub/deep"
    assert g.call("path_readlink", 3, link, ln, buf, 3, used) == 0 and g.u32(used) == 3
    assert g.call("path_readlink", 3, src, sn, buf, 64, used) == Errno.INVAL  # not a link
    # Renaming a directory over a file and between preopens that differ in rights.
    ro, rn = g.put(b"r.txt")
    assert g.call("path_rename", 4, ro, rn, 3, dst, dn) == Errno.NOTCAPABLE
    assert g.call("path_rename", 3, dst, dn, 4, ro, rn) == Errno.NOTCAPABLE


def test_readdir_with_cookies_and_small_buffers(tree: Path) -> None:
    g = make(tree)
    err, fd = g.open("sub", oflags=O_DIRECTORY, rights=DIR_RIGHTS)
    assert err == 0
    err, raw = g.readdir(fd)
    entries = parse_dirents(raw)
    names = sorted(e[3] for e in entries)
    assert names == [b".", b"..", b"b.txt", b"deep", b"up"]
    assert [e[0] for e in entries] == list(range(1, 6))
    kinds = {e[3]: e[2] for e in entries}
    assert kinds == {b".": 3, b"..": 3, b"b.txt": 4, b"deep": 3, b"up": 7}
    inodes = {e[3]: e[1] for e in entries}
    assert inodes[b"b.txt"] == os.stat(tree / "data" / "sub" / "b.txt").st_ino
    # A buffer too small for everything: the last entry is cut, bufused == buf_len.
    err, cut = g.readdir(fd, size=30)
    assert err == 0 and len(cut) == 30
    # Resuming from each cookie yields the rest, entry by entry.
    seen = []
    cookie = 0
    while True:
        err, part = g.readdir(fd, size=DIRENT.size + 16, cookie=cookie)
        got = parse_dirents(part)
        if not got:
            break
        seen.append(got[0][3])
        cookie = got[0][0]
    assert sorted(seen) == names
    assert g.readdir(fd, cookie=1000) == (0, b"")
    err, file_fd = g.open("a.txt")
    assert g.readdir(file_fd)[0] == Errno.NOTDIR
    # The preopen's own listing; its ".." does not reveal the host's parent.
    entries = parse_dirents(g.readdir(4)[1])
    assert sorted(e[3] for e in entries) == [b".", b"..", b"dir", b"r.txt"]
    assert {e[1] for e in entries if e[3] in (b".", b"..")} == {os.stat(tree / "ro").st_ino}


# -- descriptors -------------------------------------------------------------------------


def test_prestat(tree: Path) -> None:
    g = make(tree)
    buf = g.alloc(8)
    assert g.call("fd_prestat_get", 3, buf) == 0
    assert struct.unpack_from("<BxxxI", g.mem.data, buf) == (0, 5)
    name = g.alloc(16)
    assert g.call("fd_prestat_dir_name", 3, name, 5) == 0
    assert bytes(g.mem.data[name : name + 5]) == b"/data"
    assert g.call("fd_prestat_dir_name", 4, name, 2) == Errno.NAMETOOLONG
    assert g.call("fd_prestat_get", 1, buf) == Errno.BADF
    assert g.call("fd_prestat_get", 5, buf) == Errno.BADF  # wasi-libc stops scanning here
    err, fd = g.open("a.txt")
    assert g.call("fd_prestat_get", fd, buf) == Errno.BADF


def test_renumber_close_sockets(tree: Path) -> None:
    g = make(tree)
    err, fd = g.open("a.txt")
    assert g.call("fd_renumber", fd, 1) == 0  # dup2(fd, 1): stdout is now the file
    assert g.write(1, b"HELLO") == (0, 5)
    assert (tree / "data" / "a.txt").read_bytes() == b"HELLO world"
    assert g.call("fd_close", fd) == Errno.BADF
    assert g.call("fd_renumber", 1, 77) == Errno.BADF
    assert g.call("fd_renumber", 77, 1) == Errno.BADF
    assert g.call("sock_accept", 0, 0, 100) == Errno.NOTSOCK
    assert g.call("sock_recv", 9, 0, 0, 0, 0, 0) == Errno.BADF
    assert g.call("sock_send", 1, 0, 0, 0, 0) == Errno.NOTSOCK
    assert g.call("sock_shutdown", 2, 3) == Errno.NOTSOCK
    assert g.call("fd_sync", 3) == 0 and g.call("fd_datasync", 4) == Errno.NOTCAPABLE
    assert g.call("fd_advise", 1, 0, 0, 0) == 0  # now a file
    assert g.call("fd_advise", 2, 0, 0, 0) == Errno.SPIPE
    assert g.call("fd_advise", 2, 0, 0, 9) == Errno.INVAL


def test_descriptor_limit(tree: Path) -> None:
    g = make(tree, max_open_files=6)
    assert g.open("a.txt")[0] == 0
    assert g.open("a.txt")[0] == Errno.MFILE
    g.ctx.close()
    assert g.call("fd_write", 1, 0, 0, 0) == Errno.BADF
    g.ctx.close()
