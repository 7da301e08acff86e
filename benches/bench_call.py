"""Warm calls: one call into a sandbox that is already running, against one exit round
trip of the floor (KVM_RUN -> the guest's `out` -> back in user space, in C). A call is
one KVM_RUN and one exit, so the ratio is the runtime's own cost per call on top of the
exit: encoding the call record, the run loop, decoding the result, Python's call."""

from __future__ import annotations

import pytest

try:
    from sandbox import Sandbox
except ImportError as exc:  # the native extension is not built
    pytest.skip(f"cannot import sandbox ({exc}); see benches/README.md", allow_module_level=True)

THEME = "calls"
TARGET = 1.15  # a call is one exit; the runtime around it may add 15%


@pytest.fixture(scope="module")
def sb():
    with Sandbox() as sandbox:
        yield sandbox


@pytest.mark.parametrize(
    ("name", "args", "expected"), [("add", (1, 2), 3), ("noop", (), None)], ids=["add", "noop"]
)
def test_warm_call(bench, sb, name, args, expected):
    s = bench.settings
    result, m = bench.measure(
        sb.call,
        args=(name, *args),
        floor_value=lambda r: r["exit_roundtrip_us"],
        floor_args={"roundtrips": s.call_floor_roundtrips},
        rounds=s.call_rounds,
        warmup_rounds=s.warmup_rounds,
    )
    assert result == expected
    if m is not None:
        shown = ", ".join(map(str, args))
        bench.report_measurement(f"warm call: {name}({shown})", m, "exit_roundtrip_us", TARGET)
