"""SandboxPool (fresh state per call, threads, asyncio, traps, close) and density: a
thousand live sandboxes from one snapshot."""

from __future__ import annotations

import asyncio
import threading

import pytest
from support import drain, fd_count

from sandbox import ArgumentError, CallTimeout, GuestTrap, Sandbox, SandboxClosed, SandboxPool
from sandbox.pool import ensure_fd_limit

pytestmark = pytest.mark.requires_kvm


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_every_pool_call_runs_in_fresh_state() -> None:
    with SandboxPool(size=2) as pool:
        assert [pool.call("counter") for _ in range(5)] == [1] * 5
        pool.call("dirty_pages", 3)
        assert pool.call("heap_byte", 0) == 0


def test_trap_and_timeout_leave_the_pool_usable() -> None:
    with SandboxPool(size=1) as pool:
        with pytest.raises(GuestTrap):
            pool.call("fault", "null")
        assert pool.call("add", 1, 2) == 3
        with pytest.raises(CallTimeout):
            pool.call("fault", "spin_forever", timeout=0.05)
        assert pool.call("counter") == 1


def test_pool_from_many_threads_returns_every_result() -> None:
    calls = 10_000
    with SandboxPool(size=2) as pool:
        for _ in range(100):
            pool.call("add", 0, 0)
        drain()
        fds, rss = fd_count(), _rss()
        results: list[list[int]] = [[], []]

        def work(slot: int) -> None:
            for i in range(calls):
                results[slot].append(pool.call("add", i, slot))

        threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results[0] == list(range(calls))
        assert results[1] == [i + 1 for i in range(calls)]
        drain()
        assert fd_count() <= fds
        assert _rss() - rss < 8 << 20


def test_acall_from_asyncio() -> None:
    async def main(pool: SandboxPool) -> list[object]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        results = await asyncio.gather(*(pool.acall("add", i, i) for i in range(200)))
        slow = await pool.acall("spin", 20_000_000)
        task.cancel()
        assert ticks > 10  # the event loop kept running during the calls
        return [*results, slow]

    with SandboxPool(size=2) as pool:
        out = asyncio.run(main(pool))
    assert out[:200] == [2 * i for i in range(200)]


def test_pool_close_and_bad_size() -> None:
    pool = SandboxPool(size=1)
    pool.close()
    pool.close()
    with pytest.raises(SandboxClosed):
        pool.call("add", 1, 2)
    with pytest.raises(ArgumentError):
        SandboxPool(size=0)


def test_pool_from_snapshot() -> None:
    with Sandbox() as sb:
        sb.call("counter")
        snap = sb.snapshot()
    with SandboxPool(size=2, snapshot=snap) as pool:
        assert [pool.call("counter") for _ in range(3)] == [2, 2, 2]


def test_a_thousand_live_sandboxes() -> None:
    ensure_fd_limit(2 * 1000)
    with Sandbox() as base:
        base.call("add", 1, 2)
        snap = base.snapshot()
    drain()
    rss = _rss()
    boxes = [Sandbox.from_snapshot(snap) for _ in range(1000)]
    try:
        idle_per_box = (_rss() - rss) / 1000
        assert idle_per_box < 1 << 20, f"{idle_per_box / 1024:.0f} KiB per idle sandbox"
        assert sum(b.call("add", i, 1) for i, b in enumerate(boxes)) == sum(range(1, 1001))
        assert all(b.call("echo", "x") == "x" for b in boxes[::50])
    finally:
        for b in boxes:
            b.close()
    drain()
