"""Wasm fixed-width SIMD in the engine guest (guests/wasm/simd.h), beyond the spec suite:
v128 values across the host boundary (arguments, results, host imports), relaxed SIMD
refused by validation, no vector register state surviving a call or a reset, and a C
program built with clang -msimd128 giving the same output in the VM as under wasmtime."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support import compile_wasi

from sandbox import Sandbox
from sandbox.wasm import WasmModuleError, WasmTrap

wasmtime = pytest.importorskip("wasmtime")
pytestmark = pytest.mark.requires_kvm

PROGRAM = Path(__file__).parent / "programs" / "simd_mix.c"
LANES = 0x0F0E0D0C_0B0A0908_07060504_03020100  # byte lane i holds i

MODULE = """
(module
  (import "host" "flip" (func $flip (param v128) (result v128)))
  (memory 1)
  (global $g (mut v128) (v128.const i64x2 7 8))
  (func (export "add32") (param v128 v128) (result v128)
    (i32x4.add (local.get 0) (local.get 1)))
  (func (export "swap") (param v128 i32 v128) (result v128 i32 v128)
    (local.get 2) (local.get 1) (local.get 0))
  (func (export "via_host") (param v128) (result v128)
    (call $flip (i8x16.shuffle 15 14 13 12 11 10 9 8 7 6 5 4 3 2 1 0
                  (local.get 0) (local.get 0))))
  (func (export "global_roundtrip") (param v128) (result v128)
    (local v128)
    (local.set 1 (global.get $g))
    (global.set $g (local.get 0))
    (local.get 1))
  (func (export "zero_local") (result v128) (local v128) (local.get 0))
  (func (export "store_oob") (param v128) (v128.store (i32.const 65530) (local.get 0)))
  (func (export "load") (param i32) (result v128) (v128.load (local.get 0)))
)
"""


def wat(text: str) -> bytes:
    return bytes(wasmtime.wat2wasm(text))


def test_v128_values_cross_the_call_boundary() -> None:
    mask = (1 << 128) - 1
    seen: list[int] = []

    def flip(v: int) -> int:
        seen.append(v)
        return v ^ mask

    with Sandbox.from_wasm(wat(MODULE), imports={"host": {"flip": flip}}) as sb:
        one = 0x00000004_00000003_00000002_00000001
        assert sb.call("add32", one, one) == 0x00000008_00000006_00000004_00000002
        assert sb.call("add32", mask, one) == 0x00000003_00000002_00000001_00000000  # wraps
        assert sb.call("swap", LANES, -5, mask) == (mask, -5, LANES)
        reversed_lanes = int.from_bytes(LANES.to_bytes(16, "little")[::-1], "little")
        assert sb.call("via_host", LANES) == reversed_lanes ^ mask
        assert seen == [reversed_lanes]
        assert sb.call("global_roundtrip", LANES) == 7 | 8 << 64
        assert sb.call("global_roundtrip", 0) == LANES
        assert sb.call("zero_local") == 0
        with pytest.raises(WasmTrap) as trap:
            sb.call("store_oob", mask)  # 16 bytes from 65530: no partial write either
        assert trap.value.kind == "memory_oob"
        assert sb.call("load", 65520) == 0
        for bad in (-1, 1 << 128, 1.5, None):
            with pytest.raises(ValueError):
                sb.call("add32", bad, 0)


def test_exported_v128_global_reads_all_16_bytes() -> None:
    from sandbox.wasm import WasmSandbox
    from sandbox.wasm.abi import ValType

    module = wat(
        '(module (global (export "g") v128 (v128.const i64x2 -1 0x1122334455667788))'
        ' (global (export "h") (mut v128)'
        "  (v128.const i8x16 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16)))"
    )
    engine = WasmSandbox.engine()
    try:
        handle, parsed = engine.load(module)
        instance = engine.instantiate(handle, parsed)
        assert engine.get(instance, "g") == (ValType.V128, 0x1122334455667788 << 64 | (1 << 64) - 1)
        assert engine.get(instance, "h") == (
            ValType.V128,
            LANES + 0x01010101010101010101010101010101,
        )
    finally:
        engine.close()


def test_relaxed_simd_is_refused() -> None:
    relaxed = wat(
        "(module (func (param v128) (result v128) (i32x4.relaxed_trunc_f32x4_s (local.get 0))))"
    )
    with pytest.raises(WasmModuleError) as info:
        Sandbox.from_wasm(relaxed)
    assert info.value.kind == "invalid"


XMM_OFFSET = 160  # xmm0 in the XSAVE area's legacy region (SDM 10.5.1, FXSAVE layout)
PATTERN = bytes.fromhex("5a17c0de") * 4


def _xmm_registers(sb: Any) -> list[bytes]:
    from sandbox._native import ffi

    area = bytes(ffi.buffer(sb.engine_sandbox._machine.vcpu.get_xsave()))
    return [area[XMM_OFFSET + 16 * i : XMM_OFFSET + 16 * (i + 1)] for i in range(16)]


@pytest.mark.parametrize("reset", ["none", "per_call"])
def test_vector_registers_do_not_outlive_a_call(reset: Any) -> None:
    """The engine keeps v128 values in XMM registers while it computes; a trap (here a
    fault in the middle of a v128.store, with the value in a register) must not leave
    them in the vCPU for the next call to find, and neither may a normal return."""
    value = int.from_bytes(PATTERN, "little")
    with Sandbox.from_wasm(wat(MODULE), imports={"host": {"flip": lambda v: v}}, reset=reset) as sb:
        with pytest.raises(WasmTrap):
            sb.call("store_oob", value)
        assert PATTERN not in _xmm_registers(sb)
        assert sb.call("add32", value, 0) == value
        assert PATTERN not in _xmm_registers(sb)
        assert sb.call("zero_local") == 0


@pytest.fixture(scope="module")
def simd_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("wasm-ld") is None:
        pytest.skip("wasm-ld (lld) is needed to build the SIMD test program")
    tmp = tmp_path_factory.mktemp("simd")
    return compile_wasi(tmp, PROGRAM.read_text(), "simd_mix", flags=("-msimd128",))


def _run_wasmtime(program: Path, tmp: Path) -> bytes:
    engine = wasmtime.Engine()
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    store = wasmtime.Store(engine)
    wasi = wasmtime.WasiConfig()
    out = tmp / "wasmtime.stdout"
    wasi.stdout_file = str(out)
    store.set_wasi(wasi)
    instance = linker.instantiate(store, wasmtime.Module.from_file(engine, str(program)))
    start: Any = instance.exports(store)["_start"]
    try:
        start(store)
    except wasmtime.ExitTrap as exit:
        assert exit.code == 0
    return out.read_bytes()


def test_simd_program_matches_wasmtime(simd_program: Path, tmp_path: Path) -> None:
    """simd_mix.c runs ~110 distinct SIMD instructions over random inputs with float
    edge cases (NaN, infinities, -0, halves, out-of-range values) and prints one hash
    per group: a single wrong lane anywhere changes a line."""
    ours = subprocess.run(
        [sys.executable, "-m", "sandbox", "wasm", "run", str(simd_program)],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert ours.returncode == 0, ours.stderr
    theirs = _run_wasmtime(simd_program, tmp_path)
    assert len(theirs.splitlines()) == 6
    assert ours.stdout == theirs
