"""Packages for Python sandboxes: pure-Python wheels (paths) or requirement strings,
resolved and installed on the host by pip into a directory that the guest sees
read-only at /packages; their top-level modules are imported into the interpreter's
snapshot. The guest never reaches the network. Installed sets are cached by content
(the wheels' SHA-256, the requirement strings) under $KVM_SANDBOX_CACHE or
~/.cache/kvm-sandbox.

pip installs for the guest's interpreter, not the host's: `--python-version 3.12
--implementation py --abi none --platform any --only-binary=:all:` accepts only wheels
that run anywhere, and anything compiled found after installation (.so, .pyd) is
refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..cachedir import cache_subdir
from ..errors import ArgumentError

PACKAGES_GUEST_PATH = "/packages"
GUEST_PYTHON = "3.12"
PIP_TIMEOUT = 600.0
_SKIP = {"bin", "__pycache__"}


@dataclass(frozen=True)
class PackageSet:
    """An installed set: its directory, the top-level modules to import, a key."""

    directory: Path
    modules: tuple[str, ...]
    key: str


SUBDIR = "python-packages"


def cache_root() -> Path:
    return cache_subdir(SUBDIR)


def _describe(specs: Sequence[object]) -> tuple[list[list[str]], list[str]]:
    described, args = [], []
    for spec in specs:
        if isinstance(spec, os.PathLike) or (isinstance(spec, str) and spec.endswith(".whl")):
            path = Path(spec)
            try:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError as exc:
                raise ArgumentError(f"package {str(spec)!r}: {exc}") from None
            described.append(["wheel", path.name, digest])
            args.append(str(path.resolve()))
        elif isinstance(spec, str) and spec.strip() and not spec.lstrip().startswith("-"):
            described.append(["requirement", spec.strip()])
            args.append(spec.strip())
        else:
            raise ArgumentError(f"packages takes requirement strings and wheel paths, not {spec!r}")
    return described, args


def resolve(specs: Sequence[object] | None) -> PackageSet | None:
    """Installs `specs` (cached). Raises ArgumentError when pip fails (its message
    included) or a package is not pure Python."""
    if not specs:
        return None
    if isinstance(specs, (str, os.PathLike)):
        specs = [specs]
    described, args = _describe(list(specs))
    key = hashlib.sha256(json.dumps([GUEST_PYTHON, described]).encode()).hexdigest()[:24]
    target = cache_root() / key
    if not (target / ".complete").exists():
        _install(args, target)
    modules = sorted(_top_level(target))
    return PackageSet(target, tuple(modules), key)


def _install(args: list[str], target: Path) -> None:
    cache_subdir(SUBDIR, create=True)  # (private: 0700)
    work = Path(tempfile.mkdtemp(prefix=".install-", dir=target.parent))
    try:
        command = [
            sys.executable, "-m", "pip", "install", "--quiet", "--no-input",
            "--disable-pip-version-check", "--no-compile", "--target", str(work),
            "--only-binary=:all:", "--python-version", GUEST_PYTHON,
            "--implementation", "py", "--abi", "none", "--platform", "any", *args,
        ]  # fmt: skip
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=PIP_TIMEOUT, check=False
            )
        except subprocess.TimeoutExpired:
            raise ArgumentError(
                f"pip did not finish installing {args} in {PIP_TIMEOUT:g} s"
            ) from None
        if done.returncode != 0:
            raise ArgumentError(
                f"pip could not install {' '.join(args)} for the sandbox's Python "
                f"{GUEST_PYTHON} (pure-Python wheels only):\n{done.stderr.strip()[-2000:]}"
            )
        compiled = [
            p.relative_to(work) for p in work.rglob("*") if p.suffix in (".so", ".pyd", ".dylib")
        ]
        if compiled:
            names = ", ".join(map(str, compiled[:5]))
            raise ArgumentError(f"packages must be pure Python; these are compiled: {names}")
        (work / ".complete").write_text("ok\n")
        try:
            work.rename(target)
        except OSError:
            if not (target / ".complete").exists():  # not a concurrent install that won
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _top_level(directory: Path) -> list[str]:
    names = []
    for entry in directory.iterdir():
        name = entry.name
        if name.startswith(".") or name in _SKIP or name.endswith((".dist-info", ".data")):
            continue
        if entry.is_dir() and name.isidentifier():
            names.append(name)
        elif entry.suffix == ".py" and entry.stem.isidentifier():
            names.append(entry.stem)
    return names
