"""Guest compute: spin(n) in the guest, against the same loop compiled with -O2 and
run natively on the host by the floor program with the same n. Guest code runs in ring 3
at native speed, so the ratio should be ~1; the call's own cost (~0.1 ms) is noise
against ~75 ms of loop. Both sides must also compute the same value."""

from __future__ import annotations

import pytest

from conftest import measure, report_measurement
from sandbox import Sandbox

TARGET = 1.1


@pytest.fixture(scope="module")
def sb():
    with Sandbox() as sandbox:
        yield sandbox


def test_spin(benchmark, floor, settings, report, sb):
    n = settings.spin_n
    result, m = measure(
        benchmark,
        floor,
        settings,
        sb.call,
        args=("spin", n),
        floor_value=lambda r: r["host_spin_us"],
        floor_args={"spin_n": n},
        rounds=settings.spin_rounds,
        warmup_rounds=1,
    )
    if m is None:
        return
    expected = {run["spin_result"] for run in m.floor_runs}
    assert expected == {result}, f"guest spin({n}) = {result}, host loop = {expected}"
    report_measurement(report, f"spin({n:_}) in the guest", m, "host_spin_us (same n)", TARGET)
