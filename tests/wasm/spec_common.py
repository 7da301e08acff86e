"""What both spec-suite runners share (tests/wasm/spec_runner.py in the VM, and the
native developer runner guests/wasm/native/runner.py): the suite's files, the wast2json
conversion, and how a command's expected values are read and compared. Values are the
engine ABI's (type code, u64 bits) pairs; type codes are Wasm's binary ones
(guests/wasm/wasm_abi.h WASM_TYPE_*)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT.parent / "shared" / "wasm-spec-testsuite"
TYPES = {
    "i32": 0x7F,
    "i64": 0x7E,
    "f32": 0x7D,
    "f64": 0x7C,
    "v128": 0x7B,
    "funcref": 0x70,
    "externref": 0x6F,
}
V128 = 0x7B
_LANE_BITS = {"i8": 8, "i16": 16, "i32": 32, "i64": 64, "f32": 32, "f64": 64}
NULL_REF = 0xFFFF_FFFF_FFFF_FFFF
_FLOATS = {0x7D: (32, 23), 0x7C: (64, 52)}  # type -> (width, mantissa bits)
_REFS = (0x70, 0x6F)


def spec_files() -> list[Path]:
    """The suite's .wast files (the SIMD ones, simd_*.wast, included), sorted."""
    return sorted(SUITE.glob("*.wast"))


def is_simd(wast: Path) -> bool:
    return wast.name.startswith("simd_")


def convert(wast: Path, out_dir: Path) -> dict[str, Any]:
    """Runs wast2json on `wast` into `out_dir`; returns the parsed JSON (its module files
    are beside it)."""
    target = out_dir / (wast.stem + ".json")
    proc = subprocess.run(
        ["wast2json", str(wast), "-o", str(target)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"wast2json failed: {proc.stderr.strip()[:300]}")
    data: dict[str, Any] = json.loads(target.read_text())
    return data


def value_bits(v: dict[str, Any]) -> tuple[int, int]:
    """A command's argument as (type code, bits)."""
    t = TYPES[v["type"]]
    value = v.get("value")
    if t == V128:
        width = _LANE_BITS[v["lane_type"]]
        bits = 0
        for i, lane in enumerate(value):
            bits |= (int(lane) & ((1 << width) - 1)) << (i * width)
        return t, bits
    if t in _REFS:
        return t, NULL_REF if value in (None, "null") else int(value)
    return t, int(value) & 0xFFFF_FFFF_FFFF_FFFF


def matches(expected: dict[str, Any], got: tuple[int, int]) -> bool:
    """Whether a result (type code, bits) is what the command expects (NaN patterns
    "nan:canonical"/"nan:arithmetic" included)."""
    t = TYPES[expected["type"]]
    got_type, bits = got
    if got_type != t:
        return False
    value = expected.get("value")
    if t == V128:
        lane_type = expected["lane_type"]
        width = _LANE_BITS[lane_type]
        lanes = [(bits >> (i * width)) & ((1 << width) - 1) for i in range(128 // width)]
        if len(value) != len(lanes):
            return False
        if lane_type in ("f32", "f64"):
            return all(
                matches({"type": lane_type, "value": v}, (TYPES[lane_type], b))
                for v, b in zip(value, lanes, strict=True)
            )
        return all(b == int(v) & ((1 << width) - 1) for v, b in zip(value, lanes, strict=True))
    if t in _FLOATS and isinstance(value, str) and value.startswith("nan:"):
        width, mantissa = _FLOATS[t]
        bits &= (1 << width) - 1
        exponent_ones = (1 << (width - 1 - mantissa)) - 1
        all_ones = (bits >> mantissa) & exponent_ones == exponent_ones
        fraction = bits & ((1 << mantissa) - 1)
        quiet = 1 << (mantissa - 1)
        if value == "nan:canonical":
            return all_ones and fraction == quiet
        return all_ones and bool(fraction & quiet)
    if t in _REFS:
        if value is None:
            return bits != NULL_REF
        return bits == (NULL_REF if value == "null" else int(value))
    width = 32 if t in (0x7F, 0x7D) else 64
    return (bits & ((1 << width) - 1)) == int(value) & ((1 << width) - 1)
