"""Guest compute: spin(n) in the guest against the same loop compiled with gcc -O2 and
run natively on the host by the floor program, with the same n. Guest code runs in ring
3 at native speed, so the ratio should be ~1 (the call itself, ~0.1 ms, is noise next to
~75 ms of loop). Both sides must also compute the same value."""

from __future__ import annotations

import pytest

try:
    from sandbox import Sandbox
except ImportError as exc:  # the native extension is not built
    pytest.skip(f"cannot import sandbox ({exc}); see benches/README.md", allow_module_level=True)

THEME = "compute"
TARGET = 1.1


@pytest.fixture(scope="module")
def sb():
    with Sandbox() as sandbox:
        yield sandbox


def test_spin(bench, sb):
    n = bench.settings.spin_n
    result, m = bench.measure(
        sb.call,
        args=("spin", n),
        floor_value=lambda r: r["host_spin_us"],
        floor_args={"spin_n": n},
        rounds=bench.settings.spin_rounds,
        warmup_rounds=1,
    )
    if m is None:
        return
    host = {run["spin_result"] for run in m.floor_runs}
    assert host == {result}, f"guest spin({n}) = {result}, the host loop gives {host}"
    bench.report_measurement(f"spin({n:_}) in the guest", m, "host_spin_us (same n)", TARGET)
