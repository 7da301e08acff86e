"""Checks that a payload fits its target Python: file names and wheel tags first (no
interpreter needed), then imports with a matching interpreter when the build machine has
one, and the byte-compilation done with that same interpreter."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from . import flatcar
from .payload import PayloadError

_EXT_RE = re.compile(r"\.cpython-(\d)(\d+)-([A-Za-z0-9_]+)-linux-gnu\.so$")


def check_abi(site: Path, version: str) -> list[str]:
    """Problems that keep the payload in `site` from running on CPython `version` on
    x86-64 Linux: extension modules of another version or platform, wheels whose every
    tag is for another interpreter or platform. Empty if none."""
    major, minor = flatcar.parse_python_version(version)
    problems = []
    for path in sorted(site.rglob("*.so")):
        m = _EXT_RE.search(path.name)
        if m is None:
            continue  # *.abi3.so, or a shared library vendored by auditwheel
        if (int(m[1]), int(m[2])) != (major, minor) or m[3] != "x86_64":
            problems.append(f"{path.relative_to(site)} is built for another Python or CPU")
    for wheel in sorted(site.glob("*.dist-info/WHEEL")):
        tags = [
            line.split(":", 1)[1].strip()
            for line in wheel.read_text().splitlines()
            if line.startswith("Tag:")
        ]
        if tags and not any(_tag_fits(t, major, minor) for t in tags):
            problems.append(f"{wheel.parent.name}: wheel tags {', '.join(tags)} do not fit")
    return problems


def _tag_fits(tag: str, major: int, minor: int) -> bool:
    try:
        interpreter, abi, platform = tag.split("-")
    except ValueError:
        return False
    glibc_x86_64 = platform.startswith(("manylinux", "linux_")) and platform.endswith("x86_64")
    if platform != "any" and not glibc_x86_64:
        return False  # Flatcar is glibc on x86-64: no musllinux, no other CPUs
    if interpreter.startswith("py"):
        return interpreter in ("py3", f"py{major}", f"py{major}{minor}") or abi == "none"
    m = re.fullmatch(r"cp(\d)(\d+)", interpreter)
    if m is None or int(m[1]) != major:
        return False
    if abi == "abi3":
        return int(m[2]) <= minor
    return int(m[2]) == minor


def find_interpreter(version: str) -> str | None:
    """A CPython `version` interpreter on this machine (the running one's base
    interpreter first, then python<X.Y> on PATH), or None."""
    candidates = []
    if flatcar.running_python_version() == version:
        candidates.append(getattr(sys, "_base_executable", sys.executable) or sys.executable)
    if found := shutil.which(f"python{version}"):
        candidates.append(found)
    for candidate in candidates:
        try:
            out = subprocess.run(
                [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip() == version:
            return candidate
    return None


def compiled_modules(site: Path) -> list[str]:
    """Dotted names of the extension modules in `site`."""
    names = []
    for path in sorted(site.rglob("*.so")):
        rel = path.relative_to(site)
        stem = rel.name.split(".", 1)[0]
        if not (rel.name.endswith(".abi3.so") or _EXT_RE.search(rel.name)):
            continue
        parts = [*rel.parts[:-1], stem]
        if all(p.isidentifier() for p in parts):
            names.append(".".join(parts))
    return names


def isolated_env(site: Path) -> dict[str, str]:
    """The environment the launcher gives Python: the payload and nothing else."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(site),
        "PYTHONDONTWRITEBYTECODE": "1",
        "LC_ALL": "C.UTF-8",
    }


def host_importable() -> bool:
    """Whether the function host (sandbox.host and its dependencies) imports here: if
    it does, it must import from the image too."""
    try:
        import sandbox.host  # noqa: F401
    except ImportError:
        return False
    return True


def smoke_test(site: Path, interpreter: str) -> None:
    """Imports the sandbox package, every compiled module and (if it imports here) the
    host from `site` with `interpreter`, as the launcher runs it (-S -P). Raises
    PayloadError on failure."""
    modules = ["sandbox", "sandbox._native", *compiled_modules(site)]
    if host_importable():
        modules += ["sandbox.host"]
    code = "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)\n"
    proc = subprocess.run(
        [interpreter, "-S", "-P", "-c", code, *modules],
        capture_output=True,
        text=True,
        env=isolated_env(site),
        timeout=120,
    )
    if proc.returncode != 0:
        raise PayloadError(
            f"the payload does not import with {interpreter}:\n{proc.stderr.strip()[-2000:]}"
        )


def compile_bytecode(site: Path, interpreter: str, final_path: str) -> None:
    """Byte-compiles `site` with `interpreter` (unchecked-hash .pyc: the image is
    immutable, and hash-based .pyc carry no timestamps), recording `final_path` as the
    source location for tracebacks."""
    proc = subprocess.run(
        [
            interpreter,
            "-S",
            "-P",
            "-m",
            "compileall",
            "-q",
            "-j",
            "0",
            "--invalidation-mode",
            "unchecked-hash",
            "-s",
            str(site),
            "-p",
            final_path,
            str(site),
        ],
        capture_output=True,
        text=True,
        env=isolated_env(site),
        timeout=600,
    )
    if proc.returncode != 0:
        raise PayloadError(f"byte-compiling failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
