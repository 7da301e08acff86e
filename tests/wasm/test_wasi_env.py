"""WASI preview1 (sandbox/wasm/wasi/env.py, poll.py) driven directly, without KVM: a bytearray
stands for the program's linear memory (wasi_support.Guest plays the program) and a
temporary directory on the real file system is what the program is granted (the `tree`
fixture in conftest.py). Arguments and environment, proc_exit, clocks, polling and
randomness."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest
from wasi_support import (
    Guest,
    make,
)

from sandbox.wasm.wasi import (
    Errno,
    WasiConfig,
    WasiContext,
    WasiExit,
)

# -- args and environment ------------------------------------------------------------------


def test_args_and_environ_layout_is_byte_exact() -> None:
    config = WasiConfig(args=["prog", "", "héllo"], env={"A": "1", "EMPTY": "", "X": "a=b"})
    g = Guest(WasiContext(config))
    sizes = g.alloc(8)
    assert g.call("args_sizes_get", sizes, sizes + 4) == 0
    assert (g.u32(sizes), g.u32(sizes + 4)) == (3, len(b"prog\0\0h\xc3\xa9llo\0"))
    argv, buf = g.alloc(12), g.alloc(64)
    assert g.call("args_get", argv, buf) == 0
    assert [g.u32(argv + 4 * i) for i in range(3)] == [buf, buf + 5, buf + 6]
    assert bytes(g.mem.data[buf : buf + 13]) == b"prog\0\0h\xc3\xa9llo\0"
    assert g.call("environ_sizes_get", sizes, sizes + 4) == 0
    assert (g.u32(sizes), g.u32(sizes + 4)) == (3, len(b"A=1\0EMPTY=\0X=a=b\0"))
    env, buf = g.alloc(12), g.alloc(64)
    assert g.call("environ_get", env, buf) == 0
    assert [g.u32(env + 4 * i) for i in range(3)] == [buf, buf + 4, buf + 11]
    assert bytes(g.mem.data[buf : buf + 17]) == b"A=1\0EMPTY=\0X=a=b\0"
    # Pointers outside memory: EFAULT, nothing raised.
    assert g.call("args_get", len(g.mem.data) - 4, buf) == Errno.FAULT
    assert g.call("environ_sizes_get", -1, sizes) == Errno.FAULT


def test_no_args_and_no_environ() -> None:
    g = Guest(WasiContext(WasiConfig()))
    sizes = g.alloc(8)
    g.mem.data[sizes : sizes + 8] = b"\xff" * 8
    assert g.call("args_sizes_get", sizes, sizes + 4) == 0
    assert (g.u32(sizes), g.u32(sizes + 4)) == (0, 0)
    assert g.call("args_get", 0, 0) == 0


# -- process, clocks, randomness, polling ---------------------------------------------------


def test_proc_exit_raises_wasi_exit() -> None:
    g = Guest(WasiContext(WasiConfig()))
    with pytest.raises(WasiExit) as info:
        g.ctx.functions["proc_exit"].call(g.mem, 42)
    assert info.value.code == 42 and g.ctx.exit_code == 42
    with pytest.raises(WasiExit) as info:
        g.ctx.functions["proc_exit"].call(g.mem, -1)
    assert info.value.code == 0xFFFFFFFF
    assert g.call("proc_raise", 9) == Errno.NOSYS
    assert g.call("sched_yield") == 0


def test_clocks() -> None:
    g = Guest(WasiContext(WasiConfig()))
    out = g.alloc(8)
    before = time.time_ns()
    assert g.call("clock_time_get", 0, 1, out) == 0
    assert before <= g.u64(out) <= time.time_ns()
    for clock in (1, 2, 3):
        assert g.call("clock_time_get", clock, 0, out) == 0 and g.u64(out) > 0
        assert g.call("clock_res_get", clock, out) == 0 and 0 < g.u64(out) <= 10**9
    assert g.call("clock_time_get", 4, 0, out) == Errno.INVAL
    assert g.call("clock_res_get", -1, out) == Errno.INVAL


def subscription_clock(userdata: int, clock: int, timeout: int, flags: int = 0) -> bytes:
    return struct.pack("<QB7xIxxxxQQH6x", userdata, 0, clock, timeout, 0, flags)


def subscription_fd(userdata: int, tag: int, fd: int) -> bytes:
    return struct.pack("<QB7xI28x", userdata, tag, fd)


def poll(g: Guest, *subs: bytes) -> tuple[int, list[tuple[int, int, int, int]]]:
    src, _ = g.put(b"".join(subs))
    dst = g.alloc(32 * len(subs))
    n = g.alloc(4)
    err = g.call("poll_oneoff", src, dst, len(subs), n)
    events = [
        struct.unpack_from("<QHBxxxxxQ", g.mem.data, dst + 32 * i)[:4] for i in range(g.u32(n))
    ]
    return err, events


def test_poll_oneoff_sleeps_and_reports_fds_ready(tree: Path) -> None:
    g = make(tree, stdin=b"12345")
    start = time.monotonic()
    err, events = poll(g, subscription_clock(7, 1, 30_000_000))
    assert err == 0 and events == [(7, 0, 0, 0)]
    assert time.monotonic() - start >= 0.029
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    err, events = poll(g, subscription_clock(8, 1, now + 10_000_000, flags=1))
    assert err == 0 and events == [(8, 0, 0, 0)]
    err, events = poll(
        g,
        subscription_clock(1, 1, 10**12),
        subscription_fd(2, 1, 0),
        subscription_fd(3, 2, 1),
        subscription_fd(4, 1, 99),
    )
    assert err == 0
    assert events == [(2, 0, 1, 5), (3, 0, 2, 0), (4, Errno.BADF, 1, 0)]
    err, events = poll(g, subscription_clock(5, 2, 10))
    assert events == [(5, Errno.INVAL, 0, 0)]
    assert poll(g, struct.pack("<QB39x", 1, 9))[0] == Errno.INVAL
    assert len(subscription_clock(0, 0, 0)) == len(subscription_fd(0, 1, 0)) == 48


def test_interrupt_ends_a_sleep_with_eintr() -> None:
    import threading

    g = Guest(WasiContext(WasiConfig()))
    threading.Timer(0.05, g.ctx.interrupt).start()
    start = time.monotonic()
    err, _ = poll(g, subscription_clock(1, 1, (1 << 64) - 1))  # "forever"
    assert err == Errno.INTR and time.monotonic() - start < 5
    # The interrupt is consumed: the next sleep sleeps.
    assert poll(g, subscription_clock(2, 1, 1_000_000)) == (0, [(2, 0, 0, 0)])
    g.ctx.interrupt()  # pending: ends the next sleep at once
    assert poll(g, subscription_clock(3, 1, 60 * 10**9))[0] == Errno.INTR


def test_virtual_clock_is_deterministic() -> None:
    g = Guest(WasiContext(WasiConfig(clock="virtual", virtual_epoch_ns=1000)))
    out = g.alloc(8)
    assert g.call("clock_time_get", 0, 0, out) == 0 and g.u64(out) == 1000
    assert g.call("clock_time_get", 1, 0, out) == 0 and g.u64(out) == 0
    start = time.monotonic()
    assert poll(g, subscription_clock(1, 1, 3600 * 10**9))[0] == 0
    assert time.monotonic() - start < 1
    assert g.call("clock_time_get", 1, 0, out) == 0 and g.u64(out) == 3600 * 10**9
    assert g.call("clock_time_get", 0, 0, out) == 0 and g.u64(out) == 1000 + 3600 * 10**9


def test_random_get() -> None:
    g = Guest(WasiContext(WasiConfig()))
    buf = g.alloc(200_000)
    assert g.call("random_get", buf, 200_000) == 0
    assert len(set(g.mem.data[buf : buf + 200_000])) > 200
    seeded = [Guest(WasiContext(WasiConfig(random_seed=7))) for _ in range(2)]
    for s in seeded:
        assert s.call("random_get", 64, 32) == 0
    assert seeded[0].mem.data[64:96] == seeded[1].mem.data[64:96] != bytes(32)
