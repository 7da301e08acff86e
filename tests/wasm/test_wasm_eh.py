"""Wasm exception handling (Wasm 3.0 with exnref: tags, throw, throw_ref, try_table) in the
engine guest (guests/wasm/eh.c), beyond what the Wasm 2.0 spec suite covers: every call
runs in the VM and under wasmtime (exceptions on) and must agree; values of every kind
through catch, catch_ref + throw_ref, catch_all(_ref), nested try_tables, exceptions
crossing direct, indirect and many frames, catches landing on block, loop and function
labels, exnref in locals, globals, tables and inside other exceptions, tags linked
between modules, uncaught exceptions at the host boundary, host errors not catchable, and
a million throws in bounded memory. Hostile modules get a typed refusal, from wasmtime's
validation and from the engine's own decoder."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from sandbox import HostFunctionError, Sandbox
from sandbox.config import MiB, SandboxConfig
from sandbox.errors import ArgumentError
from sandbox.wasm import WasmLinkError, WasmModuleError, WasmSandbox, WasmTrap
from sandbox.wasm.module import WasmModule, load

wasmtime = pytest.importorskip("wasmtime")
pytestmark = pytest.mark.requires_kvm

EH_PROGRAMS = Path(__file__).parent / "programs" / "eh"

MAIN = (EH_PROGRAMS / "main.wat").read_text()

# (export, args): each call's result or error must be the same in the VM and wasmtime;
# in this order (stash before rethrow_saved: state carries over).
CALLS: list[tuple[str, tuple[Any, ...]]] = [
    ("catch_param", (7,)),
    ("catch_param", (-3,)),
    ("catch_pair", (-12,)),
    ("catch_v128", (40,)),
    ("rethrow", (5,)),
    ("catch_all", (0,)),
    ("catch_all", (1,)),
    ("catch_all", (2,)),  # undefined element: a trap, not an exception
    ("catch_all_ref", (6,)),
    ("nested", (1,)),
    ("nested", (0,)),
    ("deep", (1000,)),
    ("deep", (3000,)),
    ("deep", (1000000,)),  # the call stack runs out: a trap either way
    ("through_mid", (500,)),
    ("indirect", (0, 33)),
    ("indirect", (1, 33)),  # $pair: not caught by catch $t
    ("trap_not_caught", ()),
    ("host_call", (4,)),
    ("to_func", (8,)),
    ("to_loop", (10,)),
    ("is_null", (0,)),
    ("rethrow_saved", (1,)),  # null global: throw_ref traps
    ("stash", (77,)),
    ("is_null", (0,)),
    ("rethrow_saved", (0,)),
    ("rethrow_saved", (1,)),
    ("throw_null", ()),
    ("in_exn", (9,)),
    ("uncaught", (3,)),
    ("catch_param", (1,)),  # still usable after an uncaught exception
    ("loop", (1000,)),
    ("loop_ref", (1000,)),
]


def wat(text: str) -> bytes:
    return bytes(wasmtime.wat2wasm(text))


@pytest.mark.parametrize("name", ["main", "lib", "user", "fuzz"])
def test_programs_are_valid(name: str) -> None:
    """The .wat files (the fuzzers' seeds too) are valid modules: wasmtime.wat2wasm
    does not validate, and the fuzzers drop seeds that wasmtime refuses."""
    load(wat((EH_PROGRAMS / f"{name}.wat").read_text()))


def cb(x: int) -> int:
    if x < 0:
        raise ValueError("host says no")
    return x * 2


def wasmtime_engine() -> Any:
    config = wasmtime.Config()
    config.wasm_exceptions = True
    return wasmtime.Engine(config)


def outcome_wasmtime(fn: Any, store: Any, args: tuple[Any, ...]) -> tuple[str, Any]:
    try:
        result = fn(store, *args)
    except wasmtime.Trap as trap:
        text = str(trap)
        return ("exception" if "thrown Wasm exception" in text else "trap", None)
    except wasmtime.WasmtimeError as err:  # a host function's error
        return ("host_error", str(err)[:40])
    return ("ok", list(result) if isinstance(result, list) else result)


def outcome_vm(sb: Sandbox, name: str, args: tuple[Any, ...]) -> tuple[str, Any]:
    try:
        result = sb.call(name, *args)
    except WasmTrap as trap:
        if trap.kind == "uncaught_exception":
            assert "thrown Wasm exception" in str(trap)
            return ("exception", None)
        return ("trap", None)
    except HostFunctionError as err:
        return ("host_error", str(err)[:40])
    return ("ok", list(result) if isinstance(result, tuple) else result)


def test_calls_match_wasmtime() -> None:
    data = wat(MAIN)
    engine = wasmtime_engine()
    store = wasmtime.Store(engine)
    i32 = wasmtime.ValType.i32()
    host = wasmtime.Func(store, wasmtime.FuncType([i32], [i32]), cb)
    inst = wasmtime.Instance(store, wasmtime.Module(engine, data), [host])
    exports = inst.exports(store)
    with Sandbox.from_wasm(data, imports={"host": {"cb": cb}}) as sb:
        for name, args in CALLS:
            theirs = outcome_wasmtime(exports[name], store, args)
            ours = outcome_vm(sb, name, args)
            assert ours[0] == theirs[0], (name, args, ours, theirs)
            if ours[0] == "ok":
                assert ours == theirs, (name, args)
        assert sb.call("catch_pair", 5) == (5, 5.0)
        assert sb.call("deep", 10000) == 99
        assert sb.call("to_loop", 10) == 45
        assert sb.call("rethrow_saved", 0) == 77


def test_host_errors_are_not_exceptions() -> None:
    """A host import that raises ends the call with HostFunctionError (wasmtime: its
    error), whatever try_table surrounds the import; a host import that returns is fine."""
    with Sandbox.from_wasm(wat(MAIN), imports={"host": {"cb": cb}}) as sb:
        assert sb.call("host_call", 21) == 42
        with pytest.raises(HostFunctionError, match="host says no"):
            sb.call("host_call", -1)
        assert sb.call("catch_param", 2) == 2


def test_million_throws_in_bounded_memory() -> None:
    """A million exceptions, each caught (freed at once) or caught by reference and kept
    in a global (collected): both finish in an engine heap far smaller than a million
    exception objects, and the engine's value stack stays where it was."""
    config = SandboxConfig(memory_size=64 * MiB, heap_size=24 * MiB)
    n = 1_000_000
    expected = (n * (n + 1) // 2) & 0xFFFFFFFF
    signed = expected - (1 << 32) if expected >= 1 << 31 else expected
    with Sandbox.from_wasm(wat(MAIN), imports={"host": {"cb": cb}}, config=config) as sb:
        assert sb.call("loop", n, timeout=120) == signed
        assert sb.call("loop_ref", n, timeout=120) == signed
        assert sb.call("loop_ref", n, timeout=120) == signed
        assert sb.call("deep", 10000) == 99  # the call stack is whole again


def test_exnref_at_the_host_boundary() -> None:
    """exnref arguments can only be null (None); results come back None when null. (wasmtime's
    Python binding aborts the process on exnref values, so this is the VM alone.)"""
    module = """
    (module
      (tag $t (param i32))
      (global $g (mut exnref) (ref.null exn))
      (func (export "is_null") (param exnref) (result i32) (ref.is_null (local.get 0)))
      (func (export "get") (result exnref) (global.get $g))
      (func (export "keep")
        (block $h (result exnref)
          (try_table (catch_all_ref $h) (throw $t (i32.const 1)))
          (unreachable))
        (global.set $g)))
    """
    with Sandbox.from_wasm(wat(module)) as sb:
        assert sb.call("is_null", None) == 1
        assert sb.call("get") is None
        sb.call("keep")
        assert sb.call("get") is not None  # an opaque handle
        with pytest.raises(ArgumentError, match="exnref"):
            sb.call("is_null", 5)


LIB = (EH_PROGRAMS / "lib.wat").read_text()
USER = (EH_PROGRAMS / "user.wat").read_text()


def test_tags_link_between_modules() -> None:
    """An imported tag is the exporter's tag: exceptions match across modules (both
    ways, through imported functions and tables); a tag of the same type is another tag."""
    lib_bytes, user_bytes = wat(LIB), wat(USER)
    engine = wasmtime_engine()
    store = wasmtime.Store(engine)
    lib = wasmtime.Instance(store, wasmtime.Module(engine, lib_bytes), [])
    le = lib.exports(store)
    user = wasmtime.Instance(
        store,
        wasmtime.Module(engine, user_bytes),
        [le["t"], le["throw"], le["catch"], le["fns"]],
    )
    ue = user.exports(store)
    calls = [("catch_lib", (4,)), ("own_not_lib", (4,)), ("lib_catches_mine", (5,))]
    with WasmSandbox.engine() as sb:
        h, m = sb.load(lib_bytes)
        lib_inst = sb.instantiate(h, m)
        sb.register(lib_inst, "lib")
        h, m = sb.load(user_bytes)
        user_inst = sb.instantiate(h, m)
        for name, args in calls:
            theirs = outcome_wasmtime(ue[name], store, args)
            try:
                ours: tuple[str, Any] = ("ok", sb.invoke(user_inst, name, [(0x7F, args[0])]))
            except WasmTrap as trap:
                ours = ("exception" if trap.kind == "uncaught_exception" else "trap", None)
            assert ours[0] == theirs[0], (name, ours, theirs)
            if ours[0] == "ok":
                assert ours[1][0][1] == theirs[1], name
        # A tag import from the host (not a registered module) is a link error.
        with pytest.raises(WasmLinkError, match="tag"):
            h, m = sb.load(wat('(module (import "elsewhere" "t" (tag (param i32))))'))
            sb.instantiate(h, m)
    assert sb.closed


HOSTILE_WAT = [
    # catch clause type mismatches and bad labels/tags (the text parser accepts them)
    "(module (tag $t (param i32)) (func (block $h (result i64)"
    " (try_table (catch $t $h)) (i64.const 0)) drop))",
    "(module (tag $t (param i32)) (func (block $h (try_table (catch_ref $t $h)))))",
    "(module (func (block $h (result i32) (try_table (catch_all_ref $h)) (i32.const 0)) drop))",
    "(module (tag $t (param i32)) (func (try_table (catch $t 5))))",
    "(module (func (throw 3)))",
    "(module (func (throw_ref (i32.const 0))))",
    "(module (tag (param i32) (result i32)))",
]


@pytest.mark.parametrize("text", HOSTILE_WAT)
def test_invalid_exception_code_is_refused(text: str) -> None:
    try:
        data = wat(text)
    except wasmtime.WasmtimeError:
        pytest.skip("the text parser refuses it already")
    with pytest.raises(WasmModuleError) as err:
        Sandbox.from_wasm(data)
    assert err.value.kind in ("invalid", "malformed")


def _module(*sections: tuple[int, bytes]) -> bytes:
    out = bytearray(b"\0asm\1\0\0\0")
    for sid, body in sections:
        out += bytes([sid, len(body)]) + body
    return bytes(out)


TYPE_I32 = (1, bytes([1, 0x60, 1, 0x7F, 0]))  # (func (param i32))
FUNC0 = (3, bytes([1, 0]))


def _code(*body: int) -> tuple[int, bytes]:
    b = bytes([0, *body, 0x0B])
    return (10, bytes([1, len(b)]) + b)


RAW = {
    # tag attribute 1, tag type out of range, truncated tag section, tag after global
    "tag attribute": _module(TYPE_I32, (13, bytes([1, 1, 0]))),
    "tag type index": _module(TYPE_I32, (13, bytes([1, 0, 9]))),
    "truncated tags": _module(TYPE_I32, (13, bytes([3, 0, 0]))),
    "tag section order": _module(TYPE_I32, (6, bytes([0])), (13, bytes([1, 0, 0]))),
    "throw unknown tag": _module(TYPE_I32, FUNC0, (13, bytes([1, 0, 0])), _code(0x41, 0, 0x08, 4)),
    "catch unknown tag": _module(
        TYPE_I32, FUNC0, (13, bytes([1, 0, 0])), _code(0x1F, 0x40, 1, 0, 7, 0, 0x0B)
    ),
    "catch bad kind": _module(TYPE_I32, FUNC0, _code(0x1F, 0x40, 1, 9, 0, 0x0B)),
    "catch bad label": _module(TYPE_I32, FUNC0, _code(0x1F, 0x40, 1, 2, 5, 0x0B)),
    "catch arity": _module(
        TYPE_I32, FUNC0, (13, bytes([1, 0, 0])), _code(0x1F, 0x40, 1, 0, 0, 0, 0x0B)
    ),
    "legacy try": _module(TYPE_I32, FUNC0, _code(0x06, 0x40, 0x0B)),
    "legacy rethrow": _module(TYPE_I32, FUNC0, _code(0x09, 0)),
    "exnref table call_indirect": _module(
        TYPE_I32, FUNC0, (4, bytes([1, 0x69, 0, 1])), _code(0x41, 0, 0x41, 0, 0x11, 0, 0)
    ),
}


@pytest.mark.parametrize("name", sorted(RAW))
def test_malformed_exception_encodings_are_refused(name: str) -> None:
    """Each is refused by validation, and by the engine's own decoder when it gets the
    bytes unvalidated (WasmModule built by hand): a typed error, the engine lives on."""
    data = RAW[name]
    with pytest.raises(WasmModuleError):
        load(data)
    with WasmSandbox.engine() as sb:
        with pytest.raises(WasmModuleError):
            sb.load(WasmModule(data, (), {}))
        sb.load(wat('(module (tag (param i32)) (func (export "f")))'))  # still working


def test_aot_tier_runs_exception_handling() -> None:
    """The AOT tier (wasm2c 1.0.42) compiles try_table, throw and throw_ref: the same
    results and "uncaught exception" traps as here (tests/wasm/test_wasm_aot.py compares
    every call of CALLS three ways)."""
    from sandbox.wasm import from_wasm

    data = wat((EH_PROGRAMS / "fuzz.wat").read_text())
    for tier in ("aot", "auto"):
        with from_wasm(data, tier=tier) as sb:
            assert sb.call("a") == 42
            with pytest.raises(WasmTrap) as trap:
                sb.call("f")
            assert trap.value.kind == "uncaught_exception"


def test_exceptions_in_the_start_function() -> None:
    """Caught inside the start function: instantiation goes on; uncaught: it fails (in
    wasmtime with "thrown Wasm exception"), a trap whose kind says why."""
    caught = """(module (tag $t) (global $g (export "g") (mut i32) (i32.const 0))
      (func $s (block $h (try_table (catch $t $h) (throw $t))) (global.set $g (i32.const 1)))
      (start $s) (func (export "g1") (result i32) (global.get $g)))"""
    uncaught = "(module (tag $t) (func $s (throw $t)) (start $s))"
    engine = wasmtime_engine()
    with Sandbox.from_wasm(wat(caught)) as sb:
        assert sb.call("g1") == 1
    with pytest.raises((wasmtime.Trap, wasmtime.WasmtimeError), match="thrown Wasm exception"):
        wasmtime.Instance(wasmtime.Store(engine), wasmtime.Module(engine, wat(uncaught)), [])
    with pytest.raises(WasmTrap) as trap:
        Sandbox.from_wasm(wat(uncaught))
    assert trap.value.kind == "uncaught_exception"


NATIVE = Path(__file__).resolve().parents[2] / "guests" / "wasm" / "native"


def test_native_engine_against_wasmtime_and_fuzzed(tmp_path: Path) -> None:
    """The third way: the engine built natively (native/build.sh) runs the seed modules
    and their mutants against wasmtime (difffuzz.py: no mismatch), and its decoder takes
    mutants of them without crashing (fuzz.py), a few seconds each."""
    import shutil
    import subprocess
    import sys

    if shutil.which("cc") is None:
        pytest.skip("no C compiler")
    build = subprocess.run(
        ["sh", str(NATIVE / "build.sh"), str(tmp_path)], capture_output=True, text=True
    )
    assert build.returncode == 0, build.stderr
    lib = str(tmp_path / "libwasmengine.so")
    empty = tmp_path / "no-spec-files"  # the EH seeds only
    empty.mkdir()
    out = {}
    for tool in ("difffuzz.py", "fuzz.py"):
        run = subprocess.run(
            [sys.executable, str(NATIVE / tool), lib, str(empty), "3", "7"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, (tool, run.stdout[-500:], run.stderr[-2000:])
        out[tool] = run.stdout.strip().splitlines()[-1]
    stats = ast.literal_eval(out["difffuzz.py"])  # {'modules': .., 'calls': .., 'mismatch': ..}
    assert stats["mismatch"] == 0 and stats["calls"] > 100, out
    total, by_status = out["fuzz.py"].split(" ", 1)  # "N {'MALFORMED': .., 'OK': ..}"
    assert int(total) == sum(ast.literal_eval(by_status).values()) > 1000, out
