"""Plain helpers and paths shared by the test folders (tests/core, wasm, host, deploy).
Fixtures live in the conftest.py files; this module holds no tests."""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
from pathlib import Path

import hypothesis
import pytest

from sandbox import _reaper, machines

ROOT = Path(__file__).resolve().parent.parent
GUESTS = ROOT / "guests"
SHARED = ROOT.parent / "shared"


def drain() -> None:
    """Waits for every deferred teardown (close() hands it to a background thread) and
    closes the machines kept for reuse, so that nothing of closed sandboxes remains."""
    gc.collect()
    _reaper.drain()
    machines.release_idle()


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def run_python(code: str, timeout: float) -> str | None:
    """Runs `code` in a fresh interpreter; its stdout, or None if it did not finish."""
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env
        )
    except subprocess.TimeoutExpired:
        return None
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


U64 = (1 << 64) - 1


def spin_reference(n: int) -> int:
    """The demo guest's `spin` loop, in Python."""
    x = 0
    for i in range(n):
        x = (x + (i ^ (x >> 3))) & U64
    return x


def _clang() -> str:
    clang = shutil.which("clang")
    if clang is None:
        pytest.skip("clang is not installed")
    return clang


def compile_wasi(
    tmp_path: Path, source: str, name: str = "prog", flags: tuple[str, ...] = ()
) -> Path:
    """`source` (C) built for wasm32-wasi with clang (-O2 and `flags`); skips where clang
    or its WASI sysroot is missing, fails on any other compiler error."""
    clang = _clang()
    src = tmp_path / f"{name}.c"
    src.write_text(source)
    out = tmp_path / f"{name}.wasm"
    result = subprocess.run(
        [clang, "--target=wasm32-wasi", "-O2", *flags, str(src), "-o", str(out)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        if "wasi" in result.stderr and (
            "not found" in result.stderr or "cannot find" in result.stderr
        ):
            pytest.skip(f"no wasm32-wasi sysroot: {result.stderr.strip()[:200]}")
        raise AssertionError(result.stderr)
    return out


def fuzz_settings(max_examples: int, deadline_ms: int = 2000) -> hypothesis.settings:
    """Settings of the property-based (hypothesis) tests: deterministic (the same
    examples on every run, no example database, nothing written to .hypothesis/), a
    finite deadline per example, and `max_examples` times $SANDBOX_FUZZ_SCALE (default 1;
    raise it for a longer local run, which then also draws other examples)."""
    scale = float(os.environ.get("SANDBOX_FUZZ_SCALE", "1"))
    return hypothesis.settings(
        max_examples=max(1, int(max_examples * scale)),
        derandomize=scale == 1,
        database=None,
        deadline=deadline_ms,
        print_blob=True,
        suppress_health_check=[hypothesis.HealthCheck.too_slow],
    )


# A Wasm module whose `nap` sleeps an hour in WASI poll_oneoff (a sleep on the host,
# outside KVM_RUN): for the tests of what ends it (a time limit, cancel, close).
WASI_SLEEPER = """(module
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory 1)
  ;; one clock subscription at 0: userdata 0, tag 0 (clock), monotonic, 1 hour, relative
  (data (i32.const 16) "\\01\\00\\00\\00\\00\\00\\00\\00\\00\\20\\bc\\be\\46\\03\\00\\00")
  (func (export "nap") (result i32)
    (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128))))"""
