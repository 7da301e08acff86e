"""`FunctionPool` (sandbox/host/pool.py) on its own: fresh state per call, calls whose
caller was cancelled, the worker threads, closing."""

from __future__ import annotations

import asyncio
import time

import pytest

from sandbox import Sandbox
from sandbox.host.pool import FunctionPool

pytestmark = pytest.mark.requires_kvm


def _pool(max_size: int = 2, warm: int = 1) -> FunctionPool:
    return FunctionPool(
        lambda: Sandbox(reset="per_call"), max_size=max_size, warm=warm, max_queue=8
    )


def test_every_call_in_fresh_state_and_threads_as_needed() -> None:
    async def main() -> None:
        pool = _pool(max_size=3)
        await pool.fill()
        for _ in range(5):
            outcome = await pool.call("counter", [], timeout=5, wait=5)
            assert (outcome.value, outcome.error) == (1, None)
        results = await asyncio.gather(
            *(pool.call("add", [i, 1], timeout=5, wait=5) for i in range(10))
        )
        assert [r.value for r in results] == [i + 1 for i in range(10)]
        threads = list(pool._threads)
        assert 1 <= len(threads) <= 3  # one per job running at once
        assert (pool.size, pool.busy, pool.queued) == (3, 0, 0)
        await pool.close()
        for thread in threads:
            thread.join(5)
            assert not thread.is_alive()

    asyncio.run(main())


def test_a_cancelled_caller_gets_its_sandbox_back_when_the_call_ends() -> None:
    async def main() -> None:
        pool = _pool(max_size=1)
        await pool.fill()
        t0 = time.perf_counter()
        await pool.call("spin", [3_000_000], timeout=5, wait=5)
        spin_s = time.perf_counter() - t0
        n = int(3_000_000 * 0.2 / max(spin_s, 1e-3))  # a call of ~200 ms
        task = asyncio.create_task(pool.call("spin", [n], timeout=5, wait=5))
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.busy == 1  # still running in its thread
        # The next caller waits for the same sandbox, which comes back fresh.
        outcome = await pool.call("counter", [], timeout=5, wait=5)
        assert (outcome.value, outcome.error) == (1, None)
        assert (pool.size, pool.idle, pool.busy) == (1, 1, 0)
        assert len(pool._threads) == 1
        await pool.close()

    asyncio.run(main())


def test_close_refuses_new_calls_and_closes_idle_sandboxes() -> None:
    async def main() -> None:
        pool = _pool()
        await pool.fill()
        await pool.close()
        assert pool.closed and pool.size == 0
        from sandbox.host.pool import PoolClosed

        with pytest.raises(PoolClosed):
            await pool.call("add", [1, 2], timeout=5, wait=5)

    asyncio.run(main())
