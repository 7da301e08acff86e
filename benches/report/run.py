"""`python -m sandbox bench`: runs the benchmark suite (benches/, pytest-benchmark) and
writes its results as JSON, a Markdown report and PNG plots.

What the command writes into the output directory:

- `results.json`: pytest-benchmark's JSON (statistics of every timed scenario, machine
  info, and each summary row in the benchmark's `extra_info`);
- `rows.json`: the summary rows, skipped ones with their reasons (written by
  benches/conftest.py, --bench-rows; its `format` is model.ROWS_FORMAT);
- `pytest.log`: the suite's terminal output;
- `report.md`, `ratios.png`, `medians.png`: the report and its plots.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from .markdown import render_report
from .model import Run, machine
from .plots import write_plots

BENCHES = Path(__file__).resolve().parent.parent  # the suite: benches/ in the checkout
DEFAULT_OUT = Path("bench-out")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def write_report(out_dir: Path) -> Path:
    """Reads out_dir/rows.json and writes report.md and the plots next to it."""
    run = Run.load(out_dir / "rows.json")
    plots, why = write_plots(run, out_dir)
    report = out_dir / "report.md"
    report.write_text(render_report(run, machine(), plots, why))
    return report


# -- running the suite -----------------------------------------------------------------


def _missing_tools() -> list[str]:
    return [m for m in ("pytest", "pytest_benchmark") if importlib.util.find_spec(m) is None]


def run_bench(quick: bool, out_dir: Path) -> int:
    """Runs benches/ under pytest-benchmark (its output streamed to the terminal and to
    out_dir/pytest.log), then writes the report. Returns an exit status: pytest's when
    it failed, 2 when the suite cannot run from here, else 0."""
    missing = _missing_tools()
    if missing:
        print(
            f"error: the benchmark suite needs {' and '.join(missing)}: "
            "pip install -e '.[dev]' (in the checkout)",
            file=sys.stderr,
        )
        return 2
    out_dir = out_dir.resolve()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(
            f"error: cannot create the output directory {out_dir}: {exc.strerror}", file=sys.stderr
        )
        return 2
    for stale in ("results.json", "rows.json", "report.md", "ratios.png", "medians.png"):
        (out_dir / stale).unlink(missing_ok=True)
    root = BENCHES.parent
    color = "yes" if sys.stdout.isatty() else "no"
    cmd = [
        sys.executable, "-m", "pytest", str(BENCHES),
        "-p", "no:cacheprovider", "-v", "-rs", f"--color={color}",
        f"--benchmark-json={out_dir / 'results.json'}",
        f"--bench-rows={out_dir / 'rows.json'}",
        "--benchmark-columns=min,median,max,rounds",
    ]  # fmt: skip
    if quick:
        cmd.append("--quick")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    print(f"running the benchmark suite ({'quick' if quick else 'full'}) into {out_dir}")
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.monotonic()
    with (
        open(out_dir / "pytest.log", "w") as log,
        subprocess.Popen(
            cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as proc,
    ):
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            log.write(_ANSI.sub("", line))
    status = proc.returncode
    if not (out_dir / "rows.json").is_file():
        print(f"error: the suite wrote no rows (pytest exit status {status})", file=sys.stderr)
        return status or 1
    report = write_report(out_dir)
    print(
        f"\nwrote {report} with its plots, results.json and rows.json in {out_dir} "
        f"({time.monotonic() - t0:.0f} s)"
    )
    return status
