"""Helpers of the deploy tests (no tests here): the Debian tools they need, a scratch
root that looks like Flatcar, and systemd-sysext merges inside a private mount
namespace, so nothing is ever mounted on this machine's own /usr."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
IGNITION_SCHEMA = SHARED / "ignition" / "ignition-3.4.schema.json"
EXAMPLES = REPO / "deploy" / "flatcar"

# The Debian package of each tool (scripts/install-deps installs them in CI).
TOOL_PACKAGES = {
    "mksquashfs": "squashfs-tools",
    "unsquashfs": "squashfs-tools",
    "systemd-dissect": "systemd-container",
    "systemd-sysext": "systemd",
    "systemd-analyze": "systemd",
    "unshare": "util-linux",
    "mount": "mount",
    "ignition-validate": "ignition",
}

FLATCAR_OS_RELEASE = """\
NAME="Flatcar Container Linux by Kinvolk"
ID=flatcar
ID_LIKE=coreos
VERSION=4081.2.0
VERSION_ID=4081.2.0
PRETTY_NAME="Flatcar Container Linux by Kinvolk 4081.2.0 (Oklo)"
SYSEXT_LEVEL=1.0
"""


def require_tools(*names: str) -> None:
    """Skips the test, naming the Debian package, unless every tool is on PATH."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        packages = sorted({TOOL_PACKAGES.get(n, n) for n in missing})
        pytest.skip(f"needs {', '.join(missing)} (Debian: apt-get install {' '.join(packages)})")


def require_mounts() -> None:
    """Skips unless this process may mount in a private namespace (root, loop devices)."""
    require_tools("unshare", "mount", "systemd-sysext")
    if os.geteuid() != 0:
        pytest.skip("merging a system extension needs root (mounts in a private namespace)")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a mount namespace here: {probe.stderr.strip()}")
    if not Path("/dev/loop-control").exists():
        pytest.skip("no /dev/loop-control: systemd-sysext cannot attach an image")


def flatcar_root(path: Path, os_release: str = FLATCAR_OS_RELEASE) -> Path:
    """A scratch root that systemd-sysext takes for Flatcar: its os-release, an
    /etc/extensions, and this machine's systemd units (so that `systemd-analyze verify
    --root` finds multi-user.target and the rest of the default dependencies)."""
    (path / "usr" / "lib").mkdir(parents=True)
    (path / "usr" / "lib" / "os-release").write_text(os_release)
    (path / "etc" / "extensions").mkdir(parents=True)
    units = Path("/usr/lib/systemd/system")
    if units.is_dir():
        shutil.copytree(units, path / "usr" / "lib" / "systemd" / "system", symlinks=True)
    return path


def merge_script(root: Path, then: str) -> str:
    """Shell commands that merge the extensions of `root` into `root`/usr and then run
    `then`, meant for `unshare -m sh -c`. /run gets a tmpfs of its own (systemd-sysext
    remounts it as a slave, which fails where it is not a mount point); `root` becomes a
    shared mount so that the overlay systemd-sysext mounts from its own child namespace
    propagates back to this one (and no further: the namespace is private)."""
    r = shlex.quote(str(root))
    return (
        "set -e\n"
        "mount -t tmpfs tmpfs /run\n"
        f"mount --bind {r} {r}\n"
        f"mount --make-rshared {r}\n"
        f"systemd-sysext --root={r} merge\n"
        f"{then}\n"
    )


def run_merged(root: Path, then: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Runs merge_script in a private mount namespace; the mounts die with it."""
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", merge_script(root, then)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
