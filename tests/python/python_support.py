"""Helpers of the Python-guest tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from support import ROOT

NO_WASM2C = shutil.which("wasm2c") is None  # the AOT tier needs it (wabt)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m sandbox python ARGS...` in a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "sandbox", "python", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def run_script(
    script: Path, source: str, *args: str, env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """`source` written to `script` (shipped functions need a file) and run in a new
    process with this checkout importable; exits non-zero are for the caller to check."""
    script.write_text(source)
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environ,
        check=False,
    )


def make_wheel(directory: Path, name: str, version: str, files: dict[str, str]) -> Path:
    """A pure-Python wheel built here (no index needed): `files` maps paths to source."""
    dist = f"{name}-{version}"
    path = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as whl:
        for rel, text in files.items():
            whl.writestr(rel, text)
        whl.writestr(
            f"{dist}.dist-info/METADATA",
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        )
        whl.writestr(
            f"{dist}.dist-info/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        record = [f"{rel},," for rel in files] + [
            f"{dist}.dist-info/METADATA,,",
            f"{dist}.dist-info/WHEEL,,",
            f"{dist}.dist-info/RECORD,,",
        ]
        whl.writestr(f"{dist}.dist-info/RECORD", "\n".join(record) + "\n")
    return path
