"""Sandbox.from_wasm: Wasm modules run by the engine guest in the VM, through the Python
API: value conversion by signature, traps (which do not poison), imports bound to Python
callables, memory growth and its guard space, fresh state per call, snapshots, limits
and bad input. Modules are written in the text format and assembled by wasmtime."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from support import WASI_SLEEPER as SLEEPER

from sandbox import (
    ArgumentError,
    CallCancelled,
    CallTimeout,
    FunctionNotFound,
    HostFunctionError,
    Sandbox,
)
from sandbox.wasm import WasmLinkError, WasmModuleError, WasmSandbox, WasmTrap
from sandbox.wasm.module import BEYOND_WASM2

wasmtime = pytest.importorskip("wasmtime")
pytestmark = pytest.mark.requires_kvm

MODULE = """
(module
  (import "host" "double" (func $double (param i64) (result i64)))
  (memory (export "memory") 1 4)
  (global $counter (mut i32) (i32.const 0))
  (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
  (func (export "mix") (param i32 i64 f32 f64) (result f64 i64 i32)
    (f64.add (f64.promote_f32 (local.get 2)) (local.get 3))
    (i64.mul (local.get 1) (i64.const 2))
    (i32.sub (local.get 0) (i32.const 1)))
  (func (export "nothing"))
  (func (export "div") (param i32 i32) (result i32) (i32.div_s (local.get 0) (local.get 1)))
  (func (export "boom") unreachable)
  (func (export "load") (param i32) (result i32) (i32.load (local.get 0)))
  (func (export "store") (param i32 i32) (i32.store (local.get 0) (local.get 1)))
  (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))
  (func (export "size") (result i32) (memory.size))
  (func (export "bump") (result i32)
    (global.set $counter (i32.add (global.get $counter) (i32.const 1)))
    (global.get $counter))
  (func $recurse (export "recurse") (param i32) (result i32)
    (call $recurse (i32.add (local.get 0) (i32.const 1))))
  (func (export "spin") (loop (br 0)))
  (func (export "double") (param i64) (result i64) (call $double (local.get 0)))
  (func (export "trunc") (param f64) (result i32) (i32.trunc_f64_s (local.get 0)))
)
"""


def wat(text: str) -> bytes:
    return bytes(wasmtime.wat2wasm(text))


@pytest.fixture(scope="module")
def module_bytes() -> bytes:
    return wat(MODULE)


@pytest.fixture
def sb(module_bytes: bytes) -> Iterator[WasmSandbox]:
    with Sandbox.from_wasm(module_bytes, imports={"host": {"double": lambda x: 2 * x}}) as box:
        yield box


def test_calls_convert_values_by_signature(sb: WasmSandbox) -> None:
    assert isinstance(sb, Sandbox)
    assert sb.call("add", 1, 2) == 3
    assert sb.call("add", 2**31 - 1, 1) == -(2**31)  # i32 wraps; results are signed
    assert sb.call("add", 0xFFFFFFFF, 0) == -1  # unsigned inputs are accepted
    assert sb.call("mix", 5, 2**40, 1.5, 0.25) == (1.75, 2**41, 4)
    assert sb.call("nothing") is None
    assert sb.call("double", 21) == 42
    assert sb.call("trunc", -3.9) == -3


def test_wrong_arguments(sb: WasmSandbox) -> None:
    with pytest.raises(ArgumentError):
        sb.call("add", 1)
    with pytest.raises(ArgumentError):
        sb.call("add", 1, "2")
    with pytest.raises(ArgumentError):
        sb.call("add", 1, 2**32)
    with pytest.raises(ArgumentError):
        sb.call("mix", 1, 2, 3.0, "x")
    with pytest.raises(FunctionNotFound):
        sb.call("memory")
    assert sb.call("add", 1, 2) == 3


@pytest.mark.parametrize(
    ("name", "args", "kind", "text"),
    [
        ("div", (1, 0), "div_zero", "integer divide by zero"),
        ("div", (-(2**31), -1), "int_overflow", "integer overflow"),
        ("boom", (), "unreachable", "unreachable"),
        ("load", (65536,), "memory_oob", "out of bounds memory access"),
        ("load", (-1,), "memory_oob", "out of bounds memory access"),
        ("store", (65534, 1), "memory_oob", "out of bounds memory access"),
        ("recurse", (0,), "stack_exhausted", "call stack exhausted"),
        ("trunc", (math.nan,), "invalid_conversion", "invalid conversion to integer"),
        ("trunc", (3e9,), "int_overflow", "integer overflow"),
    ],
)
def test_traps_are_typed_and_do_not_poison(
    sb: WasmSandbox, name: str, args: tuple[Any, ...], kind: str, text: str
) -> None:
    sb.call("store", 8, 77)
    with pytest.raises(WasmTrap) as info:
        sb.call(name, *args)
    assert info.value.kind == kind and text in str(info.value)
    assert not sb.poisoned
    assert sb.call("load", 8) == 77  # state survives the trap, as in wasmtime
    assert sb.call("add", 2, 3) == 5


def test_memory_grows_and_its_end_stays_guarded(sb: WasmSandbox) -> None:
    assert sb.call("size") == 1
    assert sb.call("grow", 2) == 1
    assert sb.call("size") == 3
    sb.call("store", 3 * 65536 - 4, 9)
    assert sb.call("load", 3 * 65536 - 4) == 9
    with pytest.raises(WasmTrap):
        sb.call("load", 3 * 65536 - 3)
    assert sb.call("grow", 2) == -1  # over the module's maximum of 4
    assert sb.call("grow", 1) == 3


def test_import_errors(module_bytes: bytes) -> None:
    def fail(x: int) -> int:
        raise RuntimeError("no doubling today")

    with Sandbox.from_wasm(module_bytes, imports={"host": {"double": fail}}) as sb:
        with pytest.raises(HostFunctionError, match="no doubling today"):
            sb.call("double", 1)
        assert sb.call("add", 1, 1) == 2
    with pytest.raises(WasmLinkError, match="host.double"):
        Sandbox.from_wasm(module_bytes)
    bad = {"host": {"double": lambda x: "no"}}
    with Sandbox.from_wasm(module_bytes, imports=bad) as sb, pytest.raises(HostFunctionError):
        sb.call("double", 1)


def test_fresh_state_per_call(module_bytes: bytes) -> None:
    imports = {"host": {"double": lambda x: 2 * x}}
    with Sandbox.from_wasm(module_bytes, imports=imports, reset="per_call") as sb:
        assert [sb.call("bump") for _ in range(3)] == [1, 1, 1]
        assert sb.call("grow", 3) == 1
        assert sb.call("size") == 1  # the growth was taken back
        with pytest.raises(WasmTrap):
            sb.call("load", 65536)  # ... and its pages unmapped again
    with Sandbox.from_wasm(module_bytes, imports=imports) as sb:
        assert [sb.call("bump") for _ in range(3)] == [1, 2, 3]
        sb.restore()
        assert sb.call("bump") == 1


def test_snapshot_spawns_wasm_sandboxes(sb: WasmSandbox) -> None:
    sb.call("store", 0, 1234)
    sb.call("bump")
    snap = sb.snapshot()
    with Sandbox.from_snapshot(snap) as copy:
        assert isinstance(copy, WasmSandbox)
        assert copy.call("load", 0) == 1234 and copy.call("bump") == 2
        assert copy.call("double", 4) == 8
        copy.call("store", 0, 1)
    assert sb.call("load", 0) == 1234
    with pytest.raises(Exception, match="cannot be saved"):
        snap.save("/tmp/never-written.snap")


def test_timeout_then_restore(sb: WasmSandbox) -> None:
    # The message names the export called, not the engine's wasm_invoke.
    with pytest.raises(CallTimeout, match=r"^spin did not finish within 0\.05 s$"):
        sb.call("spin", timeout=0.05)
    assert sb.poisoned
    sb.restore()
    assert sb.call("add", 1, 2) == 3


COUNTDOWN = """(module
  (func (export "spin") (loop (br 0)))
  (func (export "countdown") (param i32) (result i32)
    (loop (local.set 0 (i32.sub (local.get 0) (i32.const 1))) (br_if 0 (local.get 0)))
    (i32.const 7)))"""


def test_a_cancel_does_not_reach_the_next_call() -> None:
    """Restored and called again at once, while cancel() may still be kicking: the
    next call (a few ms of work) neither times out nor is cancelled."""
    with Sandbox.from_wasm(wasmtime.wat2wasm(COUNTDOWN)) as sb:
        for _ in range(3):
            timer = threading.Timer(0.05, sb.cancel)
            timer.start()
            with pytest.raises(CallCancelled, match=r"^spin was cancelled$"):
                sb.call("spin", timeout=30)
            sb.restore()
            assert sb.call("countdown", 3_000_000) == 7
            assert not sb.poisoned
            timer.join()


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"", "malformed"),
        (b"\0asm", "malformed"),
        (b"\0asm\1\0\0\0\1\5", "malformed"),  # truncated section
        (b"garbage garbage garbage", "malformed"),
        (wat("(module (func (result i32) (i64.const 0)))"), "invalid"),
        (wat("(module (func (result v128) (i32.const 0)))"), "invalid"),
    ],
    ids=["empty", "header-only-magic", "truncated", "garbage", "type-mismatch", "v128-mismatch"],
)
def test_bad_modules(data: bytes, kind: str) -> None:
    with pytest.raises(WasmModuleError) as info:
        Sandbox.from_wasm(data)
    assert info.value.kind == kind


@pytest.mark.parametrize(
    "text",
    [
        # Exception handling (exnref) is supported now (tests/wasm/test_wasm_eh.py); the
        # legacy proposal's opcodes are not (wasmtime's legacy_exceptions stays off).
        "(module (func (result i32) (return_call 0)))",
        "(module (memory i64 1))",
        "(module (type (struct (field i32))))",
        bytes.fromhex("0061736d01000000010401600000030201000a07010500064" + "00b0b"),
    ],
    ids=["tail-call", "memory64", "gc", "legacy-exceptions"],
)
def test_later_proposals_are_refused_as_this_runtimes_limit(text: str | bytes) -> None:
    with pytest.raises(WasmModuleError) as info:
        Sandbox.from_wasm(wat(text) if isinstance(text, str) else text)
    assert info.value.kind == "invalid"
    assert BEYOND_WASM2 in str(info.value)


def test_an_invalid_module_is_not_blamed_on_the_runtime() -> None:
    with pytest.raises(WasmModuleError) as info:
        Sandbox.from_wasm(wat("(module (func (result i32) (i64.const 0)))"))
    assert BEYOND_WASM2 not in str(info.value)


def test_oversized_module_is_refused_before_reading(tmp_path: Any) -> None:
    big = tmp_path / "big.wasm"
    with open(big, "wb") as f:
        f.truncate(300 << 20)
    with pytest.raises(WasmModuleError) as info:
        Sandbox.from_wasm(big)
    assert info.value.kind == "too_large"


def test_module_exhausting_memory() -> None:
    data = wat(
        """(module (memory 1) (func (export "grab") (result i32)
             (memory.grow (i32.const 60000))))"""
    )
    with Sandbox.from_wasm(data) as sb:
        assert sb.call("grab") == -1  # the pool of linear memory is smaller
    with pytest.raises(WasmTrap):
        Sandbox.from_wasm(wat('(module (memory 1) (data (i32.const 70000) "x"))'))


def test_call_timeout_ends_a_wasi_sleep() -> None:
    """A WASI sleep runs on the host, outside KVM_RUN: the call's limit must end it."""
    import time

    with Sandbox.from_wasm(wat(SLEEPER)) as sb:
        t0 = time.monotonic()
        try:
            assert sb.call("nap", timeout=0.2) == 27  # EINTR, returned by the guest
        except CallTimeout:
            pass
        assert time.monotonic() - t0 < 2.0


def test_cancel_ends_a_wasi_sleep() -> None:
    """cancel() ends a WASI sleep at once (it runs on the host, where no vCPU kick
    reaches it); a cancel while no call runs does not cut the next call's sleep short."""
    import threading
    import time

    from sandbox import CallCancelled

    with Sandbox.from_wasm(wat(SLEEPER)) as sb:
        errors: list[BaseException] = []

        def nap() -> None:
            try:
                sb.call("nap", timeout=30)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=nap)
        t0 = time.monotonic()
        thread.start()
        time.sleep(0.3)
        sb.cancel()
        thread.join(10)
        assert time.monotonic() - t0 < 3.0
        assert len(errors) == 1 and isinstance(errors[0], CallCancelled)
        assert str(errors[0]) == "nap was cancelled"
        sb.restore()
        sb.cancel()  # no call running: nothing to stop
        t0 = time.monotonic()
        try:
            sb.call("nap", timeout=0.5)
        except CallTimeout:
            pass
        assert time.monotonic() - t0 >= 0.4


def test_wrong_argument_types_to_from_wasm(module_bytes: bytes) -> None:
    for kwargs in ({"wasi": {"args": []}}, {"imports": ["host"]}, {"reset": "always"}):
        with pytest.raises(ArgumentError):
            Sandbox.from_wasm(module_bytes, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ArgumentError):
        Sandbox.from_wasm(12)  # type: ignore[arg-type]
