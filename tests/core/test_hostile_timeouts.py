"""Extreme time limits: a limit must be a finite number of seconds, > 0 and at most one
day (86400 s). Anything else is refused with a typed error before anything runs
(ArgumentError, also a ValueError/TypeError, from call(); pydantic's ValidationError from
SandboxConfig), and the sandbox is not poisoned: the next call works. A tiny limit such
as 1e-300 is valid and simply times out at once.

Issue 11: timeout=float("inf") or 1e10 raised OverflowError from inside the run loop and
left the sandbox poisoned without running anything."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError

from sandbox import ArgumentError, CallTimeout, Sandbox, SandboxConfig, SandboxPool

pytestmark = pytest.mark.requires_kvm

MAX_TIMEOUT = 86400.0
BAD = [
    pytest.param(float("inf"), id="inf"),
    pytest.param(float("-inf"), id="-inf"),
    pytest.param(float("nan"), id="nan"),
    pytest.param(1e10, id="1e10"),
    pytest.param(MAX_TIMEOUT + 0.5, id="just-over-a-day"),
    pytest.param(10**400, id="huge-int"),
    pytest.param(-1, id="-1"),
    pytest.param(0, id="0"),
    pytest.param(0.0, id="0.0"),
    pytest.param(-0.0, id="-0.0"),
    pytest.param(True, id="True"),
    pytest.param(False, id="False"),
    pytest.param("1", id="str"),
    pytest.param(b"1", id="bytes"),
    pytest.param([1], id="list"),
    pytest.param(1 + 0j, id="complex"),
]
GOOD = [pytest.param(MAX_TIMEOUT, id="a-day"), pytest.param(0.5, id="0.5"), pytest.param(3, id="3")]


def refused(call: Callable[[], Any]) -> ArgumentError:
    with pytest.raises(ArgumentError) as info:
        call()
    assert isinstance(info.value, (ValueError, TypeError))
    return info.value


@pytest.mark.parametrize("timeout", BAD)
def test_call_refuses_a_bad_timeout_and_stays_usable(sb: Sandbox, timeout: object) -> None:
    refused(lambda: sb.call("add", 1, 2, timeout=timeout))  # type: ignore[arg-type]
    assert not sb.poisoned
    assert sb.call("add", 1, 2) == 3


@pytest.mark.parametrize("timeout", GOOD)
def test_call_accepts_a_good_timeout(sb: Sandbox, timeout: float) -> None:
    assert sb.call("add", 1, 2, timeout=timeout) == 3


def test_tiny_timeout_times_out_at_once(sb: Sandbox) -> None:
    with pytest.raises(CallTimeout):
        sb.call("spin", 10**12, timeout=1e-300)
    assert sb.poisoned  # a real timeout: the guest stopped mid-call
    sb.restore()
    assert sb.call("add", 1, 2) == 3


@pytest.mark.parametrize("timeout", BAD)
def test_config_refuses_a_bad_timeout(timeout: object) -> None:
    with pytest.raises(ValidationError):
        SandboxConfig(timeout=timeout)


@pytest.mark.parametrize("timeout", [*GOOD, pytest.param(1e-300, id="1e-300")])
def test_config_accepts_a_good_timeout(timeout: float) -> None:
    assert SandboxConfig(timeout=timeout).timeout == timeout


def test_config_at_the_limits_works() -> None:
    with Sandbox(config=SandboxConfig(timeout=MAX_TIMEOUT)) as sb:
        assert sb.call("add", 1, 2) == 3
    with Sandbox(config=SandboxConfig(timeout=1e-300)) as sb:
        with pytest.raises(CallTimeout):
            sb.call("spin", 10**12)
        sb.restore()
        assert sb.call("add", 1, 2, timeout=5) == 3


SOME_BAD = [p for p in BAD if p.id in {"inf", "1e10", "nan", "huge-int", "-1", "True", "str"}]


@pytest.mark.parametrize("timeout", SOME_BAD)
def test_pool_refuses_a_bad_timeout_and_stays_usable(timeout: object) -> None:
    with SandboxPool(size=1) as pool:
        refused(lambda: pool.call("add", 1, 2, timeout=timeout))  # type: ignore[arg-type]
        assert pool.call("add", 1, 2) == 3


WASI_MODULE = """
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
)
"""
PLAIN_MODULE = """
(module
  (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
)
"""


@pytest.mark.parametrize("module", ["plain", "wasi"])
@pytest.mark.parametrize("timeout", SOME_BAD)
def test_wasm_call_refuses_a_bad_timeout_and_stays_usable(module: str, timeout: object) -> None:
    wasmtime = pytest.importorskip("wasmtime")
    text = WASI_MODULE if module == "wasi" else PLAIN_MODULE
    with Sandbox.from_wasm(bytes(wasmtime.wat2wasm(text))) as sb:
        refused(lambda: sb.call("add", 1, 2, timeout=timeout))
        assert not sb.poisoned
        assert sb.call("add", 1, 2) == 3
