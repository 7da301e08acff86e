"""Differential tests: randomly generated Wasm functions (integer and float arithmetic,
conversions, comparisons, select, if/else, memory loads and stores, calls) run in our
engine guest in the VM and in wasmtime on the host must give the same results and the
same traps. The generator is seeded, so a failure names a reproducible case."""

from __future__ import annotations

import math
import random
import struct
from typing import Any

import pytest

from sandbox import Sandbox
from sandbox.wasm import WasmTrap

wasmtime = pytest.importorskip("wasmtime")
pytestmark = pytest.mark.requires_kvm

TYPES = ("i32", "i64", "f32", "f64")
PARAMS = {"i32": "$a", "i64": "$b", "f32": "$c", "f64": "$d"}
INT_BIN = [
    "add",
    "sub",
    "mul",
    "div_s",
    "div_u",
    "rem_s",
    "rem_u",
    "and",
    "or",
    "xor",
    "shl",
    "shr_s",
    "shr_u",
    "rotl",
    "rotr",
]
INT_UN = ["clz", "ctz", "popcnt"]
INT_CMP = ["eq", "ne", "lt_s", "lt_u", "gt_s", "gt_u", "le_s", "le_u", "ge_s", "ge_u"]
FLOAT_BIN = ["add", "sub", "mul", "div", "min", "max", "copysign"]
FLOAT_UN = ["abs", "neg", "sqrt", "ceil", "floor", "trunc", "nearest"]
FLOAT_CMP = ["eq", "ne", "lt", "gt", "le", "ge"]
CONVERSIONS = {
    "i32": [
        "i32.wrap_i64 {i64}",
        "i32.trunc_f32_s {f32}",
        "i32.trunc_f64_u {f64}",
        "i32.trunc_sat_f32_u {f32}",
        "i32.trunc_sat_f64_s {f64}",
        "i32.reinterpret_f32 {f32}",
        "i32.extend8_s {i32}",
        "i32.extend16_s {i32}",
        "i64.eqz {i64}",
    ],
    "i64": [
        "i64.extend_i32_s {i32}",
        "i64.extend_i32_u {i32}",
        "i64.trunc_f64_s {f64}",
        "i64.trunc_f32_u {f32}",
        "i64.trunc_sat_f64_u {f64}",
        "i64.reinterpret_f64 {f64}",
        "i64.extend32_s {i64}",
    ],
    "f32": [
        "f32.convert_i32_s {i32}",
        "f32.convert_i64_u {i64}",
        "f32.demote_f64 {f64}",
        "f32.reinterpret_i32 {i32}",
    ],
    "f64": [
        "f64.convert_i32_u {i32}",
        "f64.convert_i64_s {i64}",
        "f64.promote_f32 {f32}",
        "f64.reinterpret_i64 {i64}",
    ],
}
INTERESTING = {
    "i32": [0, 1, -1, 2**31 - 1, -(2**31), 31, 32, 7],
    "i64": [0, 1, -1, 2**63 - 1, -(2**63), 63, 64, 1 << 40],
    "f32": [0.0, -0.0, 1.5, -2.5, math.inf, -math.inf, math.nan, 3e9, 1e-40, 2.5],
    "f64": [0.0, -0.0, 0.5, -1.5, math.inf, math.nan, 1e300, -9.3e18, 4294967296.5, 2.5],
}


def gen(rng: random.Random, t: str, depth: int) -> str:
    if depth == 0 or rng.random() < 0.2:
        if rng.random() < 0.5:
            return f"(local.get {PARAMS[t]})"
        v = rng.choice(INTERESTING[t])
        if t[0] == "f":
            return f"({t}.const {_float_literal(v)})"
        return f"({t}.const {v})"
    d = depth - 1
    r = rng.random()
    if r < 0.35:
        if t[0] == "i":
            return f"({t}.{rng.choice(INT_BIN)} {gen(rng, t, d)} {gen(rng, t, d)})"
        return f"({t}.{rng.choice(FLOAT_BIN)} {gen(rng, t, d)} {gen(rng, t, d)})"
    if r < 0.5:
        op = rng.choice(INT_UN if t[0] == "i" else FLOAT_UN)
        return f"({t}.{op} {gen(rng, t, d)})"
    if r < 0.7:
        pattern = rng.choice(CONVERSIONS[t])
        op, arg = pattern.split(" ")
        return f"({op} {gen(rng, arg.strip('{}'), d)})"
    if r < 0.8 and t == "i32":
        u = rng.choice(TYPES)
        op = rng.choice(INT_CMP if u[0] == "i" else FLOAT_CMP)
        return f"({u}.{op} {gen(rng, u, d)} {gen(rng, u, d)})"
    if r < 0.88:
        return f"(select {gen(rng, t, d)} {gen(rng, t, d)} {gen(rng, 'i32', d)})"
    if r < 0.94:
        return (
            f"(if (result {t}) {gen(rng, 'i32', d)} (then {gen(rng, t, d)}) "
            f"(else {gen(rng, t, d)}))"
        )
    # A store and a load through linear memory (in bounds or not).
    addr = rng.choice(
        [
            "(i32.const 16)",
            "(i32.const 65532)",
            "(i32.const 65533)",
            f"(i32.and {gen(rng, 'i32', d)} (i32.const 0xffff))",
        ]
    )
    return f"(block (result {t}) ({t}.store {addr} {gen(rng, t, d)}) ({t}.load {addr}))"


def _float_literal(v: float) -> str:
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return repr(v) if v != 0 or math.copysign(1, v) > 0 else "-0.0"


def make_module(rng: random.Random, n: int) -> tuple[str, list[str]]:
    funcs, names = [], []
    for i in range(n):
        t = rng.choice(TYPES)
        name = f"f{i}_{t}"
        names.append(name)
        funcs.append(
            f'(func (export "{name}") (param $a i32) (param $b i64) (param $c f32) '
            f"(param $d f64) (result {t}) {gen(rng, t, 4)})"
        )
    return "(module (memory 1) " + "\n".join(funcs) + ")", names


def _bits(t: str, v: Any) -> Any:
    if t == "f32":
        return ("nan",) if math.isnan(v) else struct.pack("<f", v)
    if t == "f64":
        return ("nan",) if math.isnan(v) else struct.pack("<d", v)
    return v


def _args(rng: random.Random) -> tuple[int, int, float, float]:
    return (
        rng.choice(INTERESTING["i32"] + [rng.randrange(-(2**31), 2**31)]),
        rng.choice(INTERESTING["i64"] + [rng.randrange(-(2**63), 2**63)]),
        rng.choice(INTERESTING["f32"] + [rng.uniform(-1e6, 1e6)]),
        rng.choice(INTERESTING["f64"] + [rng.uniform(-1e12, 1e12)]),
    )


@pytest.mark.parametrize("seed", range(12))
def test_random_functions_match_wasmtime(seed: int) -> None:
    rng = random.Random(seed)
    text, names = make_module(rng, 25)
    data = bytes(wasmtime.wat2wasm(text))
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    exports = wasmtime.Instance(store, wasmtime.Module(engine, data), []).exports(store)
    mismatches = []
    with Sandbox.from_wasm(data) as sb:
        for name in names:
            t = name.split("_")[1]
            for _ in range(6):
                args = _args(rng)
                try:
                    theirs: Any = ("ok", _bits(t, exports[name](store, *args)))
                except wasmtime.Trap as trap:
                    theirs = ("trap", str(trap).split("wasm trap: ")[-1].splitlines()[0])
                try:
                    ours: Any = ("ok", _bits(t, sb.call(name, *args)))
                except WasmTrap as trap:
                    ours = ("trap", str(trap).split("wasm trap: ")[-1])
                if ours != theirs:
                    mismatches.append(f"seed {seed} {name}{args}: ours {ours}, wasmtime {theirs}")
    assert not mismatches, "\n".join(mismatches[:10]) + f"\nmodule:\n{text[:3000]}"
