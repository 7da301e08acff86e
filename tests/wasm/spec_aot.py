"""The spec suite in the AOT tier (sandbox.wasm.aot): each module of a .wast file is
compiled to its own guest (cached on disk, so a second run compiles nothing) and run in
its own sandbox; assertions are checked as in spec_runner.py (same comparison, same trap
messages). What the AOT tier does not link, and is therefore not run here, is counted as
`unsupported`: modules importing a table, memory or global (spectest's included) and
`register` (instances of different modules live in different guests). Imports of
spectest's print functions are bound to no-op host functions.

    python tests/wasm/spec_aot.py FILE.wast ...
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spec_common import SUITE, convert, matches, value_bits

CALL_TIMEOUT = 10.0
# The files CI runs in the AOT tier: every file whose modules the tier links (no
# register, no spectest tables/memories/globals) with one to five modules each, so that
# a cold cache compiles ~50 modules; they cover every trap kind, all numeric and
# conversion instructions, control flow, calls and call_indirect, memory and tables.
CI_FILES = [
    "address",
    "block",
    "br",
    "br_if",
    "br_table",
    "call",
    "call_indirect",
    "conversions",
    "endianness",
    "f32",
    "f64",
    "fac",
    "float_literals",
    "float_misc",
    "forward",
    "i32",
    "i64",
    "if",
    "int_literals",
    "labels",
    "left-to-right",
    "load",
    "local_get",
    "local_set",
    "loop",
    "memory_grow",
    "memory_trap",
    "nop",
    "return",
    "select",
    "stack",
    "store",
    "switch",
    "table_fill",
    "table_get",
    "table_grow",
    "table_set",
    "traps",
    "unreachable",
    "unwind",
]
# The SIMD files CI runs in the AOT tier: 53 of the suite's 56, ~100 modules, covering
# every SIMD instruction (loads and stores of every shape and lane, splat, lanes,
# shuffle and swizzle, bitwise, shifts, integer and saturating arithmetic, comparisons,
# extended multiplies and pairwise adds, q15mulr, dot, float arithmetic, min/max and
# pmin/pmax, rounding, conversions, narrowing and extension). Left out, for compile time
# on a cold cache: simd_const (312 modules of v128.const literal syntax, which wast2json
# resolves: the compiled code sees constants that every other file has too), simd_align
# (46 modules of alignment immediates, which compiled code ignores) and simd_load (14
# modules for 17 assertions of v128.load inside blocks and branches). All 56 pass by
# hand (docs/aot.md, "Conformance").
SIMD_CI_FILES = [
    "simd_address",
    "simd_bit_shift",
    "simd_bitwise",
    "simd_boolean",
    "simd_conversions",
    "simd_f32x4",
    "simd_f32x4_arith",
    "simd_f32x4_cmp",
    "simd_f32x4_pmin_pmax",
    "simd_f32x4_rounding",
    "simd_f64x2",
    "simd_f64x2_arith",
    "simd_f64x2_cmp",
    "simd_f64x2_pmin_pmax",
    "simd_f64x2_rounding",
    "simd_i16x8_arith",
    "simd_i16x8_arith2",
    "simd_i16x8_cmp",
    "simd_i16x8_extadd_pairwise_i8x16",
    "simd_i16x8_extmul_i8x16",
    "simd_i16x8_q15mulr_sat_s",
    "simd_i16x8_sat_arith",
    "simd_i32x4_arith",
    "simd_i32x4_arith2",
    "simd_i32x4_cmp",
    "simd_i32x4_dot_i16x8",
    "simd_i32x4_extadd_pairwise_i16x8",
    "simd_i32x4_extmul_i16x8",
    "simd_i32x4_trunc_sat_f32x4",
    "simd_i32x4_trunc_sat_f64x2",
    "simd_i64x2_arith",
    "simd_i64x2_arith2",
    "simd_i64x2_cmp",
    "simd_i64x2_extmul_i32x4",
    "simd_i8x16_arith",
    "simd_i8x16_arith2",
    "simd_i8x16_cmp",
    "simd_i8x16_sat_arith",
    "simd_int_to_int_extend",
    "simd_lane",
    "simd_load16_lane",
    "simd_load32_lane",
    "simd_load64_lane",
    "simd_load8_lane",
    "simd_load_extend",
    "simd_load_splat",
    "simd_load_zero",
    "simd_splat",
    "simd_store",
    "simd_store16_lane",
    "simd_store32_lane",
    "simd_store64_lane",
    "simd_store8_lane",
]
_SPECTEST_FUNCS: tuple[str, ...] = (
    "print",
    "print_i32",
    "print_i64",
    "print_f32",
    "print_f64",
    "print_i32_f32",
    "print_f64_f64",
)


@dataclass
class AotFileResult:
    name: str
    passed: int = 0
    failed: int = 0
    unsupported: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        total = self.passed + self.failed
        return self.passed / total if total else 1.0


class _Instance:
    def __init__(self, sb: Any, handle: int) -> None:
        self.sb, self.handle = sb, handle


def _instantiate(path: Path) -> _Instance:
    from sandbox.wasm import WasmSandbox, aot
    from sandbox.wasm.module import load

    module = load(path)
    sb = aot.engine_for(module, "aot", cls=WasmSandbox, config=None, output=None)
    try:
        handle, module = sb.load(module)
        noop = {("spectest", name): (lambda *a: None) for name in _SPECTEST_FUNCS}
        return _Instance(sb, sb.instantiate(handle, module, noop))
    except BaseException:
        sb.close()
        raise


def run_file(wast: Path, work: Path) -> AotFileResult:
    from sandbox import CallTimeout, GuestTrap, SandboxError, SandboxPoisoned
    from sandbox.wasm import WasmLinkError, WasmModuleError, WasmTrap, aot
    from sandbox.wasm.module import load

    result = AotFileResult(wast.name)
    t0 = time.perf_counter()
    out = work / wast.stem
    out.mkdir(parents=True, exist_ok=True)
    spec = convert(wast, out)
    current: _Instance | None = None
    named: dict[str, _Instance | None] = {}
    opened: list[_Instance] = []

    def instance(action: dict[str, Any]) -> _Instance | None:
        return named.get(action["module"]) if "module" in action else current

    def act(inst: _Instance, action: dict[str, Any]) -> list[tuple[int, int]]:
        if action["type"] == "get":
            return [inst.sb.get(inst.handle, action["field"])]
        args = [value_bits(a) for a in action["args"]]
        return list(inst.sb.invoke(inst.handle, action["field"], args, timeout=CALL_TIMEOUT))

    try:
        for cmd in spec["commands"]:
            kind, line = cmd["type"], cmd.get("line")
            if kind == "module":
                try:
                    current = _instantiate(out / cmd["filename"])
                    opened.append(current)
                except (aot.AotCompileError, WasmLinkError):  # imports another module
                    current = None
                    result.unsupported += 1
                if "name" in cmd:
                    named[cmd["name"]] = current
                continue
            if kind == "register":
                result.unsupported += 1
                continue
            ok, why = True, ""
            try:
                if kind in ("assert_invalid", "assert_malformed"):
                    if cmd["module_type"] != "binary":
                        continue
                    try:
                        load(out / cmd["filename"])
                        ok, why = False, "loaded"
                    except WasmModuleError:
                        pass
                elif kind in ("assert_unlinkable", "assert_uninstantiable"):
                    try:
                        opened.append(_instantiate(out / cmd["filename"]))
                        ok, why = False, "instantiated"
                    except aot.AotCompileError:
                        result.unsupported += 1
                        continue
                    except (WasmLinkError, WasmTrap):
                        pass
                elif kind in ("action", "assert_return", "assert_trap", "assert_exhaustion"):
                    inst = instance(cmd["action"])
                    if inst is None:
                        result.unsupported += 1
                        continue
                    if kind == "action":
                        act(inst, cmd["action"])
                        continue
                    if kind == "assert_return":
                        got = act(inst, cmd["action"])
                        expected = cmd["expected"]
                        if len(got) != len(expected) or not all(
                            matches(e, g) for e, g in zip(expected, got, strict=True)
                        ):
                            ok, why = False, f"got {got}, expected {expected}"
                    else:
                        try:
                            got = act(inst, cmd["action"])
                            ok, why = False, f"returned {got}, expected trap {cmd['text']!r}"
                        except WasmTrap as trap:
                            message = str(trap).split("wasm trap: ", 1)[-1]
                            if not message.startswith(cmd["text"]):
                                ok, why = False, f"trap {message!r}, expected {cmd['text']!r}"
                else:
                    continue
            except (GuestTrap, CallTimeout, SandboxPoisoned, SandboxError) as exc:
                ok, why = False, f"{type(exc).__name__}: {exc}"
            if ok:
                result.passed += 1
            else:
                result.failed += 1
                result.failures.append(f"line {line}: {kind}: {why}"[:400])
    finally:
        for inst in opened:
            inst.sb.close()
        result.seconds = time.perf_counter() - t0
    return result


def main(argv: list[str]) -> int:
    files = [Path(a) for a in argv] or [SUITE / f"{n}.wast" for n in CI_FILES]
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        for wast in files:
            r = run_file(wast, Path(tmp))
            print(
                f"{r.name:28} {r.passed:5} passed {r.failed:4} failed "
                f"{r.unsupported:3} unsupported {r.seconds:6.1f} s"
            )
            for f in r.failures[:5]:
                print("   ", f)
            bad += r.failed
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
