"""SandboxPool (fresh state per call, threads, asyncio, traps, close) and density: a
thousand live sandboxes from one snapshot."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from support import drain, fd_count

from sandbox import (
    ArgumentError,
    CallCancelled,
    CallTimeout,
    GuestTrap,
    Sandbox,
    SandboxClosed,
    SandboxPool,
)
from sandbox.errors import PoolFull, PoolTimeout
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


# -- asyncio, elastic sizing, per-call output, cancel at shutdown (what the function host
# uses; these were tests/host/test_host_pool.py, of the host's own pool, which this
# pool replaced) ----------------------------------------------------------------------


def _elastic(max_size: int = 2, warm: int = 1, max_queue: int = 8) -> SandboxPool[Sandbox]:
    return SandboxPool(
        factory=lambda: Sandbox(reset="per_call"),
        size=warm,
        max_size=max_size,
        max_queue=max_queue,
        create=False,
    )


def test_every_call_in_fresh_state_and_threads_as_needed() -> None:
    async def main() -> None:
        pool = _elastic(max_size=3)
        await pool.fill()
        assert pool.members == 1
        for _ in range(5):
            outcome = await pool.acall_outcome("counter", timeout=5, wait=5)
            assert (outcome.value, outcome.error) == (1, None)
        results = await asyncio.gather(
            *(pool.acall_outcome("add", i, 1, timeout=5, wait=5) for i in range(10))
        )
        assert [r.value for r in results] == [i + 1 for i in range(10)]
        threads = [t for t in threading.enumerate() if t.name.startswith("sandbox-pool_")]
        assert 1 <= pool.threads <= 3  # one per job running at once
        assert (pool.members, pool.busy, pool.queued) == (3, 0, 0)
        pool.close()
        for thread in threads:
            thread.join(5)
            assert not thread.is_alive()

    asyncio.run(main())


def test_a_cancelled_caller_gets_its_sandbox_back_when_the_call_ends() -> None:
    async def main() -> None:
        pool = _elastic(max_size=1)
        await pool.fill()
        t0 = time.perf_counter()
        await pool.acall("spin", 3_000_000, timeout=5)
        spin_s = time.perf_counter() - t0
        n = int(3_000_000 * 0.2 / max(spin_s, 1e-3))  # a call of ~200 ms
        task = asyncio.create_task(pool.acall_outcome("spin", n, timeout=5, wait=5))
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.busy == 1  # still running in its thread
        # The next caller waits for the same sandbox, which comes back fresh.
        outcome = await pool.acall_outcome("counter", timeout=5, wait=5)
        assert (outcome.value, outcome.error) == (1, None)
        assert (pool.members, pool.idle, pool.busy) == (1, 1, 0)
        assert pool.threads == 1
        pool.close()

    asyncio.run(main())


def test_close_refuses_new_calls_and_closes_idle_sandboxes() -> None:
    async def main() -> None:
        pool = _elastic()
        await pool.fill()
        pool.close()
        assert pool.closed and pool.members == 0
        with pytest.raises(SandboxClosed):
            await pool.acall_outcome("add", 1, 2, timeout=5, wait=5)

    asyncio.run(main())


def test_queue_bound_wait_limit_and_per_call_output() -> None:
    async def main() -> None:
        pool = _elastic(max_size=1, warm=1, max_queue=1)
        await pool.fill()
        running = asyncio.create_task(pool.acall_outcome("fault", "spin_forever", timeout=0.5))
        await asyncio.sleep(0.05)
        queued = asyncio.create_task(pool.acall_outcome("add", 1, 2, timeout=5, wait=5))
        await asyncio.sleep(0.01)
        assert pool.queued == 1
        with pytest.raises(PoolFull):
            await pool.acall_outcome("add", 1, 2, timeout=5, wait=5)
        assert isinstance((await running).error, CallTimeout)  # restored for the next
        assert (await queued).value == 3
        hello = await pool.acall_outcome("hello", "pool", timeout=5)
        assert (hello.value, hello.output) == ("Hello, pool!", "guest says: Hello, pool!\n")
        again = await pool.acall_outcome("add", 2, 2, timeout=5)
        assert again.output == ""  # each call's own output
        blocker = asyncio.create_task(pool.acall_outcome("fault", "spin_forever", timeout=0.5))
        await asyncio.sleep(0.05)
        with pytest.raises(PoolTimeout):
            await pool.acall_outcome("add", 1, 2, timeout=5, wait=0.05)
        await blocker
        pool.close()

    asyncio.run(main())


def test_grows_with_load_and_shrinks_when_idle() -> None:
    async def main() -> None:
        pool = _elastic(max_size=3, warm=1)
        await pool.fill()
        await asyncio.gather(*(pool.acall("spin", 2_000_000, timeout=5) for _ in range(6)))
        assert pool.members == 3
        assert pool.shrink(0.0) == 2 and pool.members == 1
        pool.close()

    asyncio.run(main())


def test_close_with_cancel_stops_running_calls() -> None:
    async def main() -> None:
        pool = _elastic(max_size=1)
        await pool.fill()
        task = asyncio.create_task(pool.acall_outcome("fault", "spin_forever", timeout=30))
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        await asyncio.to_thread(pool.close, cancel=True)
        outcome = await task
        assert isinstance(outcome.error, CallCancelled)
        assert time.monotonic() - t0 < 2

    asyncio.run(main())
