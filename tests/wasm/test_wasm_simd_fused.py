"""The engine's SIMD super-instructions (guests/wasm/compile.c: simd_pair_load,
simd_fuse_bin, simd_pair; ops.h: SIMD_PAIRS) against wasmtime: every fused pattern in
the shapes the compiler fuses (the first result on the left, on the right, retargeted to
a local that is read again, both operands) and in shapes it must not fuse (a label in
between, a constant on the left of a subtraction), over memory holding random bytes and
float edge cases, with addresses that wrap at 32 bits and a second load that faults.
Each function folds its v128 result into an i64 (the wasmtime Python API cannot return
a v128)."""

from __future__ import annotations

import random
import struct
from typing import Any

import pytest

from sandbox import Sandbox
from sandbox.wasm import WasmTrap

wasmtime = pytest.importorskip("wasmtime")
pytestmark = pytest.mark.requires_kvm

FOLD = (
    "(i64.xor (i64x2.extract_lane 0 (local.get $r))"
    " (i64.rotl (i64x2.extract_lane 1 (local.get $r)) (i64.const 17)))"
)
K = "(v128.const i32x4 0x80ff7f01 0x00017fff 0xfffe8000 0x12345678)"


def _data() -> bytes:
    rng = random.Random(15)
    data = bytearray(rng.randbytes(4096))
    specials = [float("nan"), float("inf"), -float("inf"), -0.0, 0.5, -1.5, 3.4e38, 1e-45]
    for i, v in enumerate(specials * 8):
        struct.pack_into("<f", data, 2048 + 4 * i, v)
    struct.pack_into("<I", data, 2048 + 4 * 70, 0x7FC12345)  # a NaN with a payload
    struct.pack_into("<d", data, 2560, float("nan"))
    return bytes(data)


def _funcs() -> dict[str, str]:
    """name -> body of (func (param $p i32) (result i64) (local $r v128) (local $t v128))."""
    ld = "(v128.load offset={o} (local.get $p))"
    ri = "(v128.load offset={o} (i32.add (local.get $p) (i32.const {k})))"
    f: dict[str, str] = {}
    for t in ("f32x4", "f64x2"):
        x, y = ri.format(o=0, k=16), ld.format(o=48)
        acc = (
            f"({t}.splat ({t[:3]}.const 0.25))" if t == "f32x4" else "(f64x2.splat (f64.const -2))"
        )
        f[f"{t}_addmul_right"] = (
            f"(local.set $t {acc}) (local.set $r ({t}.add (local.get $t) ({t}.mul {x} {y})))"
        )
        f[f"{t}_addmul_left"] = (
            f"(local.set $t {acc}) (local.set $r ({t}.add ({t}.mul {x} {y}) (local.get $t)))"
        )
        f[f"{t}_mul_ll"] = f"(local.set $r ({t}.mul {y} {x}))"
        f[f"{t}_acc_loop"] = (
            f"(local.set $r {acc}) (local.set $t (v128.const i64x2 0 0))"
            f"(block (loop (local.set $r ({t}.add (local.get $r) ({t}.mul"
            f" (v128.load offset=2048 (local.get $p)) (v128.load offset=2080 (local.get $p)))))"
            "(local.set $p (i32.add (local.get $p) (i32.const 16)))"
            "(br_if 0 (i32.lt_u (i32.and (local.get $p) (i32.const 127)) (i32.const 96)))))"
        )
    f["load2_tee_add"] = (
        f"(local.set $r (i32x4.add (local.tee $t {ld.format(o=8)}) {ri.format(o=3, k=-5)}))"
        "(local.set $r (i32x4.add (local.get $r) (local.get $t)))"
    )
    f["load2_label_between"] = (
        f"(local.set $t {ld.format(o=0)}) (block)"
        f" (local.set $r (f32x4.mul (local.get $t) {ld.format(o=16)}))"
    )
    f["load2_second_faults"] = f"(local.set $r (f32x4.mul {ld.format(o=0)} {ld.format(o=65530)}))"
    ints = [
        ("i8x16.add", True),
        ("i16x8.add", True),
        ("i32x4.add", True),
        ("i16x8.mul", True),
        ("i32x4.mul", True),
        ("v128.and", True),
        ("v128.or", True),
        ("v128.xor", True),
        ("i8x16.sub", False),
        ("i16x8.sub", False),
        ("i32x4.sub", False),
        ("v128.andnot", False),
    ]
    a = ld.format(o=32)
    for op, _ in ints:
        n = op.replace(".", "_")
        f[f"k_right_{n}"] = f"(local.set $r ({op} {a} {K}))"
        f[f"k_left_{n}"] = f"(local.set $r ({op} {K} {a}))"
        f[f"k_tee_{n}"] = (
            f"(local.set $r ({op} {a} (local.tee $t {K})))"
            f" (local.set $r ({op} (local.get $r) (local.get $t)))"
        )
    for lanes, bits in (("i16x8", 16), ("i32x4", 32)):
        for op in ("add", "sub", "mul"):
            for sh in ("shr_u", "shr_s"):
                for count in (3, bits + 1, 0):
                    inner = f"({lanes}.{op} {a} {ld.format(o=40)})"
                    f[f"{lanes}_{op}_{sh}_{count}"] = (
                        f"(local.set $r ({lanes}.{sh} {inner} (i32.const {count})))"
                    )
            inner = f"({lanes}.{op} {a} {ld.format(o=40)})"
            f[f"{lanes}_{op}_tee_{lanes}_shr"] = (
                f"(local.set $r ({lanes}.shr_u (local.tee $t {inner}) (i32.const 5)))"
                f"(local.set $r ({lanes}.add (local.get $r) (local.get $t)))"
            )
    for wide, narrow in (("i16x8", "i8x16"), ("i32x4", "i16x8")):
        for half in ("low", "high"):
            for sign in ("s", "u"):
                em = f"({wide}.extmul_{half}_{narrow}_{sign} {a} {ld.format(o=24)})"
                ex = f"({wide}.extend_{half}_{narrow}_{sign} {ld.format(o=56)})"
                key = f"{wide}_{half}_{sign}"
                f[f"extmul_add_right_{key}"] = f"(local.set $r ({wide}.add {a} {em}))"
                f[f"extmul_add_left_{key}"] = f"(local.set $r ({wide}.add {em} {a}))"
                f[f"extmul_add_both_{key}"] = (
                    f"(local.set $t {em}) (local.set $r ({wide}.add (local.get $t) (local.get $t)))"
                )
                for op in ("mul", "add"):
                    f[f"extend_{op}_right_{key}"] = f"(local.set $r ({wide}.{op} {a} {ex}))"
                    f[f"extend_{op}_left_{key}"] = f"(local.set $r ({wide}.{op} {ex} {a}))"
                    f[f"extend_{op}_tee_{key}"] = (
                        f"(local.set $r ({wide}.{op} (local.tee $t {ex}) {a}))"
                        f"(local.set $r ({wide}.sub (local.get $r) (local.get $t)))"
                    )
    # The pairs reading from the register the result right before them: the first's
    # operand (_P) or the second's other operand (_X), and a case where that other operand
    # is the slot the first overwrites (must be read after it).
    t, em = "(local.get $t)", "i16x8.extmul_low_i8x16_u"
    f["pair_p_shift"] = (
        f"(local.set $t {a})"
        f" (local.set $r (i16x8.shr_u (i16x8.add (i16x8.abs {t}) {t}) (i32.const 3)))"
    )
    f["pair_p_extmul"] = (
        f"(local.set $t {a}) (local.set $r (i16x8.add ({em} (v128.not {a}) {t}) {t}))"
    )
    f["pair_x_extmul"] = (
        f"(local.set $t {a}) (local.set $r (i16x8.add (v128.not {a}) ({em} {t} {t})))"
    )
    f["pair_x_extend"] = (
        f"(local.set $t {a})"
        f" (local.set $r (i32x4.mul (v128.not {a}) (i32x4.extend_high_i16x8_s {t})))"
    )
    f["pair_other_is_first_dest"] = (
        f"(local.set $t (v128.not {a}))"
        f" (local.set $r (i16x8.add (local.tee $t ({em} {t} {t})) {t}))"
    )
    # Shuffles and stores reading the register: both shuffle operands the result right
    # before, only the right one, and a store of a just computed value.
    lanes = "0 17 2 19 4 21 6 23 8 25 10 27 12 29 14 31"
    f["shuffle_same"] = (
        f"(local.set $r (i8x16.shuffle {lanes} (local.tee $t (v128.not {a})) (local.get $t)))"
    )
    f["shuffle_right"] = (
        f"(local.set $t {a}) (local.set $r (i8x16.shuffle {lanes} {t} (v128.not {a})))"
    )
    f["store_result"] = (
        f"(v128.store offset=3000 (local.get $p) (i32x4.mul {a} {ld.format(o=8)}))"
        "(local.set $r (v128.load offset=3000 (local.get $p)))"
    )
    return f


def _module(funcs: dict[str, str]) -> bytes:
    data = "".join(f"\\{b:02x}" for b in _data())
    parts = [f'(module (memory 1) (data (i32.const 0) "{data}")']
    for name, body in funcs.items():
        parts.append(
            f'(func (export "{name}") (param $p i32) (result i64) (local $r v128) (local $t v128)'
            f" {body} {FOLD})"
        )
    parts.append(")")
    return bytes(wasmtime.wat2wasm("\n".join(parts)))


def _theirs(fn: Any, store: Any, p: int) -> int | str:
    try:
        return int(fn(store, p)) & (1 << 64) - 1
    except wasmtime.Trap:
        return "trap"


def _ours(sb: Any, name: str, p: int) -> int | str:
    try:
        return int(sb.call(name, p)) & (1 << 64) - 1
    except WasmTrap:
        return "trap"


def test_fused_simd_sequences_match_wasmtime() -> None:
    funcs = _funcs()
    module = _module(funcs)
    store = wasmtime.Store()
    exports = wasmtime.Instance(store, wasmtime.Module(store.engine, module), []).exports(store)
    # Addresses: aligned, unaligned, the float edge cases, x + k wrapping at 32 bits
    # (0xfffffff8 + 16 is 8), near the end of memory (a trap for the wide offsets).
    addrs = [0, 5, 2048, 2050, 0xFFFFFFF8, 65536 - 64]
    mismatches = []
    with Sandbox.from_wasm(module) as sb:
        for name in funcs:
            for p in addrs:
                ours, theirs = _ours(sb, name, p), _theirs(exports[name], store, p)
                if ours != theirs:
                    mismatches.append((name, p, ours, theirs))
    assert not mismatches, mismatches[:10]
    assert len(funcs) > 120


# Random dependent chains: every SIMD result may be the next instruction's operand (read
# from the register, simd.h's acc), with scalar results, labels (block, if) and loads in
# between. Float subtrees start from conversions of integers, so that NaNs come only from
# invalid operations (the same default NaN in both engines).
INT_BIN = [
    "i8x16.add",
    "i8x16.sub",
    "i8x16.add_sat_s",
    "i8x16.sub_sat_u",
    "i8x16.min_s",
    "i8x16.max_u",
    "i8x16.avgr_u",
    "i8x16.eq",
    "i8x16.gt_u",
    "i8x16.narrow_i16x8_s",
    "i8x16.narrow_i16x8_u",
    "i8x16.swizzle",
    "i16x8.add",
    "i16x8.sub",
    "i16x8.mul",
    "i16x8.q15mulr_sat_s",
    "i16x8.extmul_low_i8x16_u",
    "i16x8.extmul_high_i8x16_s",
    "i16x8.min_u",
    "i16x8.narrow_i32x4_u",
    "i16x8.lt_s",
    "i32x4.add",
    "i32x4.sub",
    "i32x4.mul",
    "i32x4.dot_i16x8_s",
    "i32x4.max_s",
    "i32x4.extmul_low_i16x8_s",
    "i64x2.add",
    "i64x2.mul",
    "i64x2.lt_s",
    "v128.and",
    "v128.or",
    "v128.xor",
    "v128.andnot",
]
INT_UN = [
    "v128.not",
    "i8x16.abs",
    "i8x16.neg",
    "i8x16.popcnt",
    "i16x8.extend_low_i8x16_s",
    "i16x8.extend_high_i8x16_u",
    "i16x8.extadd_pairwise_i8x16_s",
    "i32x4.extend_low_i16x8_u",
    "i64x2.extend_high_i32x4_s",
    "i16x8.abs",
    "i32x4.neg",
]
SHIFTS = ["i8x16.shl", "i16x8.shr_u", "i16x8.shr_s", "i32x4.shl", "i32x4.shr_u", "i64x2.shr_s"]
FLOAT_BIN = [
    "f32x4.add",
    "f32x4.sub",
    "f32x4.mul",
    "f32x4.div",
    "f32x4.min",
    "f32x4.pmax",
    "f32x4.lt",
]
FLOAT_UN = ["f32x4.sqrt", "f32x4.neg", "f32x4.floor", "f32x4.nearest", "f32x4.abs"]


def _int_expr(rng: random.Random, depth: int) -> str:
    k = rng.randrange(12) if depth > 0 else rng.randrange(3)
    sub = lambda: _int_expr(rng, depth - 1)  # noqa: E731
    if k == 0:
        return f"(v128.load offset={rng.randrange(0, 4000)} (local.get $p))"
    if k == 1:
        return "(local.get $t)"
    if k == 2:
        lanes = " ".join(str(rng.randrange(-(2**31), 2**31)) for _ in range(4))
        return f"(v128.const i32x4 {lanes})"
    if k in (3, 4, 5):
        return f"({rng.choice(INT_BIN)} {sub()} {sub()})"
    if k == 6:
        return f"({rng.choice(INT_UN)} {sub()})"
    if k == 7:
        count = (
            f"(i32.const {rng.randrange(0, 70)})"
            if rng.randrange(2)
            else f"(i32x4.extract_lane {rng.randrange(4)} {sub()})"
        )
        return f"({rng.choice(SHIFTS)} {sub()} {count})"
    if k == 8:
        return f"(local.tee $t {sub()})"
    if k == 9:
        choice = rng.randrange(4)
        if choice == 0:
            return f"(i16x8.splat (i16x8.extract_lane_u {rng.randrange(8)} {sub()}))"
        if choice == 1:
            return f"(i32x4.replace_lane {rng.randrange(4)} {sub()} (i8x16.bitmask {sub()}))"
        if choice == 2:
            return f"(v128.bitselect {sub()} {sub()} {sub()})"
        lanes = " ".join(str(rng.randrange(32)) for _ in range(16))
        return f"(i8x16.shuffle {lanes} {sub()} {sub()})"
    if k == 10:
        if rng.randrange(2):
            return f"(block (result v128) {sub()})"
        cond = f"(i32.and (local.get $p) (i32.const {1 << rng.randrange(4)}))"
        return f"(if (result v128) {cond} (then {sub()}) (else {sub()}))"
    return f"(i32x4.trunc_sat_f32x4_s {_float_expr(rng, depth - 1)})"


def _float_expr(rng: random.Random, depth: int) -> str:
    k = rng.randrange(4) if depth > 0 else 0
    if k == 0:
        return f"(f32x4.convert_i32x4_s (i32x4.shr_s {_int_expr(rng, depth - 1)} (i32.const 9)))"
    if k in (1, 2):
        a, b = _float_expr(rng, depth - 1), _float_expr(rng, depth - 1)
        return f"({rng.choice(FLOAT_BIN)} {a} {b})"
    return f"({rng.choice(FLOAT_UN)} {_float_expr(rng, depth - 1)})"


def test_random_simd_chains_match_wasmtime() -> None:
    rng = random.Random(2026)
    funcs = {f"chain{i}": f"(local.set $r {_int_expr(rng, 6)})" for i in range(60)}
    module = _module(funcs)
    store = wasmtime.Store()
    exports = wasmtime.Instance(store, wasmtime.Module(store.engine, module), []).exports(store)
    mismatches = []
    with Sandbox.from_wasm(module) as sb:
        for name in funcs:
            for p in (0, 3, 1, 2, 8, 4):
                ours, theirs = _ours(sb, name, p), _theirs(exports[name], store, p)
                if ours != theirs:
                    mismatches.append((name, p, ours, theirs))
    assert not mismatches, mismatches[:10]
