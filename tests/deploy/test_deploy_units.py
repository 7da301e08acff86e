"""The unit, its drop-in, the launcher, extension-release and the sysupdate transfer
file (sandbox/deploy/units.py), checked as text and with systemd's own tools."""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_support import REPO, flatcar_root, require_tools

from sandbox.deploy import flatcar, units

# systemd-analyze security's exposure score, 0.0 (best) to 10.0. A KVM host cannot
# have PrivateDevices= (it would hide /dev/kvm) nor PrivateNetwork= (it serves HTTP);
# everything else that applies is on. Measured with systemd 252: 1.5 ("OK").
MAX_EXPOSURE = 2.0


def unit_settings(text: str) -> dict[str, list[str]]:
    """`Key=value` lines of a unit file -> {Key: [values in order]} (sections merged)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_service_is_hardened() -> None:
    s = unit_settings(units.SERVICE_UNIT)
    expected = {
        "DynamicUser": "yes",
        "SupplementaryGroups": "kvm",
        "DeviceAllow": "/dev/kvm rw",
        "DevicePolicy": "closed",
        "StateDirectory": flatcar.NAME,
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "PrivateTmp": "yes",
        "RestrictNamespaces": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
        "LoadCredential": f"token:{flatcar.TOKEN_FILE}",
    }
    for key, value in expected.items():
        assert s.get(key) == [value], key
    assert s["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    assert "PrivateDevices" not in s  # would hide /dev/kvm
    exec_start = s["ExecStart"][0].split()
    assert exec_start[0] == flatcar.LAUNCHER
    assert exec_start[1:] == ["--config", flatcar.CONFIG_FILE, "--data-dir", f"%S/{flatcar.NAME}"]
    assert "SANDBOX_HOST_TOKEN_FILE=%d/token" in s["Environment"]
    assert "[Install]" not in units.SERVICE_UNIT  # started by the Upholds= drop-in instead


def test_upholds_dropin() -> None:
    parser = configparser.ConfigParser()
    parser.read_string(units.UPHOLDS_DROPIN)
    assert parser.sections() == ["Unit"]
    assert dict(parser["Unit"]) == {"upholds": flatcar.SERVICE}


def test_extension_release_matches_flatcar() -> None:
    text = units.extension_release("1.2.3")
    fields = dict(line.split("=", 1) for line in text.splitlines())
    assert fields == {
        "ID": "flatcar",
        "SYSEXT_LEVEL": "1.0",
        "ARCHITECTURE": "x86-64",
        "SYSEXT_ID": flatcar.NAME,
        "SYSEXT_VERSION_ID": "1.2.3",
        "EXTENSION_RELOAD_MANAGER": "1",
    }
    assert "VERSION_ID" not in fields  # it would tie the image to one Flatcar release


def test_transfer_file() -> None:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(units.transfer_file("https://dl.example.com/x/"))
    assert dict(parser["Source"]) == {
        "Type": "url-file",
        "Path": "https://dl.example.com/x",
        "MatchPattern": "sandbox-host-@v-%a.raw",
    }
    assert dict(parser["Target"]) == {
        "InstancesMax": "3",
        "Type": "regular-file",
        "Path": flatcar.EXTENSIONS_STORE,
        "MatchPattern": "sandbox-host-@v-%a.raw",
        "CurrentSymlink": flatcar.EXTENSION_LINK,
    }
    # %a is sysupdate's architecture specifier: x86-64, as in the image file name.
    assert flatcar.image_filename("1.0").endswith("-x86-64.raw")


def test_sysupdate_dropin_has_no_dollar() -> None:
    assert "$" not in units.SYSUPDATE_SERVICE_DROPIN  # systemd would expand it


# -- the launcher -------------------------------------------------------------------------


def fake_tree(tmp_path: Path, versions: list[str], built_for: list[str]) -> Path:
    """A tree with the launcher and a stand-in `sandbox.host` that prints its argv and
    sys.path, for each of `versions`' site-packages."""
    launcher = tmp_path / "usr" / "bin" / flatcar.NAME
    launcher.parent.mkdir(parents=True)
    launcher.write_text(units.launcher(built_for))
    launcher.chmod(0o755)
    for version in versions:
        host = tmp_path / "usr/lib" / flatcar.NAME / f"python{version}/site-packages/sandbox/host"
        host.mkdir(parents=True)
        (host.parent / "__init__.py").write_text("")
        (host / "__init__.py").write_text("")
        (host / "__main__.py").write_text(
            "import json, os, sys\n"
            "print(json.dumps({'argv': sys.argv[1:], 'path': sys.path, 'flags': "
            "[sys.flags.no_site, sys.flags.safe_path], "
            "'nobytecode': os.environ.get('PYTHONDONTWRITEBYTECODE')}))\n"
        )
    return launcher


def running() -> str:
    return flatcar.running_python_version()


def test_launcher_runs_the_host_with_the_bundled_packages(tmp_path: Path) -> None:
    launcher = fake_tree(tmp_path, [running()], ["3.99", running()])
    env = {"PATH": os.environ["PATH"], "SANDBOX_HOST_PYTHON": sys.executable}
    out = subprocess.run(
        [str(launcher), "--port", "9"], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen["argv"] == ["--port", "9"]
    site = tmp_path / "usr/lib" / flatcar.NAME / f"python{running()}" / "site-packages"
    assert seen["path"][0] == str(site)
    assert str(tmp_path) not in seen["path"][1:]  # -P: not the working directory
    assert seen["flags"] == [1, True]  # -S: not the interpreter's own site-packages
    assert seen["nobytecode"] == "1"


def test_launcher_explains_a_missing_python(tmp_path: Path) -> None:
    launcher = fake_tree(tmp_path, ["3.99"], ["3.99"])
    env = {"PATH": os.environ["PATH"], "SANDBOX_HOST_PYTHON": f"{sys.executable} nonexistent"}
    out = subprocess.run([str(launcher)], capture_output=True, text=True, env=env)
    assert out.returncode == 1
    assert "has packages for Python 3.99" in out.stderr
    assert f"={running()}" in out.stderr  # what it found
    assert flatcar.ENABLED_SYSEXT_CONF in out.stderr


# -- systemd's own checks -----------------------------------------------------------------


@pytest.fixture
def unit_root(tmp_path: Path) -> Path:
    """A root with this machine's units, ours, and a stand-in launcher."""
    require_tools("systemd-analyze")
    root = flatcar_root(tmp_path / "root")
    system = root / "usr/lib/systemd/system"
    (system / flatcar.SERVICE).write_text(units.SERVICE_UNIT)
    (system / "multi-user.target.d").mkdir()
    (system / "multi-user.target.d" / flatcar.UPHOLDS_DROPIN).write_text(units.UPHOLDS_DROPIN)
    launcher = root / flatcar.LAUNCHER.lstrip("/")
    launcher.parent.mkdir(parents=True)
    launcher.write_text("#!/bin/sh\n")
    launcher.chmod(0o755)
    return root


def verify(root: Path, *unit_names: str, debug: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYSTEMD_LOG_LEVEL": "debug" if debug else "info"}
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={root}", *unit_names],
        capture_output=True,
        text=True,
        env=env,
    )


def assert_verified(proc: subprocess.CompletedProcess[str], *names: str) -> None:
    """verify passed and said nothing about our files: it exits 0 even for unknown keys
    and sections, which it only reports."""
    assert proc.returncode == 0, proc.stderr[-3000:]
    complaints = [line for line in proc.stderr.splitlines() if any(n in line for n in names)]
    assert complaints == []


def test_systemd_analyze_verify(unit_root: Path) -> None:
    proc = verify(unit_root, flatcar.SERVICE, "multi-user.target")
    assert_verified(proc, flatcar.SERVICE, flatcar.UPHOLDS_DROPIN, "sandbox-host")
    # The drop-in is read, and multi-user.target upholds the service (from the unit dump
    # that verify logs at debug level).
    proc = verify(unit_root, "multi-user.target", debug=True)
    dump = proc.stdout + proc.stderr
    assert f"multi-user.target.d/{flatcar.UPHOLDS_DROPIN}" in dump
    assert f"Upholds: {flatcar.SERVICE}" in dump


def test_security_exposure(unit_root: Path) -> None:
    # --threshold is on systemd's internal 0-100 scale (the printed level times 10).
    proc = subprocess.run(
        [
            "systemd-analyze",
            "security",
            "--offline=yes",
            f"--root={unit_root}",
            f"--threshold={round(MAX_EXPOSURE * 10)}",
            "--no-pager",
            flatcar.SERVICE,
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    line = next(x for x in proc.stdout.splitlines() if "Overall exposure level" in x)
    exposure = float(line.split(":")[1].split()[0])
    assert exposure <= MAX_EXPOSURE, proc.stdout


def test_container_unit_verifies(tmp_path: Path) -> None:
    """The container route's unit, with stand-ins for docker and friends."""
    require_tools("systemd-analyze")
    root = flatcar_root(tmp_path / "root")
    name = "sandbox-host-container.service"
    text = (REPO / "deploy/flatcar/units" / name).read_text()
    (root / "usr/lib/systemd/system" / name).write_text(text)
    for tool in ("docker", "install", "chown", "sh"):
        stub = root / "usr/bin" / tool
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\n")
        stub.chmod(0o755)
    # Flatcar's docker extension brings docker.service; a stand-in here.
    (root / "usr/lib/systemd/system/docker.service").write_text(
        "[Service]\nExecStart=/usr/bin/docker\n"
    )
    proc = verify(root, name)
    assert_verified(proc, name)
    assert "--device /dev/kvm" in text
