"""`python -m sandbox deploy ...` / `python -m sandbox.deploy ...`: wiring and the error
paths that need no image build (tests/deploy/test_deploy_sysext.py builds one)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox.deploy import cli, flatcar
from sandbox.deploy.sysext import SysextError, make_squashfs


def test_add_deploy_parser_wires_both_commands(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox")
    cli.add_deploy_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["deploy", "sysext", "--out", str(tmp_path)])
    assert args.func is cli.run_sysext and args.out == tmp_path
    assert args.python_versions is None and args.deps_from == "auto" and args.bytecode
    args = parser.parse_args(
        ["deploy", "ignition", "--image", "x.raw", "--base-url", "https://h/", "--token-file", "t"]
    )
    assert args.func is cli.run_ignition and not args.sysupdate


def test_sandbox_cli_registers_deploy() -> None:
    """`python -m sandbox deploy` is the deploy package's parser."""
    from sandbox import cli as main_cli

    parser = main_cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert "deploy" in commands.choices
    args = parser.parse_args(["deploy", "sysext", "--out", "dist"])
    assert args.func is cli.run_sysext


def test_module_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sandbox.deploy", "sysext", "--help"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0
    assert "--python-version" in out.stdout and "3.11" in out.stdout


def test_sysext_refuses_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["sysext", "--out", str(tmp_path), "--python-version", "3.x"]) == 2
    assert "3.MINOR" in capsys.readouterr().err


def test_sysext_environment_copy_needs_the_running_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = cli.main(
        ["sysext", "--out", str(tmp_path), "--python-version", "3.99", "--deps-from", "environment"]
    )
    assert status == 1
    assert "--deps-from pip" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.raw"))  # nothing half-built left behind
    assert not list(tmp_path.glob(".sysext-*"))


def test_missing_mksquashfs_is_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SysextError, match="squashfs-tools"):
        make_squashfs(tmp_path, tmp_path / "x.raw", 0, "gzip")


def test_image_discovery(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["ignition", "--base-url", "https://h", "--token-file", str(tmp_path / "t")]
    assert cli.main([*base, "--image", str(tmp_path)]) == 2  # no image in the directory
    assert "exactly one" in capsys.readouterr().err
    for version in ("1.0", "1.1"):
        (tmp_path / flatcar.image_filename(version)).write_bytes(b"x")
    assert cli.main([*base, "--image", str(tmp_path)]) == 2  # two: which one?
    assert "found: " in capsys.readouterr().err
    assert cli.main([*base, "--image", str(tmp_path / "missing.raw")]) == 2
