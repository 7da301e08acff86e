"""Host calls: the guest calling back into Python in the middle of a call.

`call_host("echo", "x")` costs two exits (the host call, then the return), so it is
compared with two floor round trips. The increment of one host call is measured as
call_host("echo", "x") minus the guest's own echo("x") (same argument sizes, no host
call), timed alternately round by round on the same sandbox (the echo call is timed in
the untimed setup of each call_host round), and compared with one floor round trip."""

from __future__ import annotations

import statistics
import time

import pytest

from conftest import measure, report_measurement
from sandbox import Sandbox

TARGET = 1.5


@pytest.fixture(scope="module")
def sb():
    with Sandbox(host_functions={"echo": lambda s: s}) as sandbox:
        yield sandbox


def test_host_call(benchmark, floor, settings, report, sb):
    plain: list[float] = []  # us of echo("x") without a host call, one per round

    def time_plain_echo() -> None:
        t0 = time.perf_counter()
        sb.call("echo", "x")
        plain.append((time.perf_counter() - t0) * 1e6)

    result, m = measure(
        benchmark,
        floor,
        settings,
        sb.call,
        args=("call_host", "echo", "x"),
        setup=time_plain_echo,
        floor_value=lambda r: r["exit_roundtrip_us"],
        floor_args={"roundtrips": settings.call_floor_roundtrips},
        rounds=settings.call_rounds,
        warmup_rounds=settings.warmup_rounds,
    )
    assert result == "x"
    if m is None:
        return
    trip = m.floor_us
    plain_us = statistics.median(plain[settings.warmup_rounds :])
    benchmark.extra_info["plain_echo_us"] = round(plain_us, 2)
    report(
        "host call: call_host('echo', 'x')",
        m.ours_us,
        2 * trip,
        "2 x exit_roundtrip_us",
        TARGET,
        m.floor_spread,
    )
    report(
        "host call increment (call_host - echo)",
        m.ours_us - plain_us,
        trip,
        "exit_roundtrip_us",
        TARGET,
        m.floor_spread,
        key="increment",
    )
