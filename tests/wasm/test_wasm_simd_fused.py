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

FOLD = "(i64.xor (i64x2.extract_lane 0 (local.get $r)) (i64.rotl (i64x2.extract_lane 1 (local.get $r)) (i64.const 17)))"
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
        f"(local.set $t {ld.format(o=0)}) (block) (local.set $r (f32x4.mul (local.get $t) {ld.format(o=16)}))"
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
            f"(local.set $r ({op} {a} (local.tee $t {K}))) (local.set $r ({op} (local.get $r) (local.get $t)))"
        )
    for lanes, bits in (("i16x8", 16), ("i32x4", 32)):
        for op in ("add", "sub", "mul"):
            for sh in ("shr_u", "shr_s"):
                for count in (3, bits + 1, 0):
                    f[f"{lanes}_{op}_{sh}_{count}"] = (
                        f"(local.set $r ({lanes}.{sh} ({lanes}.{op} {a} {ld.format(o=40)}) (i32.const {count})))"
                    )
            f[f"{lanes}_{op}_tee_{lanes}_shr"] = (
                f"(local.set $r ({lanes}.shr_u (local.tee $t ({lanes}.{op} {a} {ld.format(o=40)})) (i32.const 5)))"
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
