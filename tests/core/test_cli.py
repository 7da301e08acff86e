"""The command line: `python -m sandbox demo | call | info | build-guest`, each with
--help; results as JSON, errors as one line and a non-zero exit status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support import ROOT

ENV = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}


def sandbox_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sandbox", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
        cwd=ROOT,
    )


@pytest.mark.parametrize("command", [[], ["demo"], ["call"], ["info"], ["build-guest"]])
def test_help(command: list[str]) -> None:
    proc = sandbox_cli(*command, "--help")
    assert proc.returncode == 0
    assert "usage:" in proc.stdout


def test_no_command_is_a_usage_error() -> None:
    proc = sandbox_cli()
    assert proc.returncode == 2
    assert "usage:" in proc.stderr


@pytest.mark.requires_kvm
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["add", "2", "3"], 5),
        (["add", "0x10", "-1"], 15),
        (["echo", "héllo"], "héllo"),
        (["echo_bytes", "hi"], {"bytes": "hi"}),
        (["echo_bool", "true"], True),
        (["echo_f64", "2.5"], 2.5),
        (["noop"], None),
    ],
)
def test_call_prints_json(args: list[str], expected: object) -> None:
    proc = sandbox_cli("call", *args)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == expected


@pytest.mark.requires_kvm
def test_call_guest_output_goes_to_stderr() -> None:
    proc = sandbox_cli("call", "hello", "cli")
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == "Hello, cli!"
    assert "guest says: Hello, cli!" in proc.stderr


@pytest.mark.requires_kvm
@pytest.mark.parametrize(
    ("args", "status", "words"),
    [
        (["fault", "null"], 1, "GuestTrap (page_fault)"),
        (["fault", "abort"], 1, "GuestAbort"),
        (["nope"], 1, "FunctionNotFound"),
        (["add", "1"], 2, "takes 2 arguments"),
        (["add", "one", "2"], 2, "bad argument"),
        (["add", "99999999999", "2"], 1, "out of range"),
        (["--guest", "/no/such.elf", "add", "1", "2"], 1, "GuestNotFound"),
        (["--timeout", "0.05", "fault", "spin_forever"], 1, "CallTimeout"),
        (["--timeout", "-1", "add", "1", "2"], 1, "invalid configuration: timeout"),
        (["--timeout", "0", "add", "1", "2"], 1, "invalid configuration: timeout"),
        (["--guest", "/proc/self/mem", "add", "1", "2"], 1, "OSError"),  # unreadable
    ],
)
def test_call_errors_are_one_line(args: list[str], status: int, words: str) -> None:
    proc = sandbox_cli("call", *args)
    assert proc.returncode == status
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and words in lines[0]


def test_info_json() -> None:
    proc = sandbox_cli("info", "--json")
    info = json.loads(proc.stdout)
    assert info["bundled_guests"] == ["demo", "wasm"]
    assert isinstance(info["nested"], bool)
    assert proc.returncode == (0 if info["kvm"]["usable"] else 1)
    text = sandbox_cli("info")
    assert "nested virtualization:" in text.stdout


@pytest.mark.requires_kvm
def test_build_guest_then_call_it(tmp_path: Path) -> None:
    source = tmp_path / "twice.c"
    source.write_text(
        '#include "sbx.h"\n'
        "SBX_EXPORT(twice, SBX_TAG_I64, SBX_TAG_I64) "
        "{ sbx_ret_i64(ret, 2 * sbx_arg_i64(args, 0)); }\n"
    )
    out = tmp_path / "twice.elf"
    proc = sandbox_cli("build-guest", str(source), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()
    proc = sandbox_cli("call", "--guest", str(out), "twice", "21")
    assert json.loads(proc.stdout) == 42


def test_build_guest_compile_error(tmp_path: Path) -> None:
    source = tmp_path / "broken.c"
    source.write_text("this is not C\n")
    proc = sandbox_cli("build-guest", str(source), "-o", str(tmp_path / "x.elf"))
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: guest build failed")


@pytest.mark.requires_kvm
def test_demo_runs() -> None:
    proc = sandbox_cli("demo", "--quick", timeout=300)
    assert proc.returncode == 0, proc.stderr
    for words in (
        'Sandbox().call("add", 1, 2) = 3',
        "GuestTrap(page_fault)",
        "CallTimeout",
        "every call in fresh state",
        "spawn (Sandbox() to first result)",
        "the same with a new VM",
    ):
        assert words in proc.stdout


def test_bench_output_directory_error() -> None:
    proc = sandbox_cli("bench", "--quick", "--out", "/proc/no-such-dir/out")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: cannot create the output directory /proc/no-such-dir/out: No such file or directory"
    ]
