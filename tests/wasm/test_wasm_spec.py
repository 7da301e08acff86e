"""The WebAssembly spec test suite in the VM (runner: tests/wasm/spec_runner.py): every
non-SIMD file must pass at least 99% of its assertions, every SIMD file (simd_*.wast) all of
them unless it is listed in SIMD_XFAIL with a reason; the list is checked both ways (a
listed file that passes fails the test, so that the list stays honest)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import spec_runner as wasm_spec
from spec_common import SUITE, is_simd, spec_files

pytestmark = [
    pytest.mark.requires_kvm,
    pytest.mark.skipif(shutil.which("wast2json") is None, reason="wast2json (wabt) not installed"),
    pytest.mark.skipif(not SUITE.is_dir(), reason=f"{SUITE} not found"),
]


# SIMD files that do not pass yet: file name -> why. Empty: all 56 pass.
SIMD_XFAIL: dict[str, str] = {}


@pytest.mark.parametrize("wast", spec_files(), ids=lambda p: p.stem)
def test_spec_file(wast: Path, tmp_path: Path) -> None:
    result = wasm_spec.run_file(wast, tmp_path)
    first = "\n".join(result.failures[:15])
    if wast.name in SIMD_XFAIL:
        if not result.error and result.failed == 0:
            pytest.fail(f"{wast.name} passes now: remove it from SIMD_XFAIL")
        pytest.xfail(SIMD_XFAIL[wast.name])
    assert not result.error, result.error
    if is_simd(wast):
        assert result.failed == 0, (
            f"{result.passed}/{result.total} passed; first failures:\n{first}"
        )
    else:
        assert result.rate >= 0.99, (
            f"{result.passed}/{result.total} passed; first failures:\n{first}"
        )


def test_xfail_list_names_simd_files() -> None:
    names = {p.name for p in spec_files() if is_simd(p)}
    assert len(names) == 56, sorted(names)
    assert set(SIMD_XFAIL) <= names, set(SIMD_XFAIL) - names


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
        (module (func (export "v") (param f32) (result v128)
                  (f32x4.replace_lane 3 (v128.const i32x4 1 2 3 4) (local.get 0))))
        (assert_return (invoke "v" (f32.const 0)) (v128.const i32x4 1 2 3 0))
        (assert_return (invoke "v" (f32.const 0)) (v128.const i32x4 1 2 4 0))
        (assert_return (invoke "v" (f32.const nan))
                       (v128.const f32x4 1.4e-45 2.8e-45 4.2e-45 nan:canonical))
        (assert_return (invoke "v" (f32.const 1)) (v128.const f32x4 0 0 0 nan:arithmetic))
        """
    )
    result = wasm_spec.run_file(wast, tmp_path / "out")
    assert (result.passed, result.failed) == (5, 4), result.failures
    assert json.dumps(result.failures)
