"""report.md: the machine, how to read the figures, the summary, one table per theme,
skipped rows and tests with their reasons."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from .model import Machine, Row, Run, format_ratio, format_value

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


def when(ts: float) -> str:
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
        f"Run on {when(run.started)} in {mode}, {run.cpu}; the suite took "
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
