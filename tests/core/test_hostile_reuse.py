"""Hostile guests vs. the next caller: CPU state a guest leaves behind must not reach the
call after a reset, nor the sandbox that takes over its machine (sandbox/machines.py:
a closed sandbox's VM is parked and loaded for the next sandbox, of the same snapshot
or of another one).

guests/testing/reuse.c plants x87, SSE, AVX and AVX-512 state and ends its call every
way a call can end (its own `out` with single-stepping armed, in a MOV SS interrupt
shadow, a trap, a timeout, a host call that escapes); the next call's view of the CPU
at entry must be what a fresh sandbox's first call sees.

Where ring 3 can use AVX although the vCPU reports no XSAVE (PVM hosts run guest ring 3
with the host's XCR0), a restore through FXRSTOR alone left the ymm/zmm registers and
the opmasks to the next caller: the restore trampoline now resets every component ring 3
can reach (trampoline.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from support import GUESTS, drain

from sandbox import (
    CallTimeout,
    GuestTrap,
    Sandbox,
    SandboxPool,
    Snapshot,
    _reaper,
    machines,
)

pytestmark = pytest.mark.requires_kvm

PLANT_AVX, PLANT_AVX512, SINGLE_STEP, SHADOW = 1, 2, 4, 8
EXIT_TRAP, EXIT_SPIN, EXIT_HOST = 16, 32, 64


class Escape(BaseException):
    """Raised by the host function: leaves call() while the guest waits in its `out`."""


def boom(value: int) -> int:
    raise Escape


# how the planting call ends -> (mode bits, what call() raises, time limit)
ENDS: dict[str, tuple[int, type[BaseException] | None, float]] = {
    "return": (0, None, 10.0),
    "single_step": (SINGLE_STEP, None, 10.0),
    "shadow": (SHADOW, None, 10.0),
    "single_step_in_shadow": (SINGLE_STEP | SHADOW, None, 10.0),
    "trap": (EXIT_TRAP, GuestTrap, 10.0),
    "timeout": (EXIT_SPIN, CallTimeout, 0.05),
    "host_call_escapes": (EXIT_HOST, Escape, 10.0),
}
PATHS = ["restore", "restore_snapshot", "per_call", "pool", "reuse_same", "reuse_other"]


@pytest.fixture(scope="module")
def reuse_guest(guest_build: ModuleType, guest_dir: Path) -> Path:
    return guest_build.build_guest([GUESTS / "testing" / "reuse.c"], guest_dir / "reuse.elf")


@pytest.fixture
def no_spares(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No machine idle and none made in the background: a test knows which machine the
    next sandbox gets."""
    drain()
    monkeypatch.setattr(machines, "SPARES", False)
    yield
    drain()


@pytest.fixture(scope="module")
def snapshots(reuse_guest: Path) -> dict[str, Snapshot]:
    """ "a": the guest's start; "b": after a call changed its memory (another image)."""
    with Sandbox(reuse_guest) as sb:
        a = sb.snapshot()
        sb.call("bump")
        return {"a": a, "b": sb.snapshot()}


def probes_of(sb: Sandbox) -> list[str]:
    """The probe functions this host can run (AVX and AVX-512 may be #UD in ring 3)."""
    names = ["probe_legacy"]
    for name in ("probe_avx", "probe_avx512"):
        try:
            sb.call(name, timeout=10)
        except GuestTrap as trap:
            assert trap.kind == "invalid_opcode", trap
            sb.restore()
            continue
        names.append(name)
    return names


@pytest.fixture(scope="module")
def reference(snapshots: dict[str, Snapshot]) -> dict[str, dict[str, Any]]:
    """What the first call of a fresh sandbox of each snapshot sees, on a new machine."""
    drain()
    out: dict[str, dict[str, Any]] = {}
    for key, snap in snapshots.items():
        with Sandbox.from_snapshot(snap) as sb:
            names = probes_of(sb)
        out[key] = {}
        for name in names:
            drain()
            with Sandbox.from_snapshot(snap) as sb:
                out[key][name] = sb.call(name, timeout=10)
    drain()
    return out


def plant_mode(names: list[str], end: str) -> int:
    mode = ENDS[end][0]
    if "probe_avx" in names:
        mode |= PLANT_AVX
    if "probe_avx512" in names:
        mode |= PLANT_AVX512
    return mode


def plant(call: Callable[..., Any], names: list[str], end: str) -> None:
    _, raises, limit = ENDS[end]
    mode = plant_mode(names, end)
    if raises is None:
        assert call("plant", 0x5EC12E7, mode, timeout=limit) is None
    else:
        with pytest.raises(raises):
            call("plant", 0x5EC12E7, mode, timeout=limit)


def differences(got: dict[str, Any], want: dict[str, Any]) -> list[str]:
    return [name for name in want if got[name] != want[name]]


@pytest.mark.parametrize("end", ENDS)
@pytest.mark.parametrize("path", PATHS)
def test_planted_cpu_state_never_reaches_the_next_caller(
    snapshots: dict[str, Snapshot],
    reference: dict[str, dict[str, Any]],
    no_spares: None,
    path: str,
    end: str,
) -> None:
    snap = snapshots["a"]
    names = list(reference["a"])
    functions = {"boom": boom}
    with ExitStack() as stack:
        if path == "pool":
            pool = stack.enter_context(SandboxPool(snapshot=snap, size=1, host_functions=functions))
            plant(pool.call, names, end)
            seen = {name: pool.call(name, timeout=10) for name in names}
            assert pool.call("ok", timeout=10) == 42
            assert differences(seen, reference["a"]) == []
            return
        reset = "per_call" if path == "per_call" else "none"
        sb = stack.enter_context(Sandbox.from_snapshot(snap, host_functions=functions, reset=reset))
        plant(sb.call, names, end)
        want = reference["a"]
        if path == "restore":
            sb.restore()
        elif path == "restore_snapshot":
            sb.restore(snapshots["b"])
            want = reference["b"]
        elif path.startswith("reuse"):
            sb.close()
            _reaper.drain()
            assert machines.idle_count() == 1  # the hostile sandbox's machine, parked
            key = "a" if path == "reuse_same" else "b"
            sb = stack.enter_context(Sandbox.from_snapshot(snapshots[key]))
            assert machines.idle_count() == 0  # ...taken by the new sandbox
            want = reference[key]
        seen = {}
        for name in names:
            seen[name] = sb.call(name, timeout=10)
            if path != "per_call":
                sb.restore(snapshots["b"] if path == "restore_snapshot" else None)
        assert sb.call("ok", timeout=10) == 42
        assert differences(seen, want) == []
        for name in names:
            assert seen[name] == want[name], name


def test_a_single_step_completed_by_the_host_does_not_reach_the_next_owner(
    snapshots: dict[str, Snapshot], reference: dict[str, dict[str, Any]], no_spares: None
) -> None:
    """The guest returns with RFLAGS.TF set; the host then reads its registers, which
    completes the `out` and makes KVM queue a single-step #DB. The sandbox that takes
    the machine over must not get that #DB (nor TF)."""
    names = list(reference["a"])
    sb = Sandbox.from_snapshot(snapshots["a"])
    plant(sb.call, names, "single_step")
    assert sb.cpu_state().regs.rflags & 0x100  # TF: the guest's own state, kept
    sb.close()
    _reaper.drain()
    assert machines.idle_count() == 1
    with Sandbox.from_snapshot(snapshots["b"]) as other:
        assert machines.idle_count() == 0
        assert other.call("ok", timeout=10) == 42
        other.restore()
        seen = {}
        for name in names:
            seen[name] = other.call(name, timeout=10)
            other.restore()
        assert differences(seen, reference["b"]) == []


def test_a_guest_run_changes_no_page_a_reset_skips(
    snapshots: dict[str, Snapshot], reference: dict[str, dict[str, Any]]
) -> None:
    """A reset leaves the stable pages alone (page tables, descriptor tables, read-only
    image: Layout.stable_ranges), on the promise that nothing writes them. Ring 3 cannot
    (test_faults), and the CPU itself would only write accessed/dirty bits of page-table
    entries and descriptors, which the runtime builds already set: after calls that touch
    the stack, data, heap and output buffer, load a segment register and trap through the
    ring-0 stub, every stable page still equals the image."""
    names = list(reference["a"])
    with Sandbox.from_snapshot(snapshots["a"], host_functions={"boom": boom}) as sb:
        for end in ("shadow", "trap"):  # MOV SS loads a descriptor; the trap uses the IDT
            plant(sb.call, names, end)
            memory, layout = sb.memory, sb.layout
            stable = layout.stable_ranges(memory.image.read)
            assert stable
            changed = [
                hex(a)
                for a, n in stable
                if bytes(memory.view[a : a + n]) != memory.image.read(a, n)
            ]
            assert changed == []
            sb.restore()
