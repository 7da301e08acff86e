"""`python -m sandbox bench`: runs the benchmark suite (benches/, pytest-benchmark) and
writes its results as JSON, a Markdown report and PNG plots.

What the command writes into the output directory:

- `results.json`: pytest-benchmark's JSON (statistics of every timed scenario, machine
  info, and each summary row in the benchmark's `extra_info`);
- `rows.json`: the summary rows, skipped ones with their reasons (written by
  benches/conftest.py, --bench-rows; its `format` is ROWS_FORMAT below);
- `pytest.log`: the suite's terminal output;
- `report.md`, `ratios.png`, `medians.png`: the report and its plots.

The suite lives in the source checkout (benches/ next to this package), not in the
installed package: the command needs a checkout and the dev extras (pytest,
pytest-benchmark, matplotlib; wasmtime and hyperlight-sandbox as optional peers).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROWS_FORMAT = 1  # the rows.json format this report reads (benches/conftest.py)
DEFAULT_OUT = Path("bench-out")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def benches_dir() -> Path | None:
    """The suite's directory in the source checkout this package runs from, or None
    (an installed wheel has no benches/)."""
    here = Path(__file__).resolve().parent.parent / "benches"
    return here if (here / "conftest.py").is_file() else None


# -- the machine -------------------------------------------------------------------------


@dataclass(frozen=True)
class Machine:
    cpu: str
    cpus: int
    cpus_allowed: int
    memory_gib: float
    kernel: str
    arch: str
    nested: bool
    kvm_module: str
    python: str

    def describe(self) -> str:
        nested = (
            f"yes: this Linux runs under a hypervisor, and /dev/kvm is nested "
            f"({self.kvm_module or 'no KVM module found'})"
            if self.nested
            else f"no ({self.kvm_module or 'no KVM module found'}, on bare metal)"
        )
        return (
            f"- CPU: {self.cpu}, {self.cpus} CPUs ({self.cpus_allowed} usable by this run), "
            f"{self.memory_gib:.1f} GiB of memory\n"
            f"- Kernel: Linux {self.kernel} ({self.arch})\n"
            f"- Nested KVM: {nested}\n"
            f"- Python: {self.python}"
        )


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def _memory_gib() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / (1 << 20)
    except OSError:
        pass
    return 0.0


def machine() -> Machine:
    from .kvm import is_nested, kvm_module

    info = _cpuinfo()
    cpu = info.get("model name", platform.processor() or "unknown CPU")
    if "cpu family" in info:
        cpu += f" (family {info['cpu family']}, model {info.get('model', '?')})"
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
    return Machine(
        cpu=cpu,
        cpus=os.cpu_count() or 0,
        cpus_allowed=allowed or (os.cpu_count() or 0),
        memory_gib=_memory_gib(),
        kernel=platform.release(),
        arch=platform.machine(),
        nested=is_nested(),
        kvm_module=kvm_module(),
        python=platform.python_version(),
    )


# -- rows ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One summary row of rows.json (see Row.as_dict in benches/conftest.py)."""

    scenario: str
    theme: str
    unit: str
    ours: float | None
    baseline: float | None
    baseline_what: str
    baseline_kind: str
    ratio: float | None
    target: float | None
    met: bool | None
    spread: float
    skipped: str | None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Row:
        return cls(
            scenario=str(d["scenario"]),
            theme=str(d.get("theme", "other")),
            unit=str(d.get("unit", "us")),
            ours=d.get("ours"),
            baseline=d.get("baseline"),
            baseline_what=str(d.get("baseline_what", "")),
            baseline_kind=str(d.get("baseline_kind", "")),
            ratio=d.get("ratio"),
            target=d.get("target"),
            met=d.get("met"),
            spread=float(d.get("spread", 0.0)),
            skipped=d.get("skipped"),
        )

    @property
    def measured(self) -> bool:
        return self.skipped is None and self.ratio is not None


@dataclass(frozen=True)
class Run:
    """What rows.json says about the run."""

    quick: bool
    cpu: str
    started: float
    finished: float
    exit_status: int
    themes: dict[str, str]
    rows: list[Row]
    skipped_tests: list[tuple[str, str]]  # (test id, reason) of every skipped test

    @classmethod
    def load(cls, path: Path) -> Run:
        doc = json.loads(path.read_text())
        if doc.get("format") != ROWS_FORMAT:
            raise ValueError(
                f"{path}: rows format {doc.get('format')!r}, this report reads {ROWS_FORMAT}"
            )
        return cls(
            quick=bool(doc["quick"]),
            cpu=str(doc["cpu"]),
            started=float(doc["started"]),
            finished=float(doc["finished"]),
            exit_status=int(doc.get("exit_status", 0)),
            themes=dict(doc["themes"]),
            rows=[Row.from_dict(r) for r in doc["rows"]],
            skipped_tests=[
                (str(t["test"]), str(t["reason"])) for t in doc.get("skipped_tests", [])
            ],
        )

    def unexplained_skips(self) -> list[tuple[str, str]]:
        """Skipped tests whose reason no row carries: a whole-suite skip (no usable
        /dev/kvm, no gcc, the package not importable) or a scenario without a row."""
        reasons = {r.skipped for r in self.rows if r.skipped}
        return [(t, why) for t, why in self.skipped_tests if why not in reasons]

    def by_theme(self) -> list[tuple[str, list[Row]]]:
        order = list(self.themes) + sorted({r.theme for r in self.rows} - set(self.themes))
        grouped = [(t, [r for r in self.rows if r.theme == t]) for t in order]
        return [(self.themes.get(t, t), rows) for t, rows in grouped if rows]


def format_value(value: float, unit: str) -> str:
    """71.5 us, 74.62 ms, 1.02 s; 68.0 KiB, 134.8 MiB (as the suite's summary)."""
    if unit == "us":
        if value < 1_000:
            return f"{value:,.1f} us"
        if value < 1_000_000:
            return f"{value / 1e3:,.2f} ms"
        return f"{value / 1e6:,.2f} s"
    if unit == "KiB":
        return f"{value:,.1f} KiB" if value < 1024 else f"{value / 1024:,.1f} MiB"
    return f"{value:,.2f} {unit}"


def format_ratio(ratio: float) -> str:
    return f"{ratio:.2f}" if ratio >= 0.095 else f"{ratio:.3f}"


# -- the report --------------------------------------------------------------------------

NOISY_SPREAD = 0.25  # as in benches/conftest.py
_SHORT_REASON = 160  # characters of a skip reason shown in a table cell


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(rows: Sequence[Row]) -> list[str]:
    lines = [
        "| scenario | ours | floor / peer | compared with | ratio | target | met? |",
        "|---|--:|--:|---|--:|--:|:-:|",
    ]
    for r in rows:
        if not r.measured or r.ours is None or r.baseline is None or r.ratio is None:
            reason = r.skipped or "no figures"
            if len(reason) > _SHORT_REASON:
                reason = reason[:_SHORT_REASON].rstrip() + "... (in full below)"
            lines.append(
                f"| {_cell(r.scenario)} | - | - | skipped: {_cell(reason)} | - | - | skipped |"
            )
            continue
        met = "-" if r.met is None else "yes" if r.met else "**NO**"
        if r.spread > NOISY_SPREAD:
            met += " (noisy)"
        lines.append(
            f"| {_cell(r.scenario)} | {format_value(r.ours, r.unit)} "
            f"| {format_value(r.baseline, r.unit)} | {r.baseline_kind}: {_cell(r.baseline_what)} "
            f"| {format_ratio(r.ratio)} | {'-' if r.target is None else f'<= {r.target:g}'} "
            f"| {met} |"
        )
    return lines


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def render_report(run: Run, m: Machine, plots: Sequence[str], plot_error: str = "") -> str:
    rows = run.rows
    targeted = [r for r in rows if r.met is not None]
    missed = [r for r in targeted if not r.met]
    skipped = [r for r in rows if not r.measured]
    mode = "quick mode (fewer rounds and floor readings)" if run.quick else "full mode"
    out = [
        "# Benchmark report: sandbox vs the KVM floor and its peers",
        "",
        f"Run on {_when(run.started)} in {mode}, {run.cpu}; the suite took "
        f"{run.finished - run.started:.0f} s. "
        f"Command: `python -m sandbox bench{' --quick' if run.quick else ''}`.",
        "",
        "## Machine",
        "",
        m.describe(),
        "",
        "## How to read it",
        "",
        "Each row times something the runtime does (**ours**, a median) and the same work "
        "done by the **floor** (a C program doing the bare KVM work: "
        "benches/floor/kvm_floor.c and density_floor.c) or by a **peer** (wasmtime, a "
        "process spawn, hyperlight-sandbox), measured in this run, in between our rounds. "
        "**ratio** = ours / floor-or-peer. A target applies to floors and budgets; peers "
        "are points of reference without one. A row marked (noisy) had floor or peer "
        "readings more than 25% apart. Method: benches/README.md.",
        "",
        "## Summary",
        "",
        f"{len(targeted) - len(missed)}/{len(targeted)} targets met"
        + (f"; missed: {', '.join(r.scenario for r in missed)}" if missed else "")
        + f". {len(skipped)} row(s) skipped (reasons in the tables and below).",
        "",
    ]
    if run.exit_status != 0:
        out += [
            f"**The suite exited with status {run.exit_status}**: a scenario failed; see "
            "pytest.log. The rows below are those that completed.",
            "",
        ]
    for name in plots:
        out += [f"![{name}]({name})", ""]
    if plot_error:
        out += [f"(No plots: {plot_error})", ""]
    for title, theme_rows in run.by_theme():
        out += [f"## {title}", "", *_table(theme_rows), ""]
    if skipped:
        out += ["## Skipped rows, in full", ""]
        out += [f"- **{r.scenario}**: {r.skipped}" for r in skipped]
        out.append("")
    others = run.unexplained_skips()
    if others:
        out += ["## Skipped tests without a row", ""]
        out += [f"- `{test}`: {why}" for test, why in others]
        out.append("")
    out += [
        "## Files",
        "",
        "- `results.json`: pytest-benchmark's JSON (every timed scenario's statistics; each "
        "row also in its benchmark's `extra_info`)",
        "- `rows.json`: the rows of this report",
        "- `pytest.log`: the suite's output",
        "",
    ]
    return "\n".join(out)


# -- plots ---------------------------------------------------------------------------------

OURS_COLOR, BASE_COLOR = "#2b6cb0", "#a0aec0"
MET_COLOR, MISSED_COLOR, PEER_COLOR = "#38a169", "#e53e3e", "#805ad5"
BASE_LABELS = {"floor": "floor", "peer": "peer", "budget": "budget", "ours": "baseline"}


def _layout(run: Run, keep: Any) -> list[tuple[str, Row | None]]:
    """Top-to-bottom entries: a theme heading (row None), then its rows that `keep`."""
    entries: list[tuple[str, Row | None]] = []
    for title, rows in run.by_theme():
        chosen = [r for r in rows if keep(r)]
        if chosen:
            entries.append((title, None))
            entries += [(r.scenario, r) for r in chosen]
    return entries


def _label_rows(ax: Any, entries: Sequence[tuple[str, Row | None]]) -> None:
    ys = list(range(len(entries)))
    ax.set_yticks(ys)
    ax.set_yticklabels([name for name, _ in entries])
    for tick, (_, row) in zip(ax.get_yticklabels(), entries, strict=True):
        if row is None:
            tick.set_fontweight("bold")
            tick.set_fontsize(11)
    ax.set_ylim(len(entries) - 0.5, -0.7)


def plot_ratios(run: Run, path: Path) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    entries = _layout(run, lambda r: r.measured)
    fig, ax = plt.subplots(figsize=(14, 1.4 + 0.36 * len(entries)))
    for y, (_, r) in enumerate(entries):
        if r is None or r.ratio is None:
            continue
        color = PEER_COLOR if r.met is None else MET_COLOR if r.met else MISSED_COLOR
        ax.barh(y, r.ratio, height=0.62, color=color)
        label = format_ratio(r.ratio)
        if r.target is not None:
            ax.plot([r.target, r.target], [y - 0.42, y + 0.42], color="black", lw=2.2)
            label += f"  (target <= {r.target:g})"
        # Right of the bar and of the target mark, so neither hides the text.
        ax.text(max(r.ratio, r.target or 0.0) * 1.07, y, label, va="center", fontsize=9)
    ax.set_xscale("log")
    lo = min((r.ratio for _, r in entries if r and r.ratio), default=0.1)
    hi = max((r.ratio for _, r in entries if r and r.ratio), default=10.0)
    ax.set_xlim(min(lo, 0.5) / 1.6, max(hi, 2.0) * 4)
    ax.axvline(1.0, color="#4a5568", ls="--", lw=1)
    _label_rows(ax, entries)
    ax.set_xlabel("ratio = ours / floor or peer (log scale; 1 = same time or memory)")
    ax.grid(axis="x", which="both", color="#edf2f7")
    ax.set_axisbelow(True)
    ax.set_title(
        f"Ours against the KVM floor and peers, same run ({_when(run.started)}, "
        f"{'quick' if run.quick else 'full'})",
        fontsize=12,
    )
    fig.legend(
        handles=[
            Patch(color=MET_COLOR, label="vs floor or budget: target met"),
            Patch(color=MISSED_COLOR, label="vs floor or budget: target missed"),
            Patch(color=PEER_COLOR, label="vs a peer (no target)"),
            Patch(color="black", label="target (black mark)"),
        ],
        loc="lower center",
        ncol=4,
        fontsize=9,
        frameon=False,
    )
    skipped = [r.scenario for r in run.rows if not r.measured]
    bottom = 0.03
    if skipped:
        note = textwrap.fill(
            "Not shown, skipped (reasons in report.md): " + "; ".join(skipped), 190
        )
        fig.text(0.01, 0.035, note, fontsize=8.5, color="#4a5568", va="bottom")
        bottom += 0.022 * (note.count("\n") + 1)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _value_ticks(ax: Any, unit: str) -> None:
    """Log-axis ticks at round values of the unit: 100 us, 1 ms, ...; 10 KiB, 1 MiB, ..."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    if unit == "KiB":
        ticks = [10.0, 100.0, 1024.0, 10240.0, 102400.0, 1048576.0]
        names = ["10 KiB", "100 KiB", "1 MiB", "10 MiB", "100 MiB", "1 GiB"]
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(
            FuncFormatter(lambda v, _pos: names[ticks.index(v)] if v in ticks else "")
        )
        return
    ax.xaxis.set_major_formatter(
        FuncFormatter(
            lambda v, _pos: format_value(v, unit).replace(".00 ", " ").replace(".0 ", " ")
        )
    )


def plot_medians(run: Run, path: Path) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    units = [u for u in ("us", "KiB") if any(r.measured and r.unit == u for r in run.rows)]
    panels = [_layout(run, lambda r, u=u: r.measured and r.unit == u) for u in units]
    heights = [max(len(p), 2) for p in panels]
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(14, 1.8 + 0.55 * sum(heights)),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for ax, entries, unit in zip(axes[:, 0], panels, units, strict=True):
        values: list[float] = []
        for y, (_, r) in enumerate(entries):
            if r is None or r.ours is None or r.baseline is None:
                continue
            base_label = BASE_LABELS.get(r.baseline_kind, r.baseline_kind)
            ax.barh(y - 0.2, r.ours, height=0.38, color=OURS_COLOR)
            ax.barh(y + 0.2, r.baseline, height=0.38, color=BASE_COLOR)
            ax.text(
                r.ours * 1.08,
                y - 0.2,
                f"ours {format_value(r.ours, unit)}",
                va="center",
                fontsize=8,
            )
            ax.text(
                r.baseline * 1.08,
                y + 0.2,
                f"{base_label} {format_value(r.baseline, unit)}",
                va="center",
                fontsize=8,
            )
            values += [r.ours, r.baseline]
        ax.set_xscale("log")
        if values:
            ax.set_xlim(min(values) / 2, max(values) * 12)
        _value_ticks(ax, unit)
        _label_rows(ax, entries)
        ax.grid(axis="x", which="major", color="#edf2f7")
        ax.set_axisbelow(True)
        what = "time (median, log scale)" if unit == "us" else "resident memory (log scale)"
        ax.set_xlabel(what)
    axes[0, 0].set_title(
        f"Absolute figures, ours and the floor or peer, same run ({_when(run.started)})",
        fontsize=12,
    )
    fig.legend(
        handles=[
            Patch(color=OURS_COLOR, label="ours"),
            Patch(color=BASE_COLOR, label="floor, peer or budget"),
        ],
        loc="lower center",
        ncol=2,
        fontsize=9,
        frameon=False,
    )
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(run: Run, out_dir: Path) -> tuple[list[str], str]:
    """Writes the PNGs; returns their names and, if matplotlib is missing, why none."""
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError as exc:
        return [], f"matplotlib is not installed ({exc}); pip install matplotlib"
    names = []
    if any(r.measured for r in run.rows):
        plot_ratios(run, out_dir / "ratios.png")
        plot_medians(run, out_dir / "medians.png")
        names = ["ratios.png", "medians.png"]
    return names, ""


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
    benches = benches_dir()
    if benches is None:
        print(
            "error: the benchmark suite runs from a source checkout: benches/ is not next "
            f"to this package ({Path(__file__).resolve().parent}); clone the repository and "
            "run `python -m sandbox bench` there",
            file=sys.stderr,
        )
        return 2
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
    root = benches.parent
    color = "yes" if sys.stdout.isatty() else "no"
    cmd = [
        sys.executable, "-m", "pytest", str(benches),
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
