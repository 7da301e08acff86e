"""The Python guest's tiers: the one module both run (build.py appends `call` to CPython's
module), what each tier's sandbox runs on, the address checks on each, and the API's
tier argument. Real CPython 3.12 for WASI in the real VM; the compiled guest as
conftest.py gets it (cached, or compiled by the first "aot" test)."""

from __future__ import annotations

import pytest
import wasmtime
from python_support import NO_WASM2C

from sandbox import ArgumentError, Sandbox, SandboxPool
from sandbox.python import PythonSandbox, interpreter, sandboxed
from sandbox.python.build import CALL_EXPORT, default_build, rewrite
from sandbox.wasm import aot

pytestmark = pytest.mark.requires_kvm


def square(x: int) -> int:
    return x * x


def test_the_rewritten_module_validates_and_exports_call() -> None:
    module = wasmtime.Module(wasmtime.Engine(), default_build().module)
    exports = {e.name: e.type for e in module.exports}
    call = exports[CALL_EXPORT]
    assert isinstance(call, wasmtime.FuncType)
    assert [str(p) for p in call.params] == ["i32"] * 4
    assert [str(r) for r in call.results] == ["i32"]
    assert "_start" in exports
    assert not any(e.name.startswith("__indirect") for e in module.exports)  # no table


def test_rewrite_refuses_what_is_not_the_builds_shape() -> None:
    with pytest.raises(ValueError, match="not a WebAssembly module"):
        rewrite(b"\0elf\x01\0\0\0")
    with pytest.raises(ValueError, match="shape"):
        rewrite(b"\0asm\x01\0\0\0")  # no sections at all
    with pytest.raises(ValueError, match="truncated"):
        rewrite(b"\0asm\x01\0\0\0\x01\x10\x00")


def test_each_tier_runs_on_its_engine_and_passes_the_address_checks(tier: str) -> None:
    with Sandbox("python", tier=tier) as sb:
        assert isinstance(sb, PythonSandbox)
        assert sb.tier == tier
        assert aot.is_native(sb.wasm_sandbox) == (tier == "aot")
        assert sb.call(square, 12) == 144
    tmpl = interpreter.template(interpreter.python_config(None), None, (), tier)  # type: ignore[arg-type]
    # The mailbox's pages are one run of guest memory on both (the host's fast path)
    assert tmpl.addresses.mailbox_guest is not None
    assert tmpl.tier == tier


@pytest.mark.skipif(NO_WASM2C, reason="the AOT tier needs wasm2c (wabt)")
def test_auto_takes_the_compiled_guest_once_it_is_cached() -> None:
    interpreter.guest("aot")  # cached (or compiled) by now: conftest's "aot" tests
    with Sandbox("python", tier="auto") as sb:
        assert isinstance(sb, PythonSandbox)
        assert sb.tier == "aot"


@pytest.mark.skipif(NO_WASM2C, reason="the AOT tier needs wasm2c (wabt)")
def test_pool_and_decorator_pass_the_tier_on() -> None:
    with SandboxPool("python", size=1, tier="aot") as pool:
        assert pool.call(square, 3) == 9
        assert pool.use(lambda sb: sb.tier) == "aot"

    @sandboxed(size=1, tier="aot")
    def cube(x: int) -> int:
        return x * x * x

    try:
        assert cube(3) == 27
        assert cube.pool().use(lambda sb: sb.tier) == "aot"
    finally:
        cube.close()


@pytest.mark.skipif(NO_WASM2C, reason="the AOT tier needs wasm2c (wabt)")
def test_a_snapshot_does_not_cross_tiers() -> None:
    with Sandbox("python", tier="interp") as engine, Sandbox("python", tier="aot") as native:
        assert isinstance(engine, PythonSandbox) and isinstance(native, PythonSandbox)
        for a, b in ((engine, native), (native, engine)):
            with pytest.raises(ArgumentError, match="another interpreter"):
                a.restore(b.snapshot())
            assert a.call(square, 5) == 25


def test_bad_tiers_are_argument_errors() -> None:
    with pytest.raises(ArgumentError, match="tier must be one of"):
        Sandbox("python", tier="jit")
    with pytest.raises(ArgumentError, match="tier must be one of"):
        sandboxed(tier="fast")
    with pytest.raises(ArgumentError, match="guest kind"):
        SandboxPool("no-such-guest.elf", tier="aot")
