"""Shared machinery of the benchmark suite: the floor programs, the quick knob, CPU
pinning, the floor- and peer-interleaved measurements, the summary table and the rows
file.

Every scenario compares our median with the floor's median measured in the same run, in
between our rounds (see `Bench.measure`), and reports the ratio: absolute numbers on
this shared, noisy machine drift by tens of percent from minute to minute, ratios taken
under the same conditions do not. Peers (wasmtime, a process spawn, hyperlight-sandbox)
are read the same way, in blocks in between our rounds (`Bench.versus`). Every row of the summary
is also written, with the skipped ones and their reasons, to the file named by
--bench-rows (the input of `python -m sandbox bench`'s report). See benches/README.md.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

FLOOR_SOURCE = Path(__file__).parent / "floor" / "kvm_floor.c"
DENSITY_SOURCE = Path(__file__).parent / "floor" / "density_floor.c"
INPROCESS_SOURCE = Path(__file__).parent / "floor" / "inprocess_floor.c"
QUICK_ENV = "SANDBOX_BENCH_QUICK"
CPU_ENV = "SANDBOX_BENCH_CPU"
ROWS_FORMAT = 1  # version of the --bench-rows file; bump when a key changes meaning
_ROWS_KEY = pytest.StashKey[list["Row"]]()
_CPU_KEY = pytest.StashKey[str]()
_STARTED_KEY = pytest.StashKey[float]()


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
    parser.addoption(
        "--bench-rows",
        default=None,
        metavar="PATH",
        help="benches: also write the summary rows (skipped ones included) as JSON to PATH",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The cluster rows run last: a Ray cluster's processes and the driver's threads
    outlive the module for a while and may load the rows measured after them (the
    1,000-sandbox density row, measured right after them, read 3.1x its floor; 1.6x in
    the last run before they existed)."""
    items.sort(key=lambda item: item.path.name == "bench_cluster.py")


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_ROWS_KEY] = []
    config.stash[_STARTED_KEY] = time.time()
    _SKIPS.clear()


# Every skipped test and why (pytest_runtest_logreport gets no config to stash it in).
_SKIPS: list[dict[str, str]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Remembers every skipped test and why, for --bench-rows: a whole-suite skip (no
    usable /dev/kvm, no gcc) leaves no row, and the report must still say why."""
    if report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2]).removeprefix("Skipped: ")
        _SKIPS.append({"test": report.nodeid, "reason": reason})


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
    subprocess_rounds: int  # peers that start a process: `python -c pass`
    fork_rounds: int  # os.fork + _exit + waitpid
    hyperlight_rounds: int  # hyperlight-sandbox, where it runs
    density_rounds: int  # creations of `density_n` sandboxes (and of the floor's VMs)
    idle_n: int  # sandboxes for the RSS-per-idle-sandbox scenario
    density_n: int = 1000
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
    subprocess_rounds=100,
    fork_rounds=300,
    hyperlight_rounds=20,
    density_rounds=3,
    idle_n=500,
)
QUICK = Settings(
    quick=True,
    spawn_rounds=60,
    spawn_floor_iterations=40,
    call_rounds=600,
    call_floor_roundtrips=600,
    spin_rounds=3,
    subprocess_rounds=15,
    fork_rounds=60,
    hyperlight_rounds=3,
    density_rounds=1,
    idle_n=100,
    warmup_rounds=10,
    spawn_warmup_rounds=2,
    floor_readings=3,
)


def _quick_requested(config: pytest.Config) -> bool:
    env = os.environ.get(QUICK_ENV, "").strip().lower()
    return bool(config.getoption("--quick")) or env not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def settings(pytestconfig: pytest.Config) -> Settings:
    return _settings_of(pytestconfig)


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


def _run_json(exe: Path, *args: int) -> dict[str, Any]:
    """Runs a floor program and returns the JSON object on its last line of output."""
    proc = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{exe.name} failed (exit {proc.returncode}): {proc.stderr.strip() or proc.stdout}"
        )
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@dataclass
class Floor:
    """The compiled floor programs: kvm_floor (benches/floor/kvm_floor.c),
    density_floor (benches/floor/density_floor.c, the same VMs held N at once) and the
    floor as a shared library (benches/floor/inprocess_floor.c, run in this process)."""

    exe: Path
    density_exe: Path
    library: Path

    def run(self, iterations: int = 1, roundtrips: int = 1, spin_n: int = 0) -> dict[str, Any]:
        """One run of the floor: `iterations` VMs created and torn down, `roundtrips`
        exits of one VM, the spin loop for `spin_n` iterations. Returns its JSON line."""
        return _run_json(self.exe, iterations, roundtrips, spin_n)

    def in_this_process(self, iterations: int) -> float:
        """The floor's create-to-first-exit (median of `iterations`, us), its C code run
        inside this process (cffi, ABI mode) instead of in a process of its own."""
        from cffi import FFI

        ffi = FFI()
        ffi.cdef("double floor_create_to_first_exit_us(int iterations);")
        lib = ffi.dlopen(str(self.library))  # loaded once: dlopen returns the same handle
        return float(lib.floor_create_to_first_exit_us(iterations))

    def density(self, n: int) -> dict[str, Any]:
        """`n` floor VMs created and run to their first exit one after the other, all
        held at once: `create_all_us`, `rss_growth_kib`, `teardown_all_us`."""
        return _run_json(self.density_exe, n)


def _compile(gcc: str, source: Path, exe: Path, *flags: str) -> None:
    command = [gcc, "-O2", *flags, "-o", str(exe), str(source)]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"compiling {source} failed:\n{proc.stderr}", pytrace=False)


@pytest.fixture(scope="session")
def floor(tmp_path_factory: pytest.TempPathFactory, _pinned: int | None) -> Floor:
    """The floor programs, compiled with `gcc -O2` for this session."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip(
            "gcc is not installed: the KVM floor program (benches/floor/kvm_floor.c) "
            "cannot be compiled"
        )
    out = tmp_path_factory.mktemp("floor")
    _compile(gcc, FLOOR_SOURCE, out / "kvm_floor")
    _compile(gcc, DENSITY_SOURCE, out / "density_floor")
    _compile(gcc, INPROCESS_SOURCE, out / "libinprocess_floor.so", "-shared", "-fPIC")
    return Floor(out / "kvm_floor", out / "density_floor", out / "libinprocess_floor.so")


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

# The themes of the report, in order: key -> title. Each bench module names its key in
# THEME (a row can override it); the summary and the report follow this order. Row.theme
# is a key.
THEMES = {
    "spawn": "Spawn: a new sandbox to its first result",
    "calls": "Calls into a running sandbox",
    "snapshots": "Snapshots, restore and pools",
    "compute": "Compute",
    "wasm": "Wasm modules in the engine guest",
    "python": "Python functions in the engine guest",
    "function-host": "Function host",
    "density": "Memory and density",
}

# What a row is compared with.
FLOOR, PEER, BUDGET, OURS = "floor", "peer", "budget", "ours"


@dataclass(frozen=True)
class Row:
    """One line of the summary: our figure against a floor, a peer or a budget, taken in
    the same run. `target` is the ratio (ours / baseline) to stay under; None for a plain
    comparison (the peers). A skipped row has no figures, only `skipped`: the reason."""

    scenario: str
    theme: str
    ours: float | None
    baseline: float | None
    baseline_what: str
    baseline_kind: str  # FLOOR, PEER, BUDGET or OURS (another configuration of ours)
    target: float | None
    unit: str = "us"  # of ours and baseline: "us" or "KiB"
    spread: float = 0.0  # (max - min) / median of the baseline's readings
    readings: tuple[float, ...] = ()
    skipped: str | None = None

    @property
    def ratio(self) -> float | None:
        if self.ours is None or not self.baseline:
            return None
        return self.ours / self.baseline

    @property
    def met(self) -> bool | None:
        ratio = self.ratio
        return None if ratio is None or self.target is None else ratio <= self.target

    def as_dict(self) -> dict[str, Any]:
        def r(x: float | None, digits: int = 2) -> float | None:
            return None if x is None else round(x, digits)

        return {
            "scenario": self.scenario,
            "theme": self.theme,
            "unit": self.unit,
            "ours": r(self.ours),
            "baseline": r(self.baseline),
            "baseline_what": self.baseline_what,
            "baseline_kind": self.baseline_kind,
            "ratio": r(self.ratio, 3),
            "target": self.target,
            "met": self.met,
            "spread": round(self.spread, 3),
            "readings": [round(x, 2) for x in self.readings],
            "skipped": self.skipped,
        }


@dataclass
class Versus:
    """Ours against a peer (Bench.versus): the medians (us) and the peer's readings
    (the median of each block of its samples)."""

    ours_us: float
    peer_us: float
    peer_readings_us: list[float]

    @property
    def spread(self) -> float:
        lo, hi = min(self.peer_readings_us), max(self.peer_readings_us)
        return (hi - lo) / self.peer_us if self.peer_us else 0.0


class Opened:
    """The sandboxes the timed rounds of a scenario open: `keep` returns the sandbox it
    is given; `close` (a round's untimed teardown) closes them all and waits until their
    machines are parked or torn down."""

    def __init__(self) -> None:
        self.sandboxes: list[Any] = []

    def keep(self, sb: Any) -> Any:
        self.sandboxes.append(sb)
        return sb

    def close(self, *_: Any) -> None:
        from sandbox import _reaper

        for sb in self.sandboxes:
            sb.close()
        self.sandboxes.clear()
        _reaper.drain()


class Bench:
    """What a scenario uses: `measure` (ours against the floor, in the same run),
    `versus` (ours against a peer, round by round), `report` (a row of the summary table,
    also stored in benchmark.extra_info), `skip` (a row that says why it is missing) and
    `opened` (the sandboxes rounds open, closed in their teardown)."""

    @staticmethod
    def opened() -> Opened:
        return Opened()

    def __init__(
        self,
        benchmark: Any,
        floor: Floor | None,
        settings: Settings,
        rows: list[Row],
        cpu: str,
        theme: str,
    ) -> None:
        self.benchmark = benchmark
        self._floor = floor
        self.settings = settings
        self._rows = rows
        self._cpu = cpu
        self.theme = theme

    @property
    def floor(self) -> Floor:
        assert self._floor is not None, "this bench was created without the floor"
        return self._floor

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
        floor_run: Callable[..., dict[str, Any]] | None = None,
    ) -> tuple[Any, Measurement | None]:
        """Runs `target(*args)` for `rounds` timed rounds under pytest-benchmark
        (pedantic, one call per round, after `warmup_rounds` untimed ones) and reads the
        floor (`floor.run(**floor_args)`, or `floor_run(**floor_args)`, reduced to us by
        `floor_value`) `settings.floor_readings` times: before the first timed round,
        evenly in between (in the untimed setup of a round) and after the last one.
        Returns the target's last result and the measurement, or None for it when
        pytest-benchmark is disabled (--benchmark-disable: the target ran once, untimed).

        `setup`/`teardown` are pedantic's: untimed, around every round; `setup` may
        return (args, kwargs) for the target."""
        read = floor_run if floor_run is not None else self.floor.run
        runs: list[dict[str, Any]] = []
        at = _reading_rounds(rounds, self.settings.floor_readings)
        count = -warmup_rounds

        def setup_with_floor() -> Any:
            nonlocal count
            if count in at:
                runs.append(read(**floor_args))
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
        runs.append(read(**floor_args))
        if self.benchmark.stats is None:
            return result, None
        ours = self.benchmark.stats.stats.median * 1e6
        return result, Measurement(ours, [floor_value(r) for r in runs], runs)

    def versus(
        self,
        ours: Callable[..., Any],
        peer: Callable[[], Any],
        *,
        rounds: int,
        warmup_rounds: int,
        setup: Callable[[], Any] | None = None,
        teardown: Callable[..., None] | None = None,
        peer_rounds: int | None = None,
    ) -> tuple[Any, Any, Versus | None]:
        """Ours against a peer in the same run, read the way the floor is: `ours` is
        timed by pytest-benchmark (pedantic, one call per round, its `setup`/`teardown`
        untimed around each round) and the peer is read `settings.floor_readings` times
        (before the first timed round, evenly in between, after the last one), each
        reading a block of `peer()` calls timed one by one with perf_counter, about
        `peer_rounds` (default `rounds`) in all. Blocks rather than one peer call per
        round: a peer that starts a process disturbs the machine for the round after it,
        and with blocks only a few of our rounds follow a peer. Returns ours' last
        result, the peer's last result and the medians, or None for them under
        --benchmark-disable."""
        readings = self.settings.floor_readings
        per_block = max(1, -(-(peer_rounds or rounds) // readings))
        at = _reading_rounds(rounds, readings)
        samples: list[float] = []
        blocks: list[float] = []
        last: list[Any] = [None]

        def read() -> None:
            block = []
            for _ in range(per_block):
                t0 = time.perf_counter()
                last[0] = peer()
                block.append((time.perf_counter() - t0) * 1e6)
            samples.extend(block)
            blocks.append(statistics.median(block))

        count = -warmup_rounds

        def setup_with_peer() -> Any:
            nonlocal count
            if count in at:
                read()
            count += 1
            return setup() if setup is not None else None

        for _ in range(min(warmup_rounds, per_block)):  # the peer's own first-call costs
            last[0] = peer()
        result = self.benchmark.pedantic(
            ours,
            setup=setup_with_peer,
            teardown=teardown,
            rounds=rounds,
            warmup_rounds=warmup_rounds,
            iterations=1,
        )
        read()
        if self.benchmark.stats is None:
            return result, last[0], None
        v = Versus(self.benchmark.stats.stats.median * 1e6, statistics.median(samples), blocks)
        return result, last[0], v

    def report(
        self,
        scenario: str,
        ours: float,
        baseline: float,
        baseline_what: str,
        target: float | None,
        spread: float = 0.0,
        *,
        key: str | None = None,
        readings: Sequence[float] = (),
        theme: str | None = None,
        unit: str = "us",
        kind: str = FLOOR,
    ) -> Row:
        """Adds a row to the summary table and to benchmark.extra_info: flat for the
        test's main row, under `key` for a secondary one."""
        row = Row(
            scenario,
            theme or self.theme,
            ours,
            baseline,
            baseline_what,
            kind,
            target,
            unit,
            spread,
            tuple(readings),
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
        self,
        scenario: str,
        m: Measurement,
        floor_what: str,
        target: float | None,
        *,
        key: str | None = None,
        theme: str | None = None,
    ) -> Row:
        return self.report(
            scenario,
            m.ours_us,
            m.floor_us,
            floor_what,
            target,
            m.floor_spread,
            key=key,
            readings=m.floor_readings_us,
            theme=theme,
        )

    def report_versus(
        self,
        scenario: str,
        v: Versus,
        peer_what: str,
        target: float | None = None,
        *,
        key: str | None = None,
        theme: str | None = None,
    ) -> Row:
        return self.report(
            scenario,
            v.ours_us,
            v.peer_us,
            peer_what,
            target,
            v.spread,
            key=key,
            readings=v.peer_readings_us,
            theme=theme,
            kind=PEER,
        )

    def skip(
        self,
        scenario: str,
        reason: str,
        *,
        baseline_what: str = "",
        kind: str = FLOOR,
        theme: str | None = None,
        now: bool = True,
    ) -> None:
        """Adds a skipped row (no figures, the reason instead) and, with `now`, skips
        the test: a scenario that cannot run here still shows in the report, with why."""
        row = Row(
            scenario, theme or self.theme, None, None, baseline_what, kind, None, skipped=reason
        )
        self._rows.append(row)
        if now:
            _skip(reason)


def _skip(reason: str) -> NoReturn:
    pytest.skip(reason)


def _make_bench(request: pytest.FixtureRequest, benchmark: Any, floor: Floor | None) -> Bench:
    config = request.config
    return Bench(
        benchmark,
        floor,
        _settings_of(config),
        config.stash[_ROWS_KEY],
        config.stash.get(_CPU_KEY, ""),
        getattr(request.module, "THEME", "other"),
    )


def _settings_of(config: pytest.Config) -> Settings:
    return QUICK if _quick_requested(config) else FULL


@pytest.fixture
def bench(request: pytest.FixtureRequest, benchmark: Any, floor: Floor) -> Bench:
    return _make_bench(request, benchmark, floor)


@pytest.fixture
def bench_nofloor(request: pytest.FixtureRequest, benchmark: Any) -> Bench:
    """A bench for scenarios that need neither the floor nor gcc (the peers)."""
    return _make_bench(request, benchmark, None)


NOISY_SPREAD = 0.25  # floor readings of one scenario further apart than this: noisy


def _formatters() -> tuple[Callable[[float, str], str], Callable[[float], str]]:
    """The report's number formats (benches/report/), or plain ones when it cannot be
    imported (it needs the package: then every scenario was skipped anyway)."""
    try:
        from report import format_ratio, format_value
    except ImportError:
        return (lambda value, unit: f"{value:.1f} {unit}"), (lambda ratio: f"{ratio:.2f}")
    return format_value, format_ratio


def _ordered(rows: list[Row]) -> list[Row]:
    """By theme (THEMES order); within one, the floor's and budget rows first, then the
    peers, skipped rows last, each in the order they were reported."""
    rank = {key: i for i, key in enumerate(THEMES)}
    return sorted(
        rows,
        key=lambda r: (
            rank.get(r.theme, len(THEMES)),
            r.baseline_kind == PEER,
            r.skipped is not None,
        ),
    )


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    rows = _ordered(config.stash.get(_ROWS_KEY, []))
    if not rows:
        return
    quick = _quick_requested(config)
    fmt_value, fmt_ratio = _formatters()
    header = ("scenario", "ours", "floor/peer", "ratio", "target", "met?")
    body: list[tuple[str, ...]] = []
    for r in rows:
        if r.skipped is not None or r.ours is None or r.baseline is None or r.ratio is None:
            body.append((r.scenario, "-", "-", "-", "-", "skipped"))
            continue
        met = "-" if r.met is None else "yes" if r.met else "NO"
        if r.spread > NOISY_SPREAD:
            met += " (noisy)"
        body.append(
            (
                r.scenario,
                fmt_value(r.ours, r.unit),
                fmt_value(r.baseline, r.unit),
                fmt_ratio(r.ratio),
                "-" if r.target is None else f"<= {r.target:g}",
                met,
            )
        )
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def fmt(line: Sequence[str]) -> str:
        rest = zip(line[1:], widths[1:], strict=True)
        cells = [line[0].ljust(widths[0])] + [c.rjust(w) for c, w in rest]
        return "| " + " | ".join(cells) + " |"

    tr = terminalreporter
    mode = ", ".join(["quick" if quick else "full", config.stash.get(_CPU_KEY, "not pinned")])
    tr.write_sep("=", f"sandbox vs KVM floor and peers ({mode})")
    tr.write_line(fmt(header))
    tr.write_line("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in body:
        tr.write_line(fmt(line))
    tr.write_line("")
    tr.write_line("floor/peer of each row, measured in this run in between our rounds:")
    for r in rows:
        if r.skipped is not None:
            tr.write_line(f"  {r.scenario}: SKIPPED: {r.skipped}")
        else:
            tr.write_line(
                f"  {r.scenario}: {r.baseline_kind}: {r.baseline_what} "
                f"(readings spread {r.spread:.0%})"
            )
    targeted = [r for r in rows if r.met is not None]
    missed = [r.scenario for r in targeted if not r.met]
    skipped = sum(r.skipped is not None for r in rows)
    tr.write_line(
        f"{len(targeted) - len(missed)}/{len(targeted)} targets met"
        + (f"; missed: {', '.join(missed)}" if missed else "")
        + (f"; {skipped} row(s) skipped" if skipped else "")
    )
    if any(r.spread > NOISY_SPREAD for r in rows):
        tr.write_line(
            f"(noisy): the floor or peer moved by more than {NOISY_SPREAD:.0%} during that "
            "scenario; its ratio is less trustworthy than the others, rerun it"
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Writes --bench-rows: every row (skipped ones with their reasons) and the run's
    settings. The contract with the report (benches/report/): ROWS_FORMAT, `themes`
    (key -> title, in report order), per row the keys of Row.as_dict, and `skipped_tests`
    (test id and reason of every skipped test, rows or not)."""
    config = session.config
    path = config.getoption("--bench-rows")
    if not path:
        return
    started = config.stash.get(_STARTED_KEY, time.time())
    doc = {
        "format": ROWS_FORMAT,
        "quick": _quick_requested(config),
        "cpu": config.stash.get(_CPU_KEY, "not pinned"),
        "started": started,
        "finished": time.time(),
        "python": sys.version.split()[0],
        "exit_status": int(exitstatus),
        "themes": THEMES,
        "rows": [r.as_dict() for r in _ordered(config.stash.get(_ROWS_KEY, []))],
        "skipped_tests": _SKIPS,
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(doc, indent=2) + "\n")
