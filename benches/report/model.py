"""What the report is made of: the machine it ran on, and the rows the suite wrote
(rows.json, written by benches/conftest.py with --bench-rows; its `format` is ROWS_FORMAT),
with the number formats the suite's summary and the report share."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROWS_FORMAT = 1  # the rows.json format this report reads (benches/conftest.py)


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
    from sandbox.kvm import is_nested, kvm_module

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
