"""The WebAssembly spec test suite in the VM (runner: tests/wasm/spec_runner.py): every non-SIMD
file must pass at least 99% of its assertions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import spec_runner as wasm_spec
from spec_common import SUITE, spec_files

pytestmark = [
    pytest.mark.requires_kvm,
    pytest.mark.skipif(shutil.which("wast2json") is None, reason="wast2json (wabt) not installed"),
    pytest.mark.skipif(not SUITE.is_dir(), reason=f"{SUITE} not found"),
]


@pytest.mark.parametrize("wast", spec_files(), ids=lambda p: p.stem)
def test_spec_file(wast: Path, tmp_path: Path) -> None:
    result = wasm_spec.run_file(wast, tmp_path)
    assert not result.error, result.error
    assert result.rate >= 0.99, (
        f"{result.passed}/{result.total} passed; first failures:\n"
        + "\n".join(result.failures[:15])
    )


def test_runner_counts_wrong_expectations_as_failures(tmp_path: Path) -> None:
    """The runner is not a rubber stamp: a wrong result, a missing trap and a module that
    should not load are each a failure."""
    wast = tmp_path / "wrong.wast"
    wast.write_text(
        """
        (module (func (export "one") (result i32) (i32.const 1))
                (func (export "div") (param i32) (result i32)
                  (i32.div_u (i32.const 1) (local.get 0))))
        (assert_return (invoke "one") (i32.const 2))
        (assert_return (invoke "one") (i32.const 1))
        (assert_trap (invoke "div" (i32.const 1)) "integer divide by zero")
        (assert_trap (invoke "div" (i32.const 0)) "integer divide by zero")
        (assert_invalid (module (func (result i32) (i64.const 0))) "type mismatch")
        """
    )
    result = wasm_spec.run_file(wast, tmp_path / "out")
    assert (result.passed, result.failed) == (3, 2), result.failures
    assert json.dumps(result.failures)
