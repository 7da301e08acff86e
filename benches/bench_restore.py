"""Snapshot and restore: restore + call against one exit of the floor; restore of a big
sandbox against a small one (restore must cost what was written, not the memory size);
a new sandbox from a snapshot to its first result against the floor's create-to-first-
exit plus 0.2 ms; the pool's per-call time from one and two threads; RSS per idle
sandbox made from one snapshot."""

from __future__ import annotations

import os
import statistics
import threading
import time
from typing import Any

import pytest

try:
    from sandbox import Sandbox, SandboxConfig, SandboxPool, _reaper
except ImportError as exc:  # the native extension is not built
    pytest.skip(f"cannot import sandbox ({exc}); see benches/README.md", allow_module_level=True)

MiB = 1 << 20
DIRTY_PAGES = 8


@pytest.fixture(scope="module")
def snapped():
    with Sandbox() as sb:
        sb.call("add", 1, 2)
        yield sb, sb.snapshot()


def test_restore_and_call(bench, snapped):
    sb, snap = snapped
    s = bench.settings

    def restore_and_add() -> Any:
        sb.restore(snap)
        return sb.call("add", 1, 2)

    result, m = bench.measure(
        restore_and_add,
        floor_value=lambda r: r["exit_roundtrip_us"],
        floor_args={"roundtrips": s.call_floor_roundtrips},
        rounds=s.call_rounds,
        warmup_rounds=s.warmup_rounds,
    )
    assert result == 3
    if m is not None:
        bench.report_measurement("restore + add(1, 2)", m, "exit_roundtrip_us", 2.0)


def _restore_times(sb: Sandbox, snap: Any, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        sb.call("dirty_pages", DIRTY_PAGES)
        t0 = time.perf_counter()
        sb.restore(snap)
        times.append(time.perf_counter() - t0)
    return times


def test_restore_cost_independent_of_memory_size(bench):
    s = bench.settings
    rounds = max(200, s.call_rounds // 5)
    small = Sandbox(config=SandboxConfig(memory_size=2 * MiB, stack_size=64 << 10,
                                         input_buffer_size=64 << 10, output_buffer_size=64 << 10))
    big = Sandbox(config=SandboxConfig(memory_size=256 * MiB))
    try:
        snaps = {}
        for sb in (small, big):
            sb.call("dirty_pages", DIRTY_PAGES)
            snaps[id(sb)] = sb.snapshot()
        small_times: list[float] = []
        big_times: list[float] = []
        for _ in range(5):  # interleaved, so both see the same machine
            small_times += _restore_times(small, snaps[id(small)], rounds // 5)
            big_times += _restore_times(big, snaps[id(big)], rounds // 5)
        assert big.call("heap_byte", 0) == 1  # the snapshot's own dirty page survives
        small_us = statistics.median(small_times) * 1e6
        big_us = statistics.median(big_times) * 1e6
        bench.benchmark.pedantic(big.restore, args=(snaps[id(big)],), rounds=1, iterations=1)
        bench.report(
            f"restore 256 MiB vs 2 MiB ({DIRTY_PAGES} pages dirty)",
            big_us, small_us, "restore of a 2 MiB sandbox", 1.3,
        )
    finally:
        small.close()
        big.close()


def test_from_snapshot_to_first_result(bench, snapped):
    _, snap = snapped
    s = bench.settings
    holder: list[Sandbox] = []

    def spawn() -> Any:
        sb = Sandbox.from_snapshot(snap)
        holder.append(sb)
        return sb.call("add", 1, 2)

    def close(*_: Any) -> None:
        while holder:
            holder.pop().close()
        _reaper.drain()

    result, m = bench.measure(
        spawn,
        teardown=close,
        floor_value=lambda r: r["create_to_first_exit_us"] + 200.0,
        floor_args={"iterations": s.spawn_floor_iterations},
        rounds=s.spawn_rounds,
        warmup_rounds=s.spawn_warmup_rounds,
    )
    assert result == 3
    if m is not None:
        bench.report_measurement(
            "Sandbox.from_snapshot -> add(1, 2)", m, "create_to_first_exit_us + 200", 1.0
        )


@pytest.mark.parametrize("threads", [1, 2])
def test_pool_call(bench, threads):
    s = bench.settings
    calls = max(1000, s.call_rounds)
    with SandboxPool(size=threads) as pool:
        for _ in range(50):
            pool.call("add", 1, 2)

        def work() -> None:
            for i in range(calls // threads):
                assert pool.call("add", i, 1) == i + 1

        floor_before = bench.floor.run(roundtrips=s.call_floor_roundtrips)
        # The suite pins itself to one CPU for stable ratios; threads need them all.
        pinned = os.sched_getaffinity(0)
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
        t0 = time.perf_counter()
        workers = [threading.Thread(target=work) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        per_call = (time.perf_counter() - t0) / calls * 1e6
        os.sched_setaffinity(0, pinned)
        floor_after = bench.floor.run(roundtrips=s.call_floor_roundtrips)
    floor = statistics.median(
        [floor_before["exit_roundtrip_us"], floor_after["exit_roundtrip_us"]]
    )
    bench.benchmark.extra_info["calls_per_second"] = 1e6 / per_call
    bench.benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    bench.report(
        f"pool.call, {threads} thread(s): us per call ({1e6 / per_call:,.0f} calls/s)",
        per_call, floor, "exit_roundtrip_us", 2.0,
    )


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_rss_per_idle_sandbox(bench, snapped):
    _, snap = snapped
    n = 100 if bench.settings.quick else 500
    _reaper.drain()
    before = _rss()
    t0 = time.perf_counter()
    sandboxes = [Sandbox.from_snapshot(snap) for _ in range(n)]
    create_s = time.perf_counter() - t0
    per_sandbox_kib = (_rss() - before) / n / 1024
    for sb in sandboxes:
        sb.close()
    _reaper.drain()
    bench.benchmark.extra_info["create_seconds"] = create_s
    bench.benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    bench.report(
        f"RSS per idle sandbox, KiB ({n} from one snapshot, {create_s:.2f} s to create)",
        per_sandbox_kib, 1024.0, "1 MiB budget", 1.0,
    )
