"""`python -m sandbox deploy sysext`: the function host as a Flatcar system extension.

    build_sysext(SysextOptions(out_dir=Path("dist")))

writes into `out_dir`:

- `sandbox-host-<version>-x86-64.raw`: a squashfs image with only `usr/` in it (the
  launcher, one site-packages per Python version, the unit and its `Upholds=` drop-in,
  `extension-release.sandbox-host`, build-info.json), every file root-owned with a
  fixed time: built twice from the same inputs with the same SOURCE_DATE_EPOCH, it is
  the same image byte for byte;
- `SHA256SUMS`: its checksum (what systemd-sysupdate reads, and what Ignition checks);
- `sandbox-host.conf`: the systemd-sysupdate transfer file for `--base-url`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from . import checks, flatcar, payload, units
from .provision import sha256_file

DepsSource = Literal["auto", "environment", "pip"]
Compression = Literal["gzip", "xz", "zstd", "lz4"]
PLACEHOLDER_BASE_URL = "https://downloads.example.com/sandbox-host"
CHECKSUMS = "SHA256SUMS"
TRANSFER = f"{flatcar.NAME}.conf"


class SysextError(RuntimeError):
    """The image cannot be built (a missing tool, a payload that does not fit...)."""


class SysextOptions(BaseModel):
    """What to build. The defaults build what Flatcar needs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    out_dir: Path
    python_versions: tuple[str, ...] = Field(
        flatcar.FLATCAR_PYTHON_VERSIONS,
        min_length=1,
        description="one site-packages per version; the launcher picks the one the "
        "machine's python3 matches",
    )
    deps_from: DepsSource = Field(
        "auto", description="auto: this environment for the running version, pip otherwise"
    )
    wheelhouse: Path | None = Field(None, description="pip: wheels from here, no index")
    extras: tuple[str, ...] | None = Field(None, description="of kvm-sandbox (default: host)")
    requirements: tuple[str, ...] = Field((), description="more requirements to bundle")
    base_url: str = Field(PLACEHOLDER_BASE_URL, description="where the images are served")
    source_date_epoch: int = Field(0, ge=0, description="every timestamp in the image")
    compression: Compression = "gzip"
    bytecode: bool = Field(True, description="ship .pyc (only where an interpreter is here)")
    version: str | None = Field(None, description="image version (default: the package's)")
    # Only for testing the refusal paths: what extension-release claims.
    os_id: str = flatcar.OS_ID
    sysext_level: str = flatcar.SYSEXT_LEVEL
    architecture: str = flatcar.ARCHITECTURE

    @field_validator("python_versions")
    @classmethod
    def _versions(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for version in v:
            flatcar.parse_python_version(version)
        return tuple(sorted(set(v), key=flatcar.parse_python_version))


class SysextBuild(BaseModel):
    """What was built."""

    model_config = ConfigDict(frozen=True)

    image: Path
    sha256: str
    size: int
    checksums: Path
    transfer: Path
    build_info: dict[str, object]


Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def stage_python(site: Path, version: str, options: SysextOptions, log: Log) -> dict[str, object]:
    """Fills `site` with the payload for Python `version`; returns its build-info entry."""
    site.mkdir(parents=True)
    extras = payload.chosen_extras(options.extras)
    source = options.deps_from
    if source == "auto":
        same = version == flatcar.running_python_version() and options.wheelhouse is None
        source = "environment" if same else "pip"
    log(f"python {version}: dependencies from {source} (extras: {', '.join(extras) or '-'})")
    more = options.requirements
    if source == "environment":
        versions = payload.install_from_environment(site, version, extras, more)
    else:
        versions = payload.install_with_pip(
            site, version, extras, more, wheelhouse=options.wheelhouse
        )
    payload.copy_sandbox_package(site)
    problems = checks.check_abi(site, version)
    if problems:
        raise SysextError(
            f"the payload for Python {version} does not fit it:\n  " + "\n  ".join(problems)
        )
    interpreter = checks.find_interpreter(version)
    if interpreter is None:
        checked = f"not imported: no Python {version} on the build machine (wheel tags checked)"
    else:
        checks.smoke_test(site, interpreter)
        checked = f"compiled modules imported with Python {version} on the build machine"
        if options.bytecode:
            final = f"{flatcar.LIB_DIR}/python{version}/site-packages"
            checks.compile_bytecode(site, interpreter, final)
    log(f"python {version}: {len(versions)} distributions; {checked}")
    if version not in flatcar.FLATCAR_PYTHON_VERSIONS:
        log(
            f"note: Flatcar's python extension ships Python "
            f"{' or '.join(flatcar.FLATCAR_PYTHON_VERSIONS)}, not {version}"
        )
    return {"dependencies_from": source, "distributions": versions, "check": checked}


def stage_tree(
    tree: Path, options: SysextOptions, version: str, log: Log = _quiet
) -> dict[str, object]:
    """Writes the image's file tree (only usr/) into `tree`; returns the build info."""
    usr = tree / "usr"
    pythons: dict[str, object] = {}
    for py in options.python_versions:
        site = tree / flatcar.LIB_DIR.lstrip("/") / f"python{py}" / "site-packages"
        pythons[py] = stage_python(site, py, options, log)
    _write(tree / flatcar.LAUNCHER.lstrip("/"), units.launcher(options.python_versions), 0o755)
    systemd = usr / "lib" / "systemd" / "system"
    _write(systemd / flatcar.SERVICE, units.SERVICE_UNIT)
    _write(systemd / "multi-user.target.d" / flatcar.UPHOLDS_DROPIN, units.UPHOLDS_DROPIN)
    release = units.extension_release(
        version,
        os_id=options.os_id,
        sysext_level=options.sysext_level,
        architecture=options.architecture,
    )
    _write(usr / "lib" / "extension-release.d" / f"extension-release.{flatcar.NAME}", release)
    info: dict[str, object] = {
        "name": flatcar.NAME,
        "version": version,
        "architecture": options.architecture,
        "os_id": options.os_id,
        "sysext_level": options.sysext_level,
        "python": pythons,
        "source_date_epoch": options.source_date_epoch,
    }
    _write(
        tree / flatcar.SHARE_DIR.lstrip("/") / "build-info.json",
        json.dumps(info, indent=2, sort_keys=True) + "\n",
    )
    return info


def normalize_tree(tree: Path, epoch: int) -> None:
    """Fixed modes (0755 for directories and executables, 0644 otherwise) and
    timestamps, so that the image depends only on the file contents."""
    for path in [tree, *tree.rglob("*")]:
        if path.is_symlink():
            continue
        if path.is_dir():
            path.chmod(0o755)
        else:
            path.chmod(0o755 if path.stat().st_mode & 0o111 else 0o644)
    for path in [*tree.rglob("*"), tree]:
        os.utime(path, (epoch, epoch), follow_symlinks=False)


def make_squashfs(tree: Path, image: Path, epoch: int, compression: Compression) -> None:
    """mksquashfs `tree` into `image`: root-owned, no xattrs, reproducible."""
    tool = shutil.which("mksquashfs")
    if tool is None:
        raise SysextError(
            "mksquashfs not found: install squashfs-tools (Debian: apt-get install squashfs-tools)"
        )
    image.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}  # flags below
    cmd = [
        tool,
        str(tree),
        str(image),
        "-noappend",
        "-reproducible",
        "-all-root",
        "-no-xattrs",
        "-comp",
        compression,
        "-mkfs-time",
        str(epoch),
        "-all-time",
        str(epoch),
        "-root-mode",
        "755",
        "-quiet",
        "-no-progress",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SysextError(f"mksquashfs failed: {proc.stderr.strip() or proc.stdout.strip()}")


def write_checksums(out: Path) -> Path:
    """SHA256SUMS of every image of this extension in `out` (sysupdate learns the
    available versions from it, so a directory can serve several)."""
    images = sorted(out.glob(f"{flatcar.NAME}-*-*.raw"))
    path = out / CHECKSUMS
    path.write_text("".join(f"{sha256_file(i)}  {i.name}\n" for i in images))
    return path


def package_version() -> str:
    """The installed kvm-sandbox version."""
    return payload.root_distribution().version


def build_sysext(options: SysextOptions, log: Log = _quiet) -> SysextBuild:
    """Builds the image, SHA256SUMS and the sysupdate transfer file in options.out_dir.
    Raises SysextError or payload.PayloadError."""
    version = options.version or package_version()
    out = options.out_dir
    out.mkdir(parents=True, exist_ok=True)
    image = out / flatcar.image_filename(version, options.architecture)
    with tempfile.TemporaryDirectory(prefix=".sysext-", dir=out) as tmp:
        tree = Path(tmp) / "tree"
        tree.mkdir()
        info = stage_tree(tree, options, version, log)
        normalize_tree(tree, options.source_date_epoch)
        make_squashfs(tree, image, options.source_date_epoch, options.compression)
    digest = sha256_file(image)
    checksums = write_checksums(out)
    transfer = out / TRANSFER
    transfer.write_text(units.transfer_file(options.base_url))
    log(f"built {image} ({image.stat().st_size} bytes, sha256 {digest})")
    return SysextBuild(
        image=image,
        sha256=digest,
        size=image.stat().st_size,
        checksums=checksums,
        transfer=transfer,
        build_info=info,
    )
