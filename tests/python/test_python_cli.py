"""`python -m sandbox python` and the demo's Python step, as a user runs them."""

from __future__ import annotations

from pathlib import Path

import pytest
from python_support import run_cli

pytestmark = pytest.mark.requires_kvm


def test_code_and_file(tmp_path: Path) -> None:
    done = run_cli("-c", "import sys; print(sum(range(10)), sys.argv)", "a")
    assert done.returncode == 0 and done.stdout == "45 ['-c', 'a']\n"
    script = tmp_path / "prog.py"
    script.write_text("import sys\nprint('hi', sys.argv[1:])\nsys.exit(3)\n")
    done = run_cli(str(script), "x")
    assert done.returncode == 3 and done.stdout == "hi ['x']\n"
    done = run_cli("-c", "1/0")
    assert done.returncode == 1 and "ZeroDivisionError" in done.stderr
    (tmp_path / "data.txt").write_text("seen")
    done = run_cli("--dir-ro", f"{tmp_path}::/data", "-c", "print(open('/data/data.txt').read())")
    assert done.returncode == 0 and done.stdout == "seen\n"


def test_tier_option(tier: str) -> None:
    done = run_cli("--tier", tier, "-c", "import sys; print(sys.version_info[:2]); sys.exit(4)")
    assert done.returncode == 4 and done.stdout == "(3, 12)\n", done.stderr
    done = run_cli("--tier", "jit", "-c", "pass")
    assert done.returncode == 2 and "invalid choice: 'jit'" in done.stderr


def test_save_state_and_start_from_it(tier: str, tmp_path: Path) -> None:
    state = tmp_path / "state.snap"
    done = run_cli("--tier", tier, "--save-state", str(state), "-c", "import json\nX = 41")
    assert done.returncode == 0 and state.exists(), done.stderr
    code = "import sys; print(X + 1, json.dumps(sys.argv))"
    done = run_cli("--state", str(state), "-c", code, "a")
    assert done.returncode == 0 and done.stdout == '42 ["-c", "a"]\n', done.stderr
    failed = tmp_path / "failed.snap"
    done = run_cli("--save-state", str(failed), "-c", "Y = 1\n1/0")
    assert done.returncode == 1 and not failed.exists()  # saved only after no error
    done = run_cli("--state", str(state), "--tier", tier, "-c", "pass")
    assert done.returncode == 2 and "--tier is the saved state's" in done.stderr
    done = run_cli("--state", str(state), "--dir-ro", f"{tmp_path}::/data", "-c", "pass")
    assert done.returncode == 1 and "saved with the directories none" in done.stderr
    nowhere = tmp_path / "missing" / "x.snap"
    done = run_cli("--save-state", str(nowhere), "-c", "print('kept')")
    assert done.returncode == 1 and done.stdout == "kept\n"
    assert f"cannot write {nowhere}" in done.stderr  # not the temporary file's name
    done = run_cli("--state", str(tmp_path / "missing.snap"), "-c", "pass")
    assert done.returncode == 1 and "No such file" in done.stderr
    state.unlink()


def test_demo_step(capsys: pytest.CaptureFixture[str]) -> None:
    from sandbox.python.cli import demo

    demo()
    out = capsys.readouterr().out
    assert "{'mean': 2.8, 'max': 5}" in out and "ZeroDivisionError" in out
