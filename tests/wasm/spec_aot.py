"""The spec suite in the AOT tier (sandbox.wasm.aot): the modules of a .wast file are
compiled into one guest (aot.compile_modules; cached on disk, so a second run compiles
nothing), and the file runs in an engine made of it exactly as spec_runner.py runs it in
the interpreter engine: the same commands (`register` and imports between instances
included), the same comparisons and trap messages.

    python tests/wasm/spec_aot.py FILE.wast ...
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import spec_runner
from spec_common import ROOT, SUITE
from spec_runner import FileResult

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


def run_file(wast: Path, work: Path) -> FileResult:
    """`wast` in the AOT tier: its modules compiled into one guest, run as
    spec_runner.run_file runs them in the interpreter engine."""
    return spec_runner.run_file(wast, work, tier="aot")


def main(argv: list[str]) -> int:
    files = [Path(a) for a in argv] or [SUITE / f"{n}.wast" for n in CI_FILES]
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        for wast in files:
            r = run_file(wast, Path(tmp))
            print(
                f"{r.name:28} {r.passed:5} passed {r.failed:4} failed {r.seconds:6.1f} s {r.error}"
            )
            for f in r.failures[:5]:
                print("   ", f)
            bad += r.failed + bool(r.error)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main(sys.argv[1:]))
