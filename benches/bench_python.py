"""Python sandboxes (issue 14): CPython 3.12 for WASI in the Wasm engine guest.

Against budgets (the issue's acceptance, absolute: ratio <= 1): a sandbox from the
initialised interpreter's snapshot to the first result of a trivial function (3 ms), a
fresh-state call of a two-int function (1 ms), a warm call (0.3 ms), RSS per idle
sandbox from one snapshot (2 MiB), 100 live sandboxes. Against the floor: the warm call
and the one exit it costs. Against a peer: the same CPython build under wasmtime's JIT on
a pure-Python workload (a pystone-like loop, json round trips, regex), timed inside the
interpreter in both. pyeryx, the other pre-initialised CPython peer, ships cp312 wheels
only and this machine's Python is 3.11: skipped with that reason (its published
figures are quoted in docs/python.md).

Each of the spawn, call and pure-Python rows is also measured on the AOT tier
(`tier="aot"`: CPython compiled to native code, rows "python AOT: ..."), in the same run,
when the compiled guest is cached; otherwise that row is skipped with the command that
compiles it (about 4 minutes on two cores: benches do not compile). The snapshot row
compares the two tiers' initialised-interpreter snapshots.
"""

from __future__ import annotations

import ast
import gc
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sandbox import Sandbox, SandboxPool, _reaper, machines
from sandbox.pool import ensure_fd_limit
from sandbox.python import interpreter
from sandbox.wasm.aot import compiler

pytestmark = pytest.mark.requires_kvm
THEME = "python"

WORKLOAD = r"""
def workload():
    import json, re, time
    t0 = time.perf_counter()
    # pystone-like: records, attribute access, arithmetic, branches, calls
    class Record:
        __slots__ = ("a", "b", "c")
        def __init__(self, a, b, c):
            self.a, self.b, self.c = a, b, c
    def proc(r, i):
        if i % 3 == 0:
            r.a += i
        elif i % 3 == 1:
            r.b = r.a - i
        else:
            r.c = (r.a * 7 + r.b) % 1009
        return r.c
    r = Record(1, 2, 3)
    acc = 0
    for i in range(60000):
        acc += proc(r, i)
    doc = {"items": [{"id": i, "name": f"n{i}", "tags": ["a", "b"], "v": i / 3} for i in range(50)]}
    for _ in range(60):
        doc = json.loads(json.dumps(doc))
    pat = re.compile(r"(\w+)@(\w+)\.com")
    text = " ".join(f"user{i}@host{i % 7}.com" for i in range(300))
    hits = 0
    for _ in range(30):
        hits += len(pat.findall(text))
    return acc, len(doc["items"]), hits, time.perf_counter() - t0
"""


def add(a, b):
    return a + b


def _rss_kib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return float(line.split()[1])
    return 0.0


TIERS = ["interp", "aot"]
NOT_COMPILED = (
    "the compiled CPython guest is not cached (benches do not compile it): "
    "python -m sandbox python --tier aot -c pass (about 4 minutes on two cores)"
)


def _name(tier: str, text: str) -> str:
    """A row's scenario: "python: ..." (the engine) or "python AOT: ..." (compiled)."""
    return f"python{' AOT' if tier == 'aot' else ''}: {text}"


def _ready(bench: Any, tier: str, text: str, kind: str = "budget") -> bool:
    """Whether `tier` can be measured; skips the row (with the command) if not."""
    if tier == "aot" and compiler.lookup(interpreter.module()) is None:
        bench.skip(_name(tier, text), NOT_COMPILED, kind=kind)
        return False
    return True


_defined: dict[str, Any] = {}


def defined(tier: str) -> Any:
    """The interpreter's snapshot with `add` defined (what a pool member restores to)."""
    if tier not in _defined:
        with Sandbox("python", reset="per_call", tier=tier) as sb:
            assert sb.call(add, 1, 2) == 3
            _defined[tier] = sb.snapshot()
    return _defined[tier]


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("vm", ["new", "spare", "reused"])
def test_python_spawn_to_first_result(
    bench_nofloor: Any,
    tier: str,
    vm: str,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """With a new VM every time (machine reuse off); with every sandbox kept open, each
    taking the spare VM made and warmed in the background after the previous spawn
    (sandbox/machines.py); and as an application that closes and makes sandboxes gets
    it (the closed sandbox's VM reset and reused)."""
    if not _ready(bench_nofloor, tier, f"snapshot -> new sandbox -> first result, a {vm} VM"):
        return
    snap = defined(tier)
    s = bench_nofloor.settings
    if vm == "new":
        monkeypatch.setattr(machines, "MAX_IDLE", 0)
        machines.release_idle()
    holder: list[Any] = []
    kept: list[Any] = []
    request.addfinalizer(lambda: [sb.close() for sb in kept])

    def close(*_: Any) -> None:
        if vm == "spare":
            kept.extend(holder)  # left open: the next spawn cannot reuse its VM
        else:
            for sb in holder:
                sb.close()
        holder.clear()
        _reaper.drain()  # a spare is made (untimed)

    def from_defined() -> Any:
        sb = snap.spawn()
        holder.append(sb)
        return sb.call(add, 1, 2)

    def fresh_interpreter() -> Any:
        sb = Sandbox("python", tier=tier)  # the initialised interpreter: add is sent
        holder.append(sb)
        return sb.call(add, 1, 2)

    result = bench_nofloor.benchmark.pedantic(
        from_defined, teardown=close, rounds=5 if s.quick else 40, warmup_rounds=2, iterations=1
    )
    assert result == 3
    if bench_nofloor.benchmark.stats is None:
        return
    ours = bench_nofloor.benchmark.stats.stats.median * 1e6
    bench_nofloor.report(
        _name(tier, f"snapshot -> new sandbox -> first result, a {vm} VM"),
        ours,
        3000.0,
        "3 ms (issue 14)",
        1.0,
        kind="budget",
    )
    times = []
    for _ in range(3 if s.quick else 15):
        t0 = time.perf_counter()
        fresh_interpreter()
        times.append((time.perf_counter() - t0) * 1e6)
        close()
    times.sort()
    bench_nofloor.report(
        _name(tier, f"Sandbox('python') -> call(add) (add's source sent and compiled), a {vm} VM"),
        times[len(times) // 2],
        3000.0,
        "3 ms (issue 14)",
        1.0,
        key=f"with_compile_{vm}",
        kind="budget",
        readings=times,
    )


@pytest.mark.parametrize("tier", TIERS)
def test_python_warm_call(bench: Any, tier: str) -> None:
    if not _ready(bench, tier, "warm call add(1, 2)"):
        return
    s = bench.settings
    with Sandbox("python", tier=tier) as sb:
        sb.call(add, 1, 2)
        result, m = bench.measure(
            lambda: sb.call(add, 1, 2),
            floor_value=lambda r: r["exit_roundtrip_us"],
            floor_args={"roundtrips": s.call_floor_roundtrips},
            rounds=s.call_rounds // 5,
            warmup_rounds=s.warmup_rounds,
        )
    assert result == 3
    if m is not None:
        bench.report_measurement(
            _name(tier, "warm call add(1, 2) vs one exit"), m, "exit_roundtrip_us", None
        )
        bench.report(
            _name(tier, "warm call add(1, 2)"),
            m.ours_us,
            300.0,
            "0.3 ms (issue 14)",
            1.0,
            key="budget",
            kind="budget",
        )


@pytest.mark.parametrize("tier", TIERS)
def test_python_fresh_state_call(bench_nofloor: Any, tier: str) -> None:
    if not _ready(bench_nofloor, tier, "fresh-state call add(1, 2)"):
        return
    s = bench_nofloor.settings
    with Sandbox("python", reset="per_call", tier=tier) as sb:
        sb.call(add, 1, 2)
        result = bench_nofloor.benchmark.pedantic(
            lambda: sb.call(add, 1, 2),
            rounds=s.call_rounds // 5,
            warmup_rounds=s.warmup_rounds,
            iterations=1,
        )
    assert result == 3
    if bench_nofloor.benchmark.stats is None:
        return
    bench_nofloor.report(
        _name(tier, "fresh-state call add(1, 2) (reset='per_call': restore + call)"),
        bench_nofloor.benchmark.stats.stats.median * 1e6,
        1000.0,
        "1 ms (issue 14)",
        1.0,
        kind="budget",
    )
    with SandboxPool("python", size=1, tier=tier) as pool:
        pool.call(add, 1, 2)
        times = []
        for _ in range(20 if s.quick else 200):
            t0 = time.perf_counter()
            pool.call(add, 1, 2)
            times.append((time.perf_counter() - t0) * 1e6)
    times.sort()
    bench_nofloor.report(
        _name(tier, "SandboxPool('python').call(add, 1, 2) (call + restore)"),
        times[len(times) // 2],
        1000.0,
        "1 ms (issue 14)",
        1.0,
        key="pool",
        kind="budget",
    )


CHILD = """
import json, sys, time
t0 = time.perf_counter()
from sandbox import Sandbox
t1 = time.perf_counter()
with Sandbox("python", tier=sys.argv[2]) as sb:
    sb.run(sys.argv[1])
    assert sb.call("add", 1, 2) == 3
t2 = time.perf_counter()
print(json.dumps([(t2 - t1) * 1e6, (t1 - t0) * 1e6]))
"""


def _child_us(script: str, *args: str, env: dict[str, str] | None = None) -> float:
    """Runs `script` (python -c) in a new process; the first number of the JSON list it
    prints last (the child's own timing, in us)."""
    import json
    import os
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return float(json.loads(proc.stdout.strip().splitlines()[-1])[0])


def _first_sandbox_us(tier: str, cache: bool) -> float:
    """A new process's first Sandbox("python") -> call(add), in us (its import of
    sandbox not included), with the interpreter disk cache on or off."""
    from sandbox.python import tcache

    code = "def add(a, b):\n    return a + b\n"
    return _child_us(CHILD, code, tier, env={tcache.ENVIRONMENT: "1" if cache else "0"})


@pytest.mark.parametrize("tier", TIERS)
def test_python_first_sandbox_of_a_process(bench_nofloor: Any, tier: str) -> None:
    """A new process's first Sandbox("python") to the result of a first call: with the
    started interpreter read from the disk cache (sandbox/python/tcache.py), against
    the same with the cache off (CPython started in the VM), in turns. Targets: <= 0.25
    on the engine, <= 0.5 on the AOT tier (CPython's start there is ~0.45 s of ~0.8: the
    rest, reading and rewriting the build and the imports, is paid either way)."""
    text = "first Sandbox('python') -> call(add) of a new process: disk cache / started afresh"
    if not _ready(bench_nofloor, tier, text, kind="ours"):
        return
    _first_sandbox_us(tier, cache=True)  # saves the interpreter (before it exits) if need be
    cached: list[float] = []
    fresh: list[float] = []
    for _ in range(2 if bench_nofloor.settings.quick else 6):
        cached.append(_first_sandbox_us(tier, cache=True))
        fresh.append(_first_sandbox_us(tier, cache=False))
    cached.sort()
    fresh.sort()
    bench_nofloor.report(
        _name(tier, text),
        cached[len(cached) // 2],
        fresh[len(fresh) // 2],
        "the same, KVM_SANDBOX_PYTHON_CACHE=0 (the interpreter started in the VM)",
        0.25 if tier == "interp" else 0.5,
        readings=cached,
        unit="us",
        kind="ours",
    )


SETUP = """
import json, re, decimal, fractions, statistics, datetime, difflib, textwrap, email.parser
WORDS = [f"w{i}" for i in range(50000)]
INDEX = {w: i for i, w in enumerate(WORDS)}
def lookup(n):
    return INDEX[f"w{n}"]
"""
SAVED_CHILD = """
import json, sys, time
t0 = time.perf_counter()
from sandbox import Sandbox
from sandbox.python import load_snapshot
t1 = time.perf_counter()
mode, tier, arg = sys.argv[1:4]
if mode == "load":
    with Sandbox.from_snapshot(load_snapshot(arg)) as sb:
        assert sb.call("lookup", 7) == 7
else:
    with Sandbox("python", tier=tier) as sb:
        sb.run(arg)
        assert sb.call("lookup", 7) == 7
print(json.dumps([(time.perf_counter() - t1) * 1e6, (t1 - t0) * 1e6]))
"""


def _saved_state_us(mode: str, tier: str, arg: str) -> float:
    """A new process's first result of `lookup` (its import of sandbox not included):
    from a saved state (mode "load", `arg` its path), or from the interpreter with
    `arg` (the setup code, "" for none) run first."""
    return _child_us(SAVED_CHILD, mode, tier, arg)


@pytest.mark.parametrize("tier", TIERS)
def test_python_saved_state_in_a_new_process(bench_nofloor: Any, tier: str, tmp_path: Any) -> None:
    """A state saved after setup code (stdlib imports, a 50,000-entry index: ~2.6 s in the
    engine, ~0.35 s compiled) -> a new process's first result: load_snapshot against the
    same process making Sandbox("python") (the interpreter from its disk cache) and
    running that setup, and against an empty interpreter's first result (setup "lookup"
    alone): a saved state should start about as fast as an empty interpreter (target
    <= 1.2x), whatever the setup cost. Children in turns."""
    text = "saved state (setup done) -> first result of a new process"
    if not _ready(bench_nofloor, tier, text, kind="ours"):
        return
    path = tmp_path / "state.snap"
    with Sandbox("python", tier=tier) as sb:
        sb.run(SETUP)
        sb.snapshot().save(path)
    empty = "def lookup(n):\n    return n\n"
    loaded: list[float] = []
    setup: list[float] = []
    bare: list[float] = []
    for _ in range(2 if bench_nofloor.settings.quick else 5):
        loaded.append(_saved_state_us("load", tier, str(path)))
        setup.append(_saved_state_us("setup", tier, SETUP))
        bare.append(_saved_state_us("setup", tier, empty))
    path.unlink()
    median = [sorted(r)[len(r) // 2] for r in (loaded, setup, bare)]
    bench_nofloor.report(
        _name(tier, f"{text} / setup run there"),
        median[0],
        median[1],
        "Sandbox('python') + run(setup) -> first result, a new process",
        None,
        readings=loaded,
        unit="us",
        kind="ours",
    )
    bench_nofloor.report(
        _name(tier, f"{text} / an empty interpreter's"),
        median[0],
        median[2],
        "Sandbox('python') -> first result, a new process (interpreter from the disk cache)",
        1.2,
        readings=loaded,
        unit="us",
        kind="ours",
    )


def test_python_density(bench_nofloor: Any) -> None:
    snap = defined("interp")
    n = 100
    ensure_fd_limit(4 * n)
    holder: list[Any] = []
    rss: list[float] = []

    def setup() -> None:
        gc.collect()
        _reaper.drain()
        rss.append(_rss_kib())

    def create_all() -> None:
        holder.extend(snap.spawn() for _ in range(n))

    def teardown(*_: Any) -> None:
        rss.append(_rss_kib())
        assert [sb.call(add, i, 1) for i, sb in enumerate(holder)] == [i + 1 for i in range(n)]
        rss.append(_rss_kib())
        for sb in holder:
            sb.close()
        holder.clear()
        _reaper.drain()

    bench_nofloor.benchmark.pedantic(create_all, setup=setup, teardown=teardown, rounds=1)
    if bench_nofloor.benchmark.stats is None:
        return
    bench_nofloor.report(
        f"python: RSS per idle sandbox ({n} from one snapshot, never called)",
        (rss[1] - rss[0]) / n,
        2048.0,
        "2 MiB (issue 14)",
        1.0,
        unit="KiB",
        kind="budget",
    )
    bench_nofloor.report(
        f"python: RSS per sandbox, {n} alive, each called once",
        (rss[2] - rss[0]) / n,
        2048.0,
        "2 MiB",
        None,
        key="called",
        unit="KiB",
        kind="budget",
    )


@pytest.mark.parametrize("tier", TIERS)
def test_python_compute_vs_wasmtime(bench_nofloor: Any, tmp_path: Path, tier: str) -> None:
    wasmtime = pytest.importorskip("wasmtime")
    from sandbox.python.build import default_build

    text = "pure-Python workload (pystone-like, json, regex): engine guest / wasmtime"
    if tier == "aot":
        text = "pure-Python workload (pystone-like, json, regex): compiled guest / wasmtime"
    if not _ready(bench_nofloor, tier, text, kind="peer"):
        return
    with Sandbox("python", tier=tier) as sb:
        sb.run(WORKLOAD)
        ours = sb.call("workload", timeout=600)
    engine = wasmtime.Engine()
    module = wasmtime.Module(engine, default_build().module)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    store = wasmtime.Store(engine)
    wasi = wasmtime.WasiConfig()
    code = WORKLOAD + "\nimport os\nos.write(1, repr(workload()).encode())\n"
    wasi.argv = ["python", "-I", "-c", code]
    out = tmp_path / "stdout"
    wasi.stdout_file = str(out)
    store.set_wasi(wasi)
    instance = linker.instantiate(store, module)
    try:
        instance.exports(store)["_start"](store)
    except wasmtime.ExitTrap:
        pass
    theirs = ast.literal_eval(out.read_text())
    assert ours[:3] == theirs[:3]
    bench_nofloor.report(
        _name(tier, text),
        ours[3] * 1e6,
        theirs[3] * 1e6,
        "the same CPython build under wasmtime (Cranelift JIT), timed inside the interpreter",
        None,
        kind="peer",
    )


def test_python_snapshot_size(bench_nofloor: Any) -> None:
    """The bytes of data in the initialised interpreter's snapshot (its memory image's
    data extents: what every sandbox of it maps copy-on-write), AOT against the engine.
    The engine's holds CPython's compiled form in its heap; the compiled guest's holds
    its native code (the ELF) instead."""
    text = "initialised interpreter's snapshot, data bytes: compiled guest / engine guest"
    if not _ready(bench_nofloor, "aot", text, kind="peer"):
        return

    def size(tier: str) -> float:
        tmpl = interpreter.template(interpreter.python_config(None), None, (), tier)  # type: ignore[arg-type]
        return float(sum(n for _, n in tmpl.wasm.base.image.data_ranges()) / 1024)

    bench_nofloor.benchmark.pedantic(lambda: None, rounds=1)
    engine, native = size("interp"), size("aot")
    bench_nofloor.report(
        _name("aot", text),
        native,
        engine,
        f"the engine guest's snapshot ({engine / 1024:.1f} MiB)",
        None,
        unit="KiB",
        kind="peer",
    )


def test_python_vs_pyeryx(bench_nofloor: Any) -> None:
    if sys.version_info < (3, 12):
        bench_nofloor.skip(
            "python: spawn + call vs pyeryx",
            f"pyeryx ships cp312-abi3 wheels only; this host's Python is "
            f"{sys.version_info.major}.{sys.version_info.minor} (published: 1-5 ms create, "
            "~1.3 ms per fresh run; see docs/python.md)",
            baseline_what="pyeryx",
            kind="peer",
        )
        return
    pytest.skip("pyeryx comparison not implemented for Python >= 3.12 hosts")
