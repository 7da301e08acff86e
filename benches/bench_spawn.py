"""Cold spawn: `Sandbox()` to the result of its first call, against the floor's
create-to-first-exit (create VM, memory, vCPU, long-mode registers, run to the first
exit, in C with no runtime around it).

"Cold" means a new VM, not a new process: the process has already created sandboxes
(warmup rounds), so per-process one-offs (opening /dev/kvm, loading and caching the
guest image) are not in it. Closing the sandbox and waiting for its background teardown
happen outside the timed part, so no teardown overlaps the next spawn.
"""

from __future__ import annotations

from typing import Any

from conftest import measure, report_measurement
from sandbox import Sandbox, _reaper

TARGET = 1.5


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


def test_spawn_to_first_call(benchmark, floor, settings, report):
    result, m = measure(
        benchmark,
        floor,
        settings,
        _spawn_and_call,
        floor_value=lambda r: r["create_to_first_exit_us"],
        floor_args={"iterations": settings.spawn_floor_iterations},
        rounds=settings.spawn_rounds,
        warmup_rounds=settings.spawn_warmup_rounds,
        setup=_new_holder,
        teardown=_close,
    )
    assert result == 3
    if m is not None:
        report_measurement(
            report, "spawn: Sandbox() -> add(1, 2)", m, "create_to_first_exit_us", TARGET
        )
