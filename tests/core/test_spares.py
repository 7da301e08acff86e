"""Spare machines (sandbox/machines.py): made on the background thread after a spawn,
taken by the next spawn of the same snapshot, and never a way for what ran on a machine
before (a warm job, hostile or not) to reach the sandbox that takes it."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from support import drain

from sandbox import CallTimeout, GuestTrap, Sandbox, SandboxConfig, Snapshot, _reaper, machines

pytestmark = pytest.mark.requires_kvm


@pytest.fixture
def snap() -> Iterator[Snapshot]:
    with Sandbox() as sb:
        sb.call("counter")
        taken = sb.snapshot()
    drain()  # no idle machine: the tests count them
    yield taken
    drain()


def test_a_spawn_leaves_a_spare_that_the_next_spawn_takes(snap: Snapshot) -> None:
    first = Sandbox.from_snapshot(snap)
    _reaper.drain()
    assert machines.idle_count() == 1  # the spare
    second = Sandbox.from_snapshot(snap)  # takes it...
    assert machines.idle_count() == 0
    _reaper.drain()
    assert machines.idle_count() == 1  # ...and orders the next
    assert first.call("counter") == second.call("counter") == 2
    first.close()
    second.close()


@pytest.mark.parametrize("setting", ["SPARES", "MAX_IDLE"])
def test_no_spare_when_turned_off(
    snap: Snapshot, setting: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(machines, setting, 0)
    with Sandbox.from_snapshot(snap):
        _reaper.drain()
        assert machines.idle_count() == 0


def test_a_hostile_warm_job_leaves_nothing_to_the_sandbox_on_its_spare(
    snap: Snapshot,
) -> None:
    """The warm job runs guest code on the spare before it is parked: counters, MXCSR, a
    vector register left by a trap, dirtied heap pages and a call stopped mid-way must
    all be gone for the sandbox that takes the spare."""
    ran: list[str] = []

    def hostile() -> None:
        sb = Sandbox.from_snapshot(snap)
        for _ in range(5):
            sb.call("counter")
        sb.call("set_mxcsr", 0x1F80 ^ 0x6000)  # round toward zero
        sb.call("dirty_pages", 64)
        with pytest.raises(GuestTrap):
            sb.call("set_xmm15_then_trap", 0x5EC12E7)
        sb.restore()  # the trap poisoned the sandbox: restore, then stop a call
        sb.call("counter")
        with pytest.raises(CallTimeout):
            sb.call("spin", 1 << 60, timeout=0.05)
        sb.close()
        ran.append("hostile")

    machines.warm_spares_with(snap.image, hostile)
    with Sandbox.from_snapshot(snap) as reference:
        _reaper.drain()
        assert ran == ["hostile"] and machines.idle_count() == 1
        with Sandbox.from_snapshot(snap) as taker:
            assert machines.idle_count() == 0  # it runs on the spare
            for sb in (reference, taker):
                assert sb.call("get_xmm15") == 0
                assert sb.call("get_mxcsr") == 0x1F80
                assert sb.call("heap_byte", 3) == 0
                assert sb.call("counter") == 2
                assert sb.call("add", 2, 3) == 5


def test_a_failing_warm_job_means_no_spare_and_nothing_else(snap: Snapshot) -> None:
    def broken() -> None:
        raise RuntimeError("warm job failed")

    machines.warm_spares_with(snap.image, broken)
    with Sandbox.from_snapshot(snap) as sb:
        _reaper.drain()
        assert machines.idle_count() == 0
        assert sb.call("counter") == 2
    with Sandbox.from_snapshot(snap) as sb:  # and spawning goes on as before
        assert sb.call("counter") == 2


def test_a_full_pool_of_other_machines_makes_room_for_the_spare(
    snap: Snapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parking into a full pool replaces the machine idle the longest: a pool full of
    another snapshot's machines must not make each spare be built and thrown away."""
    monkeypatch.setattr(machines, "MAX_IDLE", 3)
    bigger = SandboxConfig(memory_size=2 * SandboxConfig().memory_size)
    with Sandbox(config=bigger) as other:  # another layout: no spawn below can take them
        other_snap = other.snapshot()
    others = [Sandbox.from_snapshot(other_snap) for _ in range(3)]
    for sb in others:
        sb.close()
    _reaper.drain()
    assert machines.idle_count() == 3  # full of the other snapshot's machines
    with Sandbox.from_snapshot(snap) as first:  # a new VM; its spare replaces the oldest
        _reaper.drain()
        assert machines.idle_count() == 3
        with Sandbox.from_snapshot(snap) as second:
            assert machines.idle_count() == 2  # it took the spare: it had been kept
            assert first.call("counter") == second.call("counter") == 2


def _busy(sb: Sandbox, seconds: float) -> int:
    """Calls `sb` back to back for `seconds`; how many calls ran."""
    calls = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sb.call("counter")
        calls += 1
    return calls


def test_a_spare_is_made_only_while_the_process_is_quiet(
    snap: Snapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Made beside the caller's calls, a spare competes with them (on a 2-CPU machine a
    Python sandbox's first call took 3x as long in a third of the spawns): the spares
    thread waits until no run has begun for QUIET_SECONDS (longer here than by default,
    so that a loaded machine's scheduling gaps in the loop do not count as quiet)."""
    monkeypatch.setattr(machines, "QUIET_SECONDS", 0.05)
    with Sandbox.from_snapshot(snap) as busy, Sandbox.from_snapshot(snap):  # orders one
        assert _busy(busy, 0.3) > 100
        assert machines.idle_count() == 0  # not made while the calls ran
        _reaper.drain()
        assert machines.idle_count() == 1  # made once they stopped


def test_a_spare_that_finds_no_quiet_moment_is_not_made(
    snap: Snapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(machines, "QUIET_SECONDS", 0.05)  # see the test above
    monkeypatch.setattr(machines, "QUIET_WAIT_MAX", 0.2)
    with Sandbox.from_snapshot(snap) as busy, Sandbox.from_snapshot(snap):
        _busy(busy, 0.6)
        _reaper.drain()
        assert machines.idle_count() == 0  # the order was dropped...
        with Sandbox.from_snapshot(snap):  # ...and the next spawn orders again
            _reaper.drain()
            assert machines.idle_count() == 1
