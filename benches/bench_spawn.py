"""Cold spawn: `Sandbox()` to the result of its first call, against the floor's
create-to-first-exit (create VM, memory, vCPU, long-mode registers, run to the first
exit, in C with no runtime around it).

Three rows: with a new VM every time (machine reuse off: the KVM work the floor does, plus
ours); with every sandbox kept open, each taking the spare VM made in the background
after the previous spawn (sandbox/machines.py); and as an application that closes and
makes sandboxes gets it, where the closed sandbox's VM is reset and reused. The process
has already created sandboxes (the warmup rounds), so per-process one-offs (opening
/dev/kvm, loading the guest image into its cached template) are in none of them.
Closing the sandbox and waiting for its background teardown, parking or spare happen
outside the timed part.
"""

from __future__ import annotations

import statistics
from typing import Any

import pytest

try:
    from sandbox import Sandbox, _reaper, machines
except ImportError as exc:  # the native extension is not built
    pytest.skip(f"cannot import sandbox ({exc}); see benches/README.md", allow_module_level=True)

THEME = "spawn"
TARGET = 1.3


def _spawn_and_call(holder: list[Sandbox]) -> Any:
    sb = Sandbox()
    holder.append(sb)
    return sb.call("add", 1, 2)


def _new_holder() -> tuple[tuple[list[Sandbox]], dict[str, Any]]:
    return ([],), {}


def _close(holder: list[Sandbox]) -> None:
    for sb in holder:
        sb.close()
    _reaper.drain()


SPARE_ROUNDS = 200  # sandboxes held open at once in the "spare" row


@pytest.mark.parametrize("vm", ["new", "spare", "reused"])
def test_spawn_to_first_call(bench, vm, monkeypatch):
    s = bench.settings
    rounds, teardown = s.spawn_rounds, _close
    if vm == "new":
        monkeypatch.setattr(machines, "MAX_IDLE", 0)
        machines.release_idle()
    kept: list[Sandbox] = []
    if vm == "spare":  # sandboxes stay open: each takes the spare made in the background
        rounds = min(rounds, SPARE_ROUNDS)

        def teardown(holder: list[Sandbox]) -> None:
            kept.extend(holder)
            _reaper.drain()  # the next spare is ready (untimed)

    try:
        result, m = bench.measure(
            _spawn_and_call,
            setup=_new_holder,
            teardown=teardown,
            floor_value=lambda r: r["create_to_first_exit_us"],
            floor_args={"iterations": s.spawn_floor_iterations},
            rounds=rounds,
            warmup_rounds=s.spawn_warmup_rounds,
        )
    finally:
        _close(kept)
    assert result == 3
    if m is not None:
        bench.report_measurement(
            f"spawn: Sandbox() -> add(1, 2), a {vm} VM", m, "create_to_first_exit_us", TARGET
        )


@pytest.mark.filterwarnings("ignore:Benchmark fixture was not used")
def test_floor_in_this_process(bench):
    """The floor's own C code (benches/floor/inprocess_floor.c) run inside this Python
    process, against the same code in a process of its own: what the embedding process
    costs every new VM, whoever makes it. KVM_CREATE_VM locks each mapping of the
    process (mm_take_all_locks, for its MMU notifier), and a Python process with this
    suite's imports has hundreds of them where the floor program has a few dozen. Not a
    target: it is the part of the new-VM rows above that no runtime living in this
    process can avoid. Readings alternate between the two, median of each."""
    s = bench.settings
    inside: list[float] = []
    runs: list[dict[str, Any]] = []
    bench.floor.in_this_process(5)  # the library loaded and /dev/kvm opened, untimed
    for _ in range(s.floor_readings):
        runs.append(bench.floor.run(iterations=s.spawn_floor_iterations))
        inside.append(bench.floor.in_this_process(s.spawn_floor_iterations))
    own = [r["create_to_first_exit_us"] for r in runs]
    floor = statistics.median(own)
    assert floor > 0 and all(t > 0 for t in inside)
    bench.report(
        "the floor's create -> first exit, run inside this Python process",
        statistics.median(inside),
        floor,
        "create_to_first_exit_us (its own process)",
        None,
        (max(own) - min(own)) / floor,
        readings=own,
    )
