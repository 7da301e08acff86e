"""The README's Flatcar build exactly as a newcomer types it: `python -m sandbox deploy
sysext --out DIR`, no other option. That builds for every Python of Flatcar's python
extension: the running one from this environment, the others with pip from the package
index, so it needs the index (as `make install` does); where none is reachable the test
says so and skips. tests/deploy/test_deploy_sysext.py checks an image in depth; this
checks that the documented command works and what it bundles for each Python."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_support import require_tools
from packaging.utils import canonicalize_name

from sandbox.deploy import flatcar, payload, units
from sandbox.deploy.sysext import PLACEHOLDER_BASE_URL, package_version

# What the `host` extra needs on every Python, `wasm` included (through its
# self-reference kvm-sandbox[wasm]: the self-reference is what used to break the build).
HOST_CLOSURE = {
    "cffi",
    "pydantic",
    "pydantic-core",
    "fastapi",
    "uvicorn",
    "uvloop",
    "httptools",
    "pydantic-settings",
    "python-multipart",
    "wasmtime",
}


def index_unreachable(tmp: Path) -> str | None:
    """Why pip cannot download from its index here, or None when it can."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--only-binary=:all:",
            "--dest",
            str(tmp),
            "packaging",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return None if proc.returncode == 0 else (proc.stderr.strip() or proc.stdout.strip())


def test_documented_sysext_command(tmp_path: Path) -> None:
    require_tools("mksquashfs", "unsquashfs")
    if "host" not in payload.chosen_extras(None):
        pytest.skip("this kvm-sandbox has no host extra")
    out = tmp_path / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "sandbox", "deploy", "sysext", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    if proc.returncode != 0 and (why := index_unreachable(tmp_path / "probe")) is not None:
        pytest.skip(f"no package index reachable for the other Pythons' wheels: {why[-300:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no --base-url" in proc.stderr  # said, not silently assumed

    image = out / flatcar.image_filename(package_version())
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    assert proc.stdout.split()[-2:] == ["sha256", digest]
    assert image.read_bytes()[:4] == b"hsqs"
    assert (out / "SHA256SUMS").read_text() == f"{digest}  {image.name}\n"
    assert (out / f"{flatcar.NAME}.conf").read_text() == units.transfer_file(PLACEHOLDER_BASE_URL)

    info = json.loads(
        subprocess.run(
            ["unsquashfs", "-cat", str(image), f"{flatcar.SHARE_DIR.lstrip('/')}/build-info.json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert sorted(info["python"]) == sorted(flatcar.FLATCAR_PYTHON_VERSIONS)
    running = flatcar.running_python_version()
    listing = subprocess.run(
        ["unsquashfs", "-l", "-d", "", str(image)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    for version, entry in info["python"].items():
        names = {canonicalize_name(n) for n in entry["distributions"]}
        assert names >= HOST_CLOSURE, (version, sorted(HOST_CLOSURE - names))
        assert payload.DIST_NAME not in names
        assert entry["dependencies_from"] == ("environment" if version == running else "pip")
        site = f"/{flatcar.LIB_DIR.lstrip('/')}/python{version}/site-packages"
        assert f"{site}/sandbox/_guests/demo.elf" in listing
        tag = version.replace(".", "")
        assert any(
            p.startswith(f"{site}/pydantic_core/")
            and p.endswith(f".cpython-{tag}-x86_64-linux-gnu.so")
            for p in listing
        ), f"no pydantic-core for Python {version}"
