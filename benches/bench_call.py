"""Warm calls: one call into a sandbox that is already running, against one exit round
trip of the floor (KVM_RUN -> guest `out` -> back to user space, in C). A call is one
KVM_RUN and one exit, so the ratio is the runtime's own overhead per call: encoding the
call record, the run loop, decoding the result, Python's call machinery."""

from __future__ import annotations

import pytest

from conftest import measure, report_measurement
from sandbox import Sandbox

TARGET = 1.5


@pytest.fixture(scope="module")
def sb():
    with Sandbox() as sandbox:
        yield sandbox


@pytest.mark.parametrize(
    ("name", "args", "expected"),
    [("add", (1, 2), 3), ("noop", (), None)],
    ids=["add", "noop"],
)
def test_warm_call(benchmark, floor, settings, report, sb, name, args, expected):
    result, m = measure(
        benchmark,
        floor,
        settings,
        sb.call,
        args=(name, *args),
        floor_value=lambda r: r["exit_roundtrip_us"],
        floor_args={"roundtrips": settings.call_floor_roundtrips},
        rounds=settings.call_rounds,
        warmup_rounds=settings.warmup_rounds,
    )
    assert result == expected
    if m is not None:
        shown = ", ".join(map(str, args))
        report_measurement(
            report, f"warm call: {name}({shown})", m, "exit_roundtrip_us", TARGET
        )
