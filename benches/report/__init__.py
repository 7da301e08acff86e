"""The benchmark report: `python -m sandbox bench` (sandbox/cli.py) loads this package
from the checkout's benches/ and calls `run_bench`, which runs the suite and writes the
report (run.py); the suite's own summary (benches/conftest.py) shares its number formats.
Development tooling, deliberately outside the runtime package: an installed wheel has
neither the suite nor this."""

from __future__ import annotations

from .model import ROWS_FORMAT, Machine, Row, Run, format_ratio, format_value, machine
from .run import run_bench, write_report

__all__ = [
    "ROWS_FORMAT",
    "Machine",
    "Row",
    "Run",
    "format_ratio",
    "format_value",
    "machine",
    "run_bench",
    "write_report",
]
