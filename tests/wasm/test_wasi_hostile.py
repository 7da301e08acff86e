"""WASI preview1 (sandbox/wasm/wasi/) driven directly, without KVM: a bytearray stands for the
program's linear memory (wasi_support.Guest plays the program) and a temporary directory on
the real file system is what the program is granted (the `tree` fixture in conftest.py).
Hostile pointers, lengths and argument values: every function answers with an errno, never
an exception or an escape."""

from __future__ import annotations

import collections
import os
import struct
from pathlib import Path

import pytest
from wasi_support import (
    WASI_FUNCTIONS,
    Memory,
    make,
    snapshot,
)

from sandbox.wasm.wasi import (
    I32,
    Errno,
    WasiConfig,
    WasiContext,
)

# -- hostile arguments ---------------------------------------------------------------------


def test_hostile_lengths_and_pointers(tree: Path) -> None:
    g = make(tree, stdin=b"input")
    size = len(g.mem.data)
    out = g.alloc(8)
    iov = g.alloc(8)
    assert g.call("fd_write", 1, iov, 10_000_000, out) == Errno.INVAL
    assert g.call("fd_read", 0, iov, 0xFFFFFFFF, out) == Errno.INVAL
    assert g.call("fd_write", 1, size - 4, 1, out) == Errno.FAULT  # iovec array cut off
    struct.pack_into("<II", g.mem.data, iov, size - 2, 100)  # buffer past the end
    assert g.call("fd_write", 1, iov, 1, out) == Errno.FAULT
    assert g.call("fd_read", 0, iov, 1, out) == Errno.FAULT
    struct.pack_into("<II", g.mem.data, iov, 0xFFFFFFF0, 0x100)  # wraps past 4 GiB
    assert g.call("fd_write", 1, iov, 1, out) == Errno.FAULT
    struct.pack_into("<II", g.mem.data, iov, 16, 4)
    assert g.call("fd_read", 0, iov, 1, -4) == Errno.FAULT  # nread pointer: 0xfffffffc
    assert g.read(0, 5) == (0, [b"input"])  # the failed read consumed nothing
    assert g.call("fd_write", 1, iov, 1, size) == Errno.FAULT
    assert g.ctx.stdout == b""  # and the failed write wrote nothing
    assert g.call("random_get", 0, 0xFFFFFFFF) == Errno.FAULT
    assert g.call("random_get", -8, 16) == Errno.FAULT
    assert g.call("random_get", size - 4, 8) == Errno.FAULT
    assert g.call("path_open", 3, 1, 0, 0xFFFFFFFF, 0, 0, 0, 0, out) == Errno.NAMETOOLONG
    assert g.call("path_open", 3, 1, size - 2, 100, 0, 0, 0, 0, out) == Errno.FAULT
    bad, n = g.put(b"\xff\xfe")
    assert g.call("path_open", 3, 1, bad, n, 0, 0, 0, 0, out) == Errno.ILSEQ
    nul, n = g.put(b"a.txt\0x")
    assert g.call("path_open", 3, 1, nul, n, 0, 0, 0, 0, out) == Errno.INVAL
    empty, _ = g.put(b"x")
    assert g.call("path_open", 3, 1, empty, 0, 0, 0, 0, 0, out) == Errno.NOENT
    assert g.call("fd_readdir", 3, size - 10, 0xFFFFFFFF, 0, out) == Errno.FAULT
    assert g.call("fd_pread", 5, iov, 1, 0, out) == Errno.BADF
    assert g.call("fd_close", 0xFFFFFFFF) == Errno.BADF
    assert g.call("fd_close", -1) == Errno.BADF
    assert g.call("poll_oneoff", 0, 0, 0, out) == Errno.INVAL
    assert g.call("poll_oneoff", 0, 0, 1 << 30, out) == Errno.INVAL
    assert g.call("poll_oneoff", size - 48, 0, 2, out) == Errno.FAULT
    assert g.call("fd_prestat_dir_name", 3, size - 2, 5) == Errno.FAULT
    assert g.call("fd_fdstat_get", 3, size - 23) == Errno.FAULT
    assert g.call("clock_time_get", 0, 0, size - 7) == Errno.FAULT
    assert g.call("fd_seek", 1 << 31, 0, 0, out) == Errno.BADF


def test_memoryless_module_gets_efault() -> None:
    with WasiContext(WasiConfig(args=["x"])) as ctx:
        assert ctx.functions["args_sizes_get"].call(None, 0, 4) == Errno.FAULT
        assert ctx.functions["fd_write"].call(None, 1, 0, 1, 8) == Errno.FAULT
        assert ctx.functions["sched_yield"].call(None) == 0


def test_wrong_argument_count_is_a_type_error() -> None:
    with WasiContext(WasiConfig()) as ctx, pytest.raises(TypeError, match="fd_close takes 1"):
        ctx.functions["fd_close"].call(Memory(), 1, 2)


# Where path_* functions take (pointer, length) pairs and a directory fd.
PATH_ARGS = {
    "path_create_directory": ([(1, 2)], [0]),
    "path_filestat_get": ([(2, 3)], [0]),
    "path_filestat_set_times": ([(2, 3)], [0]),
    "path_link": ([(2, 3), (5, 6)], [0, 4]),
    "path_open": ([(2, 3)], [0]),
    "path_readlink": ([(1, 2)], [0]),
    "path_remove_directory": ([(1, 2)], [0]),
    "path_rename": ([(1, 2), (4, 5)], [0, 3]),
    "path_symlink": ([(0, 1), (3, 4)], [2]),
    "path_unlink_file": ([(1, 2)], [0]),
}


def test_random_hostile_calls_never_raise_or_escape(tree: Path) -> None:
    import random

    rng = random.Random(1234)
    g = make(tree, stdin=b"x" * 100, clock="virtual")
    paths = [
        g.put(p)
        for p in (
            b"a.txt", b"new", b"new/f", b"sub", b"sub/b.txt", b"sub/deep", b"link_in",
            b"link_dir/", b"chain1", b"loop1", b"..", b".", b"x/y", b"../outside",
            b"/etc/passwd", b"link_out", b"link_abs/etc", b"sub/up/secret.txt",
            b"chain_out1", b"sub/../../outside/secret.txt", b"../../x", b"\xff",
        )
    ]  # fmt: skip
    iovs = g.alloc(16)
    interesting = [0, 1, 2, 3, 4, 5, 8, 24, 48, 64, 1024, 1 << 16, (1 << 20) - 1, 1 << 20,
                   1 << 31, 0xFFFFFFFF, -1, -(1 << 31), 1 << 63, (1 << 64) - 1]  # fmt: skip
    outside_before = snapshot(tree / "outside")
    ro_before = snapshot(tree / "ro")
    parent_before = os.listdir(tree.parent)
    names = sorted(set(WASI_FUNCTIONS) - {"proc_exit"})
    outcomes: collections.Counter[str] = collections.Counter()
    for _ in range(30000):
        name = rng.choice(names)
        fn = g.ctx.functions[name]
        args = []
        for t in fn.params:
            roll = rng.random()
            if roll < 0.4:
                args.append(rng.choice(interesting))
            elif roll < 0.7:
                args.append(rng.randrange(g.top, 1 << 20))  # in memory, past the paths
            else:
                args.append(rng.randrange(0, 1 << (32 if t == I32 else 64)))
        if name.startswith("fd_"):
            args[0] = rng.choice([0, 1, 2, 3, 3, 4, 4, 5, 6, 7, args[0]])
        for pairs, fds in [PATH_ARGS.get(name, ([], []))]:
            for i in fds:
                args[i] = rng.choice([3, 3, 3, 4, 5, 6, args[i]])
            for ptr, length in pairs:
                if rng.random() < 0.9:
                    args[ptr], args[length] = rng.choice(paths)
        if name in ("fd_read", "fd_write", "fd_pread", "fd_pwrite") and rng.random() < 0.5:
            args[1], args[2], args[-1] = iovs, rng.choice([1, 2]), rng.randrange(g.top, 1 << 19)
            struct.pack_into("<IIII", g.mem.data, iovs, 1 << 19, 100, (1 << 19) + 200, 1000)
        if name == "path_open" and rng.random() < 0.8:  # mostly valid flags
            args[4] = rng.choice([0, 1, 2, 5, 8, 9])
            args[7] = rng.choice([0, 1, 4])
            args[8] = rng.randrange(g.top, (1 << 20) - 4)
        keep = {0, 1, 3, 4}  # stdin, stdout and the preopens, so that later calls get somewhere
        if name in ("fd_close", "fd_renumber", "fd_fdstat_set_rights") and keep & {
            a & 0xFFFFFFFF for a in args
        }:
            continue
        result = fn.call(g.mem, *args)
        assert isinstance(result, int) and 0 <= result <= 76, (name, args, result)
        if result == 0:
            outcomes[name] += 1
    assert snapshot(tree / "outside") == outside_before
    assert snapshot(tree / "ro") == ro_before
    assert sorted(os.listdir(tree)) == ["data", "outside", "ro"]
    assert sorted(os.listdir(tree.parent)) == sorted(parent_before)
    # The calls reached the real work, not only the argument checks.
    for name in ("path_open", "path_create_directory", "fd_read", "fd_write",
                 "fd_readdir"):  # fmt: skip
        assert outcomes[name] > 0, (name, outcomes)
    g.ctx.close()
