"""The Python payload of the image: the sandbox package and its dependencies, installed
for one target Python version into `usr/lib/sandbox-host/python<X.Y>/site-packages`.

Two sources for the dependencies:

- `environment`: the distributions installed in the running interpreter's environment
  (the requirement closure of `kvm-sandbox[host]`), copied file by file from their
  RECORD. Offline, and what the tests ran against; only for the running Python version,
  because compiled modules (pydantic-core, uvloop, httptools...) are built per version.
- `pip`: `pip install --target` with `--python-version X.Y --only-binary=:all:` and
  manylinux x86-64 platforms: binary wheels for the target version, from the index or a
  local `--wheelhouse` (`--no-index --find-links`). Versions are pinned to the ones
  installed here when they are.

The sandbox package itself is always copied from its installation here: it is pure
Python plus an abi3 extension (`_sbx_native.abi3.so`) and the guest ELF files, so one
copy serves every Python 3 version. checks.py then makes sure the result fits the
target version.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as md
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from . import flatcar

DIST_NAME = "kvm-sandbox"
PACKAGE = "sandbox"
DEFAULT_EXTRAS = ("host",)  # used when the distribution defines them
# Flatcar's glibc is far newer than these; wheels are published for one of them.
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")
_SKIP_NAMES = {"__pycache__"}
_SKIP_SUFFIXES = (".pyc", ".pyo", ".o")
_SKIP_FILES = {"_sbx_native.c"}  # cffi's generated source, left by in-place builds


class PayloadError(RuntimeError):
    """The payload cannot be built for this target (the message says what to do)."""


def root_distribution() -> md.Distribution:
    """The installed kvm-sandbox distribution: the one pip installed (it has an
    INSTALLER file) rather than a stale `*.egg-info` of a source tree on sys.path.
    Raises PayloadError if there is none."""
    found = list(md.distributions(name=DIST_NAME))
    installed = [d for d in found if d.read_text("INSTALLER") is not None]
    if not (installed or found):
        raise PayloadError(
            f"{DIST_NAME} is not installed in this environment: install it first "
            "(`pip install -e .` or `make install`), the image is built from it"
        )
    return (installed or found)[0]


def chosen_extras(extras: Sequence[str] | None) -> tuple[str, ...]:
    """The extras of kvm-sandbox to include: `extras`, or DEFAULT_EXTRAS that exist."""
    provided = set(root_distribution().metadata.get_all("Provides-Extra") or [])
    if extras is None:
        return tuple(e for e in DEFAULT_EXTRAS if e in provided)
    unknown = [e for e in extras if e not in provided]
    if unknown:
        raise PayloadError(
            f"{DIST_NAME} has no extra {', '.join(unknown)} (it has: "
            f"{', '.join(sorted(provided)) or 'none'})"
        )
    return tuple(extras)


def target_environment(version: str) -> dict[str, str]:
    """PEP 508 marker values of CPython `version` on x86-64 Linux."""
    flatcar.parse_python_version(version)
    return {
        "python_version": version,
        "python_full_version": f"{version}.0",
        "implementation_name": "cpython",
        "implementation_version": f"{version}.0",
        "platform_python_implementation": "CPython",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "sys_platform": "linux",
        "os_name": "posix",
    }


def _wanted(req: Requirement, extras: Iterable[str], env: dict[str, str] | None) -> bool:
    """Whether `req` applies (its marker, for the base or any of `extras`)."""
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**(env or {}), "extra": extra}) for extra in ("", *extras))


def _is_self(req: Requirement) -> bool:
    return canonicalize_name(req.name) == canonicalize_name(DIST_NAME)


def expanded_extras(extras: Sequence[str], env: dict[str, str] | None = None) -> tuple[str, ...]:
    """`extras` and every extra they pull in through a self-reference (the `host` extra
    requires `kvm-sandbox[wasm]`: then `wasm` too), sorted."""
    requires = [Requirement(text) for text in root_distribution().requires or []]
    chosen = set(extras)
    grew = True
    while grew:
        grew = False
        for req in requires:
            if _is_self(req) and _wanted(req, sorted(chosen), env) and not req.extras <= chosen:
                chosen |= req.extras
                grew = True
    return tuple(sorted(chosen))


def root_requirements(
    version: str, extras: Sequence[str], extra_requirements: Sequence[str] = ()
) -> list[str]:
    """kvm-sandbox's requirements (base and `extras`, with the extras those name through
    a self-reference such as `kvm-sandbox[wasm]`) and `extra_requirements` that apply to
    CPython `version`, as strings without markers (evaluated for the target). The
    self-references themselves are not among them: kvm-sandbox is not on any index, it
    is copied from this installation (copy_sandbox_package)."""
    env = target_environment(version)
    all_extras = expanded_extras(extras, env)
    out = []
    for text in [*(root_distribution().requires or []), *extra_requirements]:
        req = Requirement(text)
        if _is_self(req):
            continue
        if _wanted(req, all_extras, env):
            req.marker = None
            if str(req) not in out:
                out.append(str(req))
    return out


def environment_closure(
    extras: Sequence[str], extra_requirements: Sequence[str] = ()
) -> list[md.Distribution]:
    """The installed distributions that kvm-sandbox[extras] and `extra_requirements`
    need, here, recursively (kvm-sandbox itself excluded). Raises PayloadError naming
    one that is missing."""
    found: dict[str, md.Distribution] = {}
    pending: list[tuple[str, tuple[str, ...]]] = [(DIST_NAME, tuple(extras))]
    for text in extra_requirements:
        req = Requirement(text)
        if _wanted(req, (), None):
            pending.append((req.name, tuple(sorted(req.extras))))
    seen: set[tuple[str, tuple[str, ...]]] = set()
    while pending:
        name, wanted_extras = pending.pop()
        key = (str(canonicalize_name(name)), wanted_extras)
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            raise PayloadError(
                f"{name} is needed by {DIST_NAME} but not installed here: install it, or "
                "build with --deps-from pip"
            ) from None
        if key[0] != DIST_NAME:
            found[key[0]] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if _wanted(req, wanted_extras, None):
                pending.append((req.name, tuple(sorted(req.extras))))
    return [found[k] for k in sorted(found)]


def _skipped(rel: Path) -> bool:
    return (
        any(part in _SKIP_NAMES for part in rel.parts)
        or rel.name.endswith(_SKIP_SUFFIXES)
        or rel.name in _SKIP_FILES
    )


def copy_distribution(dist: md.Distribution, dest: Path) -> int:
    """Copies the files of an installed distribution that live in its site-packages
    (not scripts in bin/, not bytecode) into `dest`. Returns the number of files."""
    files = dist.files
    if files is None:
        raise PayloadError(f"{dist.metadata['Name']} has no RECORD: reinstall it with pip")
    base = Path(str(dist.locate_file(""))).resolve()
    count = 0
    for entry in files:
        src = Path(str(dist.locate_file(entry))).resolve()
        try:
            rel = src.relative_to(base)
        except ValueError:
            continue  # ../../bin/uvicorn and the like
        if _skipped(rel) or not src.is_file():
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
        count += 1
    return count


def install_from_environment(
    dest: Path, version: str, extras: Sequence[str], extra_requirements: Sequence[str] = ()
) -> dict[str, str]:
    """Copies the dependency closure from this environment. Returns {name: version}."""
    running = flatcar.running_python_version()
    if version != running:
        raise PayloadError(
            f"--deps-from environment copies this Python's packages ({running}), not "
            f"{version}'s: use --deps-from pip (or auto) for Python {version}"
        )
    versions = {}
    for dist in environment_closure(extras, extra_requirements):
        copy_distribution(dist, dest)
        versions[dist.metadata["Name"]] = dist.version
    return versions


def local_pins(extras: Sequence[str], extra_requirements: Sequence[str] = ()) -> list[str]:
    """`name==version` for the closure installed here ([] if it is incomplete)."""
    try:
        closure = environment_closure(extras, extra_requirements)
        return [f"{d.metadata['Name']}=={d.version}" for d in closure]
    except PayloadError:
        return []


def install_with_pip(
    dest: Path,
    version: str,
    extras: Sequence[str],
    extra_requirements: Sequence[str] = (),
    *,
    wheelhouse: Path | None = None,
    pin: bool = True,
) -> dict[str, str]:
    """`pip install --target` of binary wheels for CPython `version` on x86-64 Linux.
    Returns {name: version} of what was installed. Raises PayloadError if pip fails."""
    requirements = root_requirements(version, extras, extra_requirements)
    if not requirements:
        return {}
    tag = flatcar.python_tag(version)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-compile",
        "--no-warn-script-location",
        "--target",
        str(dest),
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        version,
        "--abi",
        tag,
        "--abi",
        "abi3",
        "--abi",
        "none",
    ]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    if wheelhouse is not None:
        cmd += ["--no-index", "--find-links", str(wheelhouse)]
    with tempfile.TemporaryDirectory() as tmp:
        if pin and (pins := local_pins(extras, extra_requirements)):
            constraints = Path(tmp) / "constraints.txt"
            constraints.write_text("\n".join(pins) + "\n")
            cmd += ["--constraint", str(constraints)]
        proc = subprocess.run([*cmd, *requirements], capture_output=True, text=True)
    if proc.returncode != 0:
        raise PayloadError(
            f"pip could not install the dependencies for Python {version}:\n"
            f"{proc.stderr.strip() or proc.stdout.strip()}"
        )
    # pip --target leaves bin/ (console scripts) next to the packages: not needed.
    shutil.rmtree(dest / "bin", ignore_errors=True)
    return _installed_versions(dest)


def _installed_versions(site: Path) -> dict[str, str]:
    out = {}
    for dist in md.distributions(path=[str(site)]):
        if dist.metadata["Name"] != DIST_NAME:
            out[dist.metadata["Name"]] = dist.version
    return dict(sorted(out.items()))


def _record_line(path: Path, rel: str) -> str:
    digest = hashlib.sha256(path.read_bytes()).digest()
    b64 = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    return f"{rel},sha256={b64},{path.stat().st_size}"


def copy_sandbox_package(dest: Path) -> str:
    """Copies the installed `sandbox` package into `dest` with a dist-info of its own
    (pip and the sysext's tools see the package by it; the native module checks its
    version against sandbox/_version.py). Returns the version."""
    import sandbox

    root = root_distribution()
    source = Path(sandbox.__file__).resolve().parent
    target = dest / PACKAGE
    shutil.copytree(
        source,
        target,
        ignore=lambda d, names: [n for n in names if _skipped(Path(d, n).relative_to(source))],
    )
    info = dest / f"{DIST_NAME.replace('-', '_')}-{root.version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(root.read_text("METADATA") or root.read_text("PKG-INFO") or "")
    (info / "INSTALLER").write_text("sandbox-deploy\n")
    (info / "top_level.txt").write_text(f"{PACKAGE}\n")
    lines = [
        _record_line(p, p.relative_to(dest).as_posix())
        for p in sorted([*target.rglob("*"), *info.iterdir()])
        if p.is_file()
    ]
    lines.append(f"{info.name}/RECORD,,")
    (info / "RECORD").write_text("\n".join(lines) + "\n")
    return root.version
