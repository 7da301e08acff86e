"""Peers: other ways to get an isolated function call, measured in the same run as ours
the way the floor is: in blocks before, in between and after our rounds (Bench.versus).

Ours is Sandbox() -> add(1, 2) for the spawn rows, sb.call("add", 1, 2) on a running
sandbox for the warm-call rows. The peers:

- wasmtime: a new Store + Instance of a compiled module + add(1, 2); add(store, 1, 2)
  on a live instance;
- a process: subprocess.run([python, "-c", "pass"]);
- os.fork(), the child _exit(0)s, waitpid;
- hyperlight-sandbox: Sandbox(backend="wasm", its JavaScript guest) + run(); run() on a
  live sandbox.

The ratio is ours / peer and has no target: a peer is a point of reference, not a goal
(wasmtime runs code in the host process, fork gives no hardware isolation). Each peer is
optional: when its package is missing, or it cannot run here, its rows are reported as
skipped with the reason. hyperlight-sandbox fails on nested KVM with PVM (its guests run
in ring 0, which PVM cannot run: DESIGN.md section 2); the row carries its error.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Any

import pytest

try:
    from sandbox import Sandbox, _reaper
    from sandbox.kvm import kvm_module
except ImportError as exc:  # the native extension is not built
    pytest.skip(f"cannot import sandbox ({exc}); see benches/README.md", allow_module_level=True)

THEME = "spawn"  # the warm-call rows say "calls"

ADD_WAT = """(module
  (func (export "add") (param i32 i32) (result i32)
    local.get 0 local.get 1 i32.add))"""
HYPERLIGHT_CODE = "console.log(1 + 2)"
HYPERLIGHT_INSTALL = "pip install 'hyperlight-sandbox[wasm,javascript-guest]'"
OURS_SPAWN = "Sandbox() -> add(1, 2)"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


# -- ours --------------------------------------------------------------------------------


def _spawn_and_call(holder: list[Sandbox]) -> Any:
    sb = Sandbox()
    holder.append(sb)
    return sb.call("add", 1, 2)


def _new_holder() -> tuple[tuple[list[Sandbox]], dict[str, Any]]:
    return ([],), {}


def _close(holder: list[Sandbox]) -> None:
    for sb in holder:
        sb.close()
    _reaper.drain()


def _versus_spawn(bench: Any, peer: Callable[[], Any], peer_rounds: int) -> Any:
    """Our cold spawn against `peer`; returns (the peer's result, Versus)."""
    s = bench.settings
    ours, theirs, v = bench.versus(
        _spawn_and_call,
        peer,
        setup=_new_holder,
        teardown=_close,
        rounds=s.spawn_rounds,
        warmup_rounds=s.spawn_warmup_rounds,
        peer_rounds=peer_rounds,
    )
    assert ours == 3
    return theirs, v


@pytest.fixture(scope="module")
def sb() -> Iterator[Sandbox]:
    with Sandbox() as sandbox:
        yield sandbox


# -- wasmtime ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wasmtime_module() -> Any:
    try:
        import wasmtime
    except ImportError as exc:
        return None, f"wasmtime is not installed ({exc}); pip install wasmtime"
    engine = wasmtime.Engine()
    return (wasmtime, engine, wasmtime.Module(engine, wasmtime.wat2wasm(ADD_WAT))), None


def test_spawn_vs_wasmtime_instantiate(bench_nofloor, wasmtime_module):
    scenario = f"spawn vs wasmtime: {OURS_SPAWN} / Store + Instance + add"
    what = f"wasmtime {_version('wasmtime')}: new Store + Instance of a compiled module + add"
    loaded, reason = wasmtime_module
    if loaded is None:
        bench_nofloor.skip(scenario, reason, baseline_what=what, kind="peer")
    wasmtime, engine, module = loaded

    def instantiate_and_call() -> Any:
        store = wasmtime.Store(engine)
        instance = wasmtime.Instance(store, module, [])
        return instance.exports(store)["add"](store, 1, 2)

    s = bench_nofloor.settings
    result, v = _versus_spawn(bench_nofloor, instantiate_and_call, s.spawn_rounds)
    assert result == 3
    if v is not None:
        bench_nofloor.report_versus(scenario, v, what)


def test_call_vs_wasmtime_call(bench_nofloor, wasmtime_module, sb):
    scenario = "warm call vs wasmtime: sb.call('add', 1, 2) / add(store, 1, 2)"
    what = f"wasmtime {_version('wasmtime')}: add(store, 1, 2) on a live instance"
    loaded, reason = wasmtime_module
    if loaded is None:
        bench_nofloor.skip(scenario, reason, baseline_what=what, kind="peer", theme="calls")
    wasmtime, engine, module = loaded
    store = wasmtime.Store(engine)
    add = wasmtime.Instance(store, module, []).exports(store)["add"]
    s = bench_nofloor.settings
    ours, theirs, v = bench_nofloor.versus(
        lambda: sb.call("add", 1, 2),
        lambda: add(store, 1, 2),
        rounds=s.call_rounds,
        warmup_rounds=s.warmup_rounds,
    )
    assert ours == theirs == 3
    if v is not None:
        bench_nofloor.report_versus(scenario, v, what, theme="calls")


# -- processes -----------------------------------------------------------------------


def test_spawn_vs_python_subprocess(bench_nofloor):
    exe = sys.executable

    def python_pass() -> int:
        return subprocess.run([exe, "-c", "pass"], check=True).returncode

    result, v = _versus_spawn(bench_nofloor, python_pass, bench_nofloor.settings.subprocess_rounds)
    assert result == 0
    if v is not None:
        bench_nofloor.report_versus(
            f"spawn vs a process: {OURS_SPAWN} / `python -c pass`",
            v,
            f"subprocess.run([python{sys.version_info[0]}.{sys.version_info[1]}, '-c', 'pass'])",
        )


def _fork_exit() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_spawn_vs_fork(bench_nofloor):
    result, v = _versus_spawn(bench_nofloor, _fork_exit, bench_nofloor.settings.fork_rounds)
    assert result == 0
    if v is not None:
        bench_nofloor.report_versus(
            f"spawn vs fork: {OURS_SPAWN} / os.fork + _exit + waitpid",
            v,
            "os.fork() of this process, the child os._exit(0)s, os.waitpid",
        )


# -- hyperlight-sandbox --------------------------------------------------------------


@pytest.fixture(scope="module")
def hyperlight() -> tuple[Callable[[], Any] | None, str]:
    """A factory for hyperlight-sandbox sandboxes (Wasm backend, its JavaScript guest)
    that has run code once here, or None and the reason it cannot."""
    try:
        from hyperlight_sandbox import Sandbox as HyperlightSandbox
    except ImportError as exc:
        return None, f"hyperlight-sandbox is not installed ({exc}); {HYPERLIGHT_INSTALL}"

    def make() -> Any:
        return HyperlightSandbox(backend="wasm", module="javascript_guest.path")

    try:
        out = make().run(HYPERLIGHT_CODE)
    except ImportError as exc:  # a backend or guest package is missing
        return None, (
            f"hyperlight-sandbox cannot load its backend or guest: {exc}; {HYPERLIGHT_INSTALL}"
        )
    except Exception as exc:  # whatever it raises where it cannot run
        why = ""
        if kvm_module() == "kvm_pvm":
            why = (
                " (expected on nested KVM with PVM: Hyperlight's guests run in ring 0, which "
                "PVM cannot run; see DESIGN.md section 2)"
            )
        return None, (
            f"hyperlight-sandbox {_version('hyperlight-sandbox')} fails on this host{why}: "
            f"{type(exc).__name__}: {exc}"
        )
    if out.stdout.strip() != "3":
        return None, f"hyperlight-sandbox ran, but printed {out.stdout!r} instead of '3'"
    return make, ""


HYPERLIGHT_WHAT = (
    f"hyperlight-sandbox {_version('hyperlight-sandbox')} (wasm backend, JavaScript guest)"
)


def test_spawn_vs_hyperlight(bench_nofloor, hyperlight):
    scenario = f"spawn vs hyperlight-sandbox: {OURS_SPAWN} / Sandbox() + run()"
    what = f"{HYPERLIGHT_WHAT}: Sandbox() + run({HYPERLIGHT_CODE!r})"
    make, reason = hyperlight
    if make is None:
        bench_nofloor.skip(scenario, reason, baseline_what=what, kind="peer")

    def create_and_run() -> str:
        return str(make().run(HYPERLIGHT_CODE).stdout).strip()

    result, v = _versus_spawn(
        bench_nofloor, create_and_run, bench_nofloor.settings.hyperlight_rounds
    )
    assert result == "3"
    if v is not None:
        bench_nofloor.report_versus(scenario, v, what)


def test_call_vs_hyperlight(bench_nofloor, hyperlight, sb):
    scenario = "warm call vs hyperlight-sandbox: sb.call('add', 1, 2) / run() again"
    what = f"{HYPERLIGHT_WHAT}: run({HYPERLIGHT_CODE!r}) on a live sandbox"
    make, reason = hyperlight
    if make is None:
        bench_nofloor.skip(scenario, reason, baseline_what=what, kind="peer", theme="calls")
    peer = make()
    s = bench_nofloor.settings
    ours, theirs, v = bench_nofloor.versus(
        lambda: sb.call("add", 1, 2),
        lambda: str(peer.run(HYPERLIGHT_CODE).stdout).strip(),
        rounds=s.call_rounds,
        warmup_rounds=s.warmup_rounds,
        peer_rounds=max(s.hyperlight_rounds * 5, 10),
    )
    assert (ours, theirs) == (3, "3")
    if v is not None:
        bench_nofloor.report_versus(scenario, v, what, theme="calls")
