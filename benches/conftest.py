"""Shared machinery of the benchmark suite: the KVM floor program, the quick knob, CPU
pinning, the floor-interleaved measurement and the summary table.

Every scenario compares our median with the floor's median measured in the same run, in
between our rounds (see `Bench.measure`), and reports the ratio: absolute numbers on
this shared, noisy machine drift by tens of percent from minute to minute, ratios taken
under the same conditions do not. See benches/README.md.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

FLOOR_SOURCE = Path(__file__).parent / "floor" / "kvm_floor.c"
QUICK_ENV = "SANDBOX_BENCH_QUICK"
CPU_ENV = "SANDBOX_BENCH_CPU"
_ROWS_KEY = pytest.StashKey[list["Row"]]()
_CPU_KEY = pytest.StashKey[str]()


# -- options -----------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--quick",
        action="store_true",
        default=False,
        help=f"benches: fewer rounds and floor readings (same as {QUICK_ENV}=1)",
    )
    parser.addoption(
        "--bench-cpu",
        default=os.environ.get(CPU_ENV, "auto"),
        help=f"benches: the CPU to pin the run and the floor to: a number, 'auto' (the "
        f"first allowed CPU, the default) or 'none' (same as {CPU_ENV}=...)",
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
    spawn_warmup_rounds: int = 5
    floor_readings: int = 7  # floor runs per scenario: before, in between, after


FULL = Settings(
    quick=False,
    spawn_rounds=1000,
    spawn_floor_iterations=100,
    call_rounds=5000,
    call_floor_roundtrips=2000,
    spin_rounds=21,
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


@pytest.fixture(scope="session", autouse=True)
def _pinned(pytestconfig: pytest.Config, _kvm_usable: None) -> Iterator[int | None]:
    """Pins this thread (so the sandbox's reaper thread, created later, too) and the
    floor processes it starts to one CPU for the session. On this nested-KVM machine the
    cost of creating and tearing down a VM depends on the CPU it runs on (here ~340 us on
    one, ~410 us on the other, for the floor) and on whether the process has run on
    several; unpinned, the floor and we would each land on either and the spawn ratio
    would swing by +-25% from run to run."""
    choice = str(pytestconfig.getoption("--bench-cpu")).strip().lower()
    if choice == "none" or not hasattr(os, "sched_setaffinity"):
        pytestconfig.stash[_CPU_KEY] = "not pinned"
        yield None
        return
    before = os.sched_getaffinity(0)
    cpu = min(before) if choice == "auto" else int(choice)
    os.sched_setaffinity(0, {cpu})
    pytestconfig.stash[_CPU_KEY] = f"pinned to CPU {cpu}"
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, before)


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
def floor(tmp_path_factory: pytest.TempPathFactory, _pinned: int | None) -> Floor:
    """kvm_floor.c compiled with `gcc -O2` for this session."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip(
            "gcc is not installed: the KVM floor program (benches/floor/kvm_floor.c) "
            "cannot be compiled"
        )
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
    after the final round): evenly spread, the first one before round 0."""
    inner = max(readings - 1, 1)
    return {round(i * rounds / inner) for i in range(inner)}


# -- reporting ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    scenario: str
    ours_us: float
    floor_us: float
    floor_what: str
    target: float
    floor_spread: float
    floor_readings_us: tuple[float, ...] = ()

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
            "floor_readings_us": [round(r, 2) for r in self.floor_readings_us],
        }


class Bench:
    """What a scenario uses: `measure` (ours against the floor, in the same run) and
    `report` (a row of the summary table, also stored in benchmark.extra_info)."""

    def __init__(
        self, benchmark: Any, floor: Floor, settings: Settings, rows: list[Row], cpu: str
    ) -> None:
        self.benchmark = benchmark
        self.floor = floor
        self.settings = settings
        self._rows = rows
        self._cpu = cpu

    def measure(
        self,
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
        """Runs `target(*args)` for `rounds` timed rounds under pytest-benchmark
        (pedantic, one call per round, after `warmup_rounds` untimed ones) and reads the
        floor (`floor.run(**floor_args)`, reduced to us by `floor_value`)
        `settings.floor_readings` times: before the first timed round, evenly in between
        (in the untimed setup of a round) and after the last one. Returns the target's
        last result and the measurement, or None for it when pytest-benchmark is
        disabled (--benchmark-disable: the target ran once, untimed).

        `setup`/`teardown` are pedantic's: untimed, around every round; `setup` may
        return (args, kwargs) for the target."""
        runs: list[dict[str, Any]] = []
        at = _reading_rounds(rounds, self.settings.floor_readings)
        count = -warmup_rounds

        def setup_with_floor() -> Any:
            nonlocal count
            if count in at:
                runs.append(self.floor.run(**floor_args))
            count += 1
            return setup() if setup is not None else None

        result = self.benchmark.pedantic(
            target,
            args=tuple(args),
            setup=setup_with_floor,
            teardown=teardown,
            rounds=rounds,
            warmup_rounds=warmup_rounds,
            iterations=1,
        )
        runs.append(self.floor.run(**floor_args))
        if self.benchmark.stats is None:
            return result, None
        ours = self.benchmark.stats.stats.median * 1e6
        return result, Measurement(ours, [floor_value(r) for r in runs], runs)

    def report(
        self,
        scenario: str,
        ours_us: float,
        floor_us: float,
        floor_what: str,
        target: float,
        floor_spread: float = 0.0,
        key: str | None = None,
        floor_readings_us: Sequence[float] = (),
    ) -> Row:
        """Adds a row to the summary table and to benchmark.extra_info: flat for the
        test's main row, under `key` for a secondary one."""
        row = Row(
            scenario, ours_us, floor_us, floor_what, target, floor_spread, tuple(floor_readings_us)
        )
        self._rows.append(row)
        info = row.as_dict()
        if key is None:
            self.benchmark.extra_info.update(info)
            self.benchmark.extra_info["quick"] = self.settings.quick
            self.benchmark.extra_info["cpu"] = self._cpu
        else:
            self.benchmark.extra_info[key] = info
        return row

    def report_measurement(
        self, scenario: str, m: Measurement, floor_what: str, target: float
    ) -> Row:
        return self.report(
            scenario,
            m.ours_us,
            m.floor_us,
            floor_what,
            target,
            m.floor_spread,
            floor_readings_us=m.floor_readings_us,
        )


@pytest.fixture
def bench(
    request: pytest.FixtureRequest, benchmark: Any, floor: Floor, settings: Settings
) -> Bench:
    config = request.config
    return Bench(
        benchmark, floor, settings, config.stash[_ROWS_KEY], config.stash.get(_CPU_KEY, "")
    )


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
        rest = zip(line[1:], widths[1:], strict=True)
        cells = [line[0].ljust(widths[0])] + [c.rjust(w) for c, w in rest]
        return "| " + " | ".join(cells) + " |"

    tr = terminalreporter
    mode = ", ".join(["quick" if quick else "full", config.stash.get(_CPU_KEY, "not pinned")])
    tr.write_sep("=", f"sandbox vs KVM floor ({mode})")
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
