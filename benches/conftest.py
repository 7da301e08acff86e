"""Shared machinery of the benchmark suite: the KVM floor program, the quick knob, the
floor-bracketed measurement and the summary table.

Every scenario compares our median with the floor's median measured in the same run, in
between our rounds (see `measure`), and reports the ratio: absolute numbers on this shared,
noisy machine drift by tens of percent from minute to minute, ratios taken under the same
conditions do not. See benches/README.md.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

FLOOR_SOURCE = Path(__file__).parent / "floor" / "kvm_floor.c"
QUICK_ENV = "SANDBOX_BENCH_QUICK"
_ROWS_KEY = pytest.StashKey[list["Row"]]()


# -- options -----------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--quick",
        action="store_true",
        default=False,
        help=f"benches: fewer rounds and floor readings (same as {QUICK_ENV}=1)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_ROWS_KEY] = []


@dataclass(frozen=True)
class Settings:
    """How much to measure. Quick mode keeps every workload the same size (spin n
    included: only the ratio matters) and takes fewer rounds and floor readings."""

    quick: bool
    spawn_rounds: int
    spawn_floor_iterations: int  # VMs created per floor reading
    call_rounds: int
    call_floor_roundtrips: int  # exits per floor reading
    spin_rounds: int
    spin_n: int = 100_000_000
    warmup_rounds: int = 20
    spawn_warmup_rounds: int = 3
    floor_readings: int = 5  # floor runs per scenario: before, in between, after


FULL = Settings(
    quick=False,
    spawn_rounds=400,
    spawn_floor_iterations=100,
    call_rounds=5000,
    call_floor_roundtrips=2000,
    spin_rounds=15,
)
QUICK = Settings(
    quick=True,
    spawn_rounds=60,
    spawn_floor_iterations=40,
    call_rounds=600,
    call_floor_roundtrips=600,
    spin_rounds=3,
    warmup_rounds=10,
    spawn_warmup_rounds=2,
    floor_readings=3,
)


def _quick_requested(config: pytest.Config) -> bool:
    env = os.environ.get(QUICK_ENV, "").strip().lower()
    return bool(config.getoption("--quick")) or env not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def settings(pytestconfig: pytest.Config) -> Settings:
    return QUICK if _quick_requested(pytestconfig) else FULL


# -- KVM and the floor program -------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def _kvm_usable() -> None:
    """Skips the whole suite, with the reason, where the runtime cannot run."""
    try:
        from sandbox.kvm import Kvm
    except ImportError as exc:
        pytest.skip(
            f"the sandbox package cannot be imported ({exc}); build it in place with "
            "`python3 setup.py build_ext --inplace` and run with PYTHONPATH=<repo root>"
        )
    from sandbox import KvmUnavailable

    try:
        Kvm.shared()
    except KvmUnavailable as exc:
        pytest.skip(f"/dev/kvm is not usable: {exc}")


@dataclass
class Floor:
    """The compiled kvm_floor program (benches/floor/kvm_floor.c)."""

    exe: Path

    def run(self, iterations: int = 1, roundtrips: int = 1, spin_n: int = 0) -> dict[str, Any]:
        """One run of the floor: `iterations` VMs created and torn down, `roundtrips`
        exits of one VM, the spin loop for `spin_n` iterations. Returns its JSON line."""
        proc = subprocess.run(
            [str(self.exe), str(iterations), str(roundtrips), str(spin_n)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"kvm_floor failed (exit {proc.returncode}): {proc.stderr.strip() or proc.stdout}"
            )
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        return result


@pytest.fixture(scope="session")
def floor(tmp_path_factory: pytest.TempPathFactory, _kvm_usable: None) -> Floor:
    """kvm_floor.c compiled with `gcc -O2` for this session."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed: the KVM floor program (benches/floor/kvm_floor.c) "
                    "cannot be compiled")
    exe = tmp_path_factory.mktemp("floor") / "kvm_floor"
    proc = subprocess.run(
        [gcc, "-O2", "-o", str(exe), str(FLOOR_SOURCE)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.fail(f"compiling {FLOOR_SOURCE} failed:\n{proc.stderr}", pytrace=False)
    return Floor(exe)


# -- measuring against the floor -----------------------------------------------------


@dataclass
class Measurement:
    """Our samples (us) and the floor readings (us) taken in between them."""

    ours_us: float  # median of our rounds
    floor_readings_us: list[float]
    floor_runs: list[dict[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def floor_us(self) -> float:
        """The median of the readings: the same statistic as ours, over the same time
        span (with two readings, their mean)."""
        return statistics.median(self.floor_readings_us)

    @property
    def floor_spread(self) -> float:
        """(max - min) / median of the floor readings: how much the machine moved while
        we measured."""
        lo, hi = min(self.floor_readings_us), max(self.floor_readings_us)
        return (hi - lo) / self.floor_us if self.floor_us else 0.0


def _reading_rounds(rounds: int, readings: int) -> set[int]:
    """Measured-round indices before which the floor is read (the last reading comes
    after the final round): evenly spread, first one before round 0."""
    inner = max(readings - 1, 1)
    return {round(i * rounds / inner) for i in range(inner)}


def measure(
    benchmark: Any,
    floor: Floor,
    settings: Settings,
    target: Callable[..., Any],
    *,
    floor_value: Callable[[dict[str, Any]], float],
    floor_args: dict[str, int],
    rounds: int,
    warmup_rounds: int,
    args: Sequence[Any] = (),
    setup: Callable[[], Any] | None = None,
    teardown: Callable[..., None] | None = None,
) -> tuple[Any, Measurement | None]:
    """Runs `target` for `rounds` timed rounds under pytest-benchmark (pedantic, one
    iteration per round) and reads the floor `settings.floor_readings` times: before the
    first measured round, evenly in between (in the untimed setup of a round) and after
    the last. Returns the target's last result and the measurement (None when
    pytest-benchmark is disabled, e.g. --benchmark-disable).

    `setup`/`teardown` are pedantic's: untimed, around every round."""
    runs: list[dict[str, Any]] = []
    at = _reading_rounds(rounds, settings.floor_readings)
    count = -warmup_rounds

    def setup_with_floor() -> Any:
        nonlocal count
        if count in at:
            runs.append(floor.run(**floor_args))
        count += 1
        return setup() if setup is not None else None

    result = benchmark.pedantic(
        target,
        args=tuple(args),
        setup=setup_with_floor,
        teardown=teardown,
        rounds=rounds,
        warmup_rounds=warmup_rounds,
        iterations=1,
    )
    runs.append(floor.run(**floor_args))
    if benchmark.stats is None:  # benchmarking disabled: the target ran once, untimed
        return result, None
    ours = benchmark.stats.stats.median * 1e6
    return result, Measurement(ours, [floor_value(r) for r in runs], runs)


# -- reporting ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    scenario: str
    ours_us: float
    floor_us: float
    floor_what: str
    target: float
    floor_spread: float

    @property
    def ratio(self) -> float:
        return self.ours_us / self.floor_us

    @property
    def met(self) -> bool:
        return self.ratio <= self.target

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "ours_us": round(self.ours_us, 2),
            "floor_us": round(self.floor_us, 2),
            "floor": self.floor_what,
            "ratio": round(self.ratio, 3),
            "target": self.target,
            "met": self.met,
            "floor_spread": round(self.floor_spread, 3),
        }


@pytest.fixture
def report(request: pytest.FixtureRequest, benchmark: Any, settings: Settings) -> Callable[..., None]:
    """report(scenario, ours_us, floor_us, floor_what, target, floor_spread, key=None):
    adds a row to the summary table and to benchmark.extra_info (flat for the test's
    main row, under `key` for a secondary one)."""
    rows = request.config.stash[_ROWS_KEY]

    def add(
        scenario: str,
        ours_us: float,
        floor_us: float,
        floor_what: str,
        target: float,
        floor_spread: float = 0.0,
        key: str | None = None,
    ) -> None:
        row = Row(scenario, ours_us, floor_us, floor_what, target, floor_spread)
        rows.append(row)
        info = row.as_dict()
        if key is None:
            benchmark.extra_info.update(info)
            benchmark.extra_info["quick"] = settings.quick
        else:
            benchmark.extra_info[key] = info

    return add


def report_measurement(
    report: Callable[..., None], scenario: str, m: Measurement, floor_what: str, target: float
) -> None:
    report(scenario, m.ours_us, m.floor_us, floor_what, target, m.floor_spread)


NOISY_SPREAD = 0.25  # floor readings of one scenario further apart than this: noisy


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    rows = config.stash.get(_ROWS_KEY, [])
    if not rows:
        return
    quick = _quick_requested(config)
    header = ("scenario", "ours (median us)", "floor/peer (median us)", "ratio", "target", "met?")
    body = [
        (
            r.scenario,
            f"{r.ours_us:,.1f}",
            f"{r.floor_us:,.1f}",
            f"{r.ratio:.2f}",
            f"<= {r.target:g}",
            ("yes" if r.met else "NO") + (" (noisy)" if r.floor_spread > NOISY_SPREAD else ""),
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def fmt(line: Sequence[str]) -> str:
        cells = [line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:], widths[1:])]
        return "| " + " | ".join(cells) + " |"

    tr = terminalreporter
    tr.write_sep("=", "sandbox vs KVM floor" + (" (quick)" if quick else ""))
    tr.write_line(fmt(header))
    tr.write_line("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in body:
        tr.write_line(fmt(line))
    tr.write_line("")
    tr.write_line("floor/peer of each row, measured in this run in between our rounds:")
    for r in rows:
        tr.write_line(f"  {r.scenario}: {r.floor_what} (readings spread {r.floor_spread:.0%})")
    missed = [r.scenario for r in rows if not r.met]
    tr.write_line(
        f"{len(rows) - len(missed)}/{len(rows)} targets met"
        + (f"; missed: {', '.join(missed)}" if missed else "")
    )
    if any(r.floor_spread > NOISY_SPREAD for r in rows):
        tr.write_line(
            f"(noisy): the floor moved by more than {NOISY_SPREAD:.0%} during that scenario; "
            "its ratio is less trustworthy than the others, rerun it"
        )
