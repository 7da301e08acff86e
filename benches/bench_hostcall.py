"""Host calls: the guest calling back into Python in the middle of a call.

`call_host("echo", "x")` costs two exits (the host call, then the return), so it is
compared with two floor round trips. The increment of one host call is call_host("echo",
"x") minus the guest's own echo("x") (a call with the same strings and no host call),
compared with one floor round trip. The two are timed alternately on the same sandbox:
echo("x") in the untimed setup of every call_host round, so both see the same machine."""

from __future__ import annotations

import statistics
import time

import pytest

try:
    from sandbox import Sandbox
except ImportError as exc:  # the native extension is not built
    pytest.skip(f"cannot import sandbox ({exc}); see benches/README.md", allow_module_level=True)

THEME = "calls"
TARGET = 1.5


@pytest.fixture(scope="module")
def sb():
    with Sandbox(host_functions={"echo": lambda s: s}) as sandbox:
        yield sandbox


def test_host_call(bench, sb):
    s = bench.settings
    plain: list[float] = []  # us of echo("x"), one per round

    def time_plain_echo() -> None:
        t0 = time.perf_counter()
        sb.call("echo", "x")
        plain.append((time.perf_counter() - t0) * 1e6)

    result, m = bench.measure(
        sb.call,
        args=("call_host", "echo", "x"),
        setup=time_plain_echo,
        floor_value=lambda r: r["exit_roundtrip_us"],
        floor_args={"roundtrips": s.call_floor_roundtrips},
        rounds=s.call_rounds,
        warmup_rounds=s.warmup_rounds,
    )
    assert result == "x"
    if m is None:
        return
    trip = m.floor_us
    plain_us = statistics.median(plain[s.warmup_rounds : s.warmup_rounds + s.call_rounds])
    bench.benchmark.extra_info["plain_echo_us"] = round(plain_us, 2)
    bench.report(
        "host call: call_host('echo', 'x')",
        m.ours_us,
        2 * trip,
        "2 x exit_roundtrip_us",
        TARGET,
        m.floor_spread,
        readings=[2 * r for r in m.floor_readings_us],
    )
    bench.report(
        "host call increment (call_host - echo)",
        m.ours_us - plain_us,
        trip,
        "exit_roundtrip_us",
        TARGET,
        m.floor_spread,
        key="increment",
        readings=m.floor_readings_us,
    )
