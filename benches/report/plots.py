"""The report's plots (matplotlib, Agg): ratios.png, every ratio against its target, and
medians.png, the absolute figures of ours and of the floor or peer."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .markdown import when
from .model import Row, Run, format_ratio, format_value

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
        f"Ours against the KVM floor and peers, same run ({when(run.started)}, "
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
        f"Absolute figures, ours and the floor or peer, same run ({when(run.started)})",
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
