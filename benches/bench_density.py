"""Memory and density: what an idle sandbox costs in resident memory, and how fast 1,000
sandboxes come up from one snapshot and how much memory they hold once all are alive,
against the density floor (benches/floor/density_floor.c: the floor's VMs, created and
run to their first exit one after the other, all held at once).

Resident memory is this process's RSS (/proc/self/statm) before and after creating the
sandboxes: guest pages the sandboxes touched (copy-on-write copies of the snapshot's
pages and their host page tables), the kvm_run pages and our Python objects. Kernel
memory of the VMs (KVM's own structures, the hypervisor's shadow page tables) is not in
it, for the floor as for us.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

try:
    from sandbox import Sandbox, _reaper
    from sandbox.pool import ensure_fd_limit
except ImportError as exc:  # the native extension is not built
    pytest.skip(f"cannot import sandbox ({exc}); see benches/README.md", allow_module_level=True)

THEME = "density"
FDS_PER_SANDBOX = 4  # a VM, its vCPU (two descriptors here), and headroom


@pytest.fixture(scope="module")
def snap():
    with Sandbox() as sb:
        sb.call("add", 1, 2)
        yield sb.snapshot()


def _rss_kib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024


def _close_all(holder: list[Sandbox]) -> None:
    while holder:
        holder.pop().close()
    _reaper.drain()


def test_density(bench, snap):
    """Create density_n sandboxes from one snapshot, each answering add(1, 2) (so each
    is known to run, as each floor VM has run to its first exit), all held at once."""
    s = bench.settings
    n = s.density_n
    ensure_fd_limit(FDS_PER_SANDBOX * n)
    holder: list[Sandbox] = []
    rss_before: list[float] = []
    rss_growth: list[float] = []

    def setup() -> None:
        rss_before.append(_rss_kib())

    def create_all() -> int:
        ok = 0
        for _ in range(n):
            sb = Sandbox.from_snapshot(snap)
            holder.append(sb)
            ok += sb.call("add", 1, 2) == 3
        return ok

    def teardown(*_: Any) -> None:
        rss_growth.append(_rss_kib() - rss_before[-1])
        _close_all(holder)

    ok, m = bench.measure(
        create_all,
        setup=setup,
        teardown=teardown,
        floor_run=bench.floor.density,
        floor_args={"n": n},
        floor_value=lambda r: r["create_all_us"],
        rounds=s.density_rounds,
        warmup_rounds=0,
    )
    _close_all(holder)  # already done, except under --benchmark-disable (no teardown)
    assert ok == n
    if m is None:
        return
    bench.report_measurement(
        f"create {n:,} from one snapshot, each answering add(1, 2)",
        m,
        f"density_floor: {n:,} floor VMs created and run to their first exit",
        2.0,
    )
    # The largest growth over the rounds: a later round can reuse memory that Python
    # kept from an earlier one, which would understate it.
    floor_rss = [float(r["rss_growth_kib"]) for r in m.floor_runs]
    floor_rss.sort()
    bench.report(
        f"RSS growth with {n:,} sandboxes alive",
        max(rss_growth),
        floor_rss[len(floor_rss) // 2],
        f"density_floor: RSS growth with {n:,} floor VMs alive",
        None,  # a reference point: the budget below is the target
        (floor_rss[-1] - floor_rss[0]) / max(floor_rss[len(floor_rss) // 2], 1.0),
        key="rss",
        readings=floor_rss,
        unit="KiB",
    )
    bench.report(
        f"RSS per sandbox with {n:,} alive, each called once (pages it touched included)",
        max(rss_growth) / n,
        1024.0,
        "1 MiB per sandbox beyond the pages its guest touched",
        1.0,
        key="rss_per_sandbox",
        unit="KiB",
        kind="budget",
    )


def test_rss_per_idle_sandbox(bench_nofloor, snap):
    """RSS growth per sandbox made from one snapshot and never called, against a budget
    of 1 MiB per idle sandbox."""
    n = bench_nofloor.settings.idle_n
    ensure_fd_limit(FDS_PER_SANDBOX * n)
    holder: list[Sandbox] = []
    rss: list[float] = []

    def setup() -> None:
        _reaper.drain()
        rss.append(_rss_kib())

    def create_all() -> None:
        holder.extend(Sandbox.from_snapshot(snap) for _ in range(n))

    def teardown(*_: Any) -> None:
        rss.append(_rss_kib())
        _close_all(holder)

    bench_nofloor.benchmark.pedantic(create_all, setup=setup, teardown=teardown, rounds=1)
    if bench_nofloor.benchmark.stats is None:  # --benchmark-disable: no teardown ran
        _close_all(holder)
        return
    per_sandbox_kib = (rss[1] - rss[0]) / n
    bench_nofloor.report(
        f"memory per idle sandbox (RSS growth / {n:,}, from one snapshot, never called)",
        per_sandbox_kib,
        1024.0,
        "1 MiB per idle sandbox",
        1.0,
        unit="KiB",
        kind="budget",
    )
