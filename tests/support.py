"""Plain helpers and paths shared by the test folders (tests/core, wasm, host, deploy).
Fixtures live in the conftest.py files; this module holds no tests."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

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
