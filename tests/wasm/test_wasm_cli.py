"""`python -m sandbox wasm run` as a user meets it: --invoke with arguments (before or
after --, negative numbers too), a trap's message and exit status, and one-line errors
for a module that is not a command, a missing file and a non-Wasm file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

wasmtime = pytest.importorskip("wasmtime")
pytestmark = pytest.mark.requires_kvm

WAT = """(module
  (func (export "div") (param i32 i32) (result i32) (i32.div_s (local.get 0) (local.get 1)))
  (func (export "pair") (result i32 f64) (i32.const -1) (f64.const 2.5)))"""


@pytest.fixture(scope="module")
def module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "m.wasm"
    path.write_bytes(wasmtime.wat2wasm(WAT))
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sandbox", "wasm", "run", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_invoke(module: Path) -> None:
    assert run(str(module), "--invoke", "div", "-7", "2").stdout == "-3\n"
    assert run(str(module), "--invoke", "div", "--", "9", "3").stdout == "3\n"
    assert run(str(module), "--invoke", "pair").stdout == "-1\n2.5\n"


def test_trap_prints_its_kind_and_exits_134(module: Path) -> None:
    proc = run(str(module), "--invoke", "div", "1", "0")
    assert proc.returncode == 134
    assert proc.stderr == "error: div: wasm trap: integer divide by zero (div_zero)\n"


def test_errors_are_one_line(module: Path, tmp_path: Path) -> None:
    cases = [
        ((str(module),), "not a WASI command"),
        ((str(tmp_path / "missing.wasm"),), "does not exist"),
        (("/etc/hostname",), "malformed module"),
        ((str(module), "--invoke", "div", "1"), "takes 2 arguments"),
        ((str(module), "--invoke", "nope"), "exports no function 'nope'"),
    ]
    for args, text in cases:
        proc = run(*args)
        assert proc.returncode == 1, proc.stderr
        assert text in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
