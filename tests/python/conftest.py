"""Fixtures of the Python-guest tests. The interpreter starts once per machine and tier
(about a second, then read from the disk cache: sandbox.python.tcache) and is kept per
process (sandbox.python.interpreter); each test's sandbox is spawned from that snapshot
in milliseconds.

Every test that takes `tier` (or `sb`) runs on both tiers: the Wasm engine ("interp")
and CPython compiled to native code ("aot", sandbox.wasm.aot). The compiled guest comes
from the disk cache (~/.cache/kvm-sandbox/wasm-aot); where it is not there yet, the
first "aot" test compiles it (about 4 minutes on two cores, once per machine and
toolchain), so CI runs these tests for real. Without wasm2c they are skipped, with that
reason (the AOT tier needs it: apt-get install wabt)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from python_support import NO_WASM2C

from sandbox import Sandbox
from sandbox.python import PythonSandbox

TIERS = [
    "interp",
    pytest.param(
        "aot",
        marks=pytest.mark.skipif(NO_WASM2C, reason="the AOT tier needs wasm2c (wabt)"),
    ),
]


@pytest.fixture(params=TIERS)
def tier(request: pytest.FixtureRequest) -> str:
    assert isinstance(request.param, str)
    return request.param


@pytest.fixture
def sb(tier: str) -> Iterator[PythonSandbox]:
    with Sandbox("python", tier=tier) as s:
        assert isinstance(s, PythonSandbox)
        assert s.tier == tier
        yield s
