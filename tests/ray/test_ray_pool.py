"""sandbox.ray.SandboxPool on a real two-node Ray cluster (conftest.py): calls in fresh
state on both nodes, typed errors across Ray, snapshots loaded once per node, and a
node actor killed or a node removed mid-call."""

from __future__ import annotations

import asyncio
import pickle
import threading
import time
from typing import Any

import pytest
import wasmtime
from ray_support import NODE, cluster_pids, listening

import sandbox.errors as errors
from sandbox import Sandbox
from sandbox.ray import ClusterError, NodeLost, SandboxPool, kvm_nodes

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.requires_kvm

DIV_WAT = """(module
  (func (export "div") (param i32 i32) (result i32) (i32.div_s (local.get 0) (local.get 1))))"""


def _every_error() -> list[errors.SandboxError]:
    return [
        errors.GuestTrap("trap", kind="page_fault", vector=14, rip=0x1000, address=0),
        errors.GuestProtocolError("bad record"),
        errors.KvmError("KVM_RUN", 4, "interrupted"),
        errors.WasmTrap("integer divide by zero", kind="div_zero"),
        errors.WasmModuleError("not wasm", kind="malformed"),
        errors.CallTimeout("too slow"),
        errors.GuestAbort("guest said no"),
        errors.PythonError("ValueError", "builtins", "bad", "Traceback..."),
        errors.PythonExit(3, "tb", unwound=False),
        errors.PythonCrash("crashed", "stack_exhausted"),
        errors.ArgumentError("wrong"),
    ]


@pytest.mark.parametrize("error", _every_error(), ids=lambda e: type(e).__name__)
def test_errors_pickle_with_type_message_and_attributes(error: errors.SandboxError) -> None:
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error)
    assert str(back) == str(error) and back.args == error.args
    assert back.__dict__ == error.__dict__


def test_an_error_travels_with_its_cause_if_the_cause_pickles() -> None:
    error = errors.HostFunctionError("lookup raised")
    error.__cause__ = KeyError("k")
    assert repr(pickle.loads(pickle.dumps(error)).__cause__) == "KeyError('k')"
    error.__cause__ = RuntimeError(threading.Lock())  # a lock does not pickle
    assert pickle.loads(pickle.dumps(error)).__cause__ is None


def test_cluster_stays_on_loopback(cluster: Any) -> None:
    assert len(kvm_nodes()) == 2
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
    with SandboxPool("demo", size_per_node=1) as pool:  # node actors running too
        assert pool.call("add", 1, 1) == 2
        addresses = listening(cluster_pids(cluster))
    assert addresses, "the cluster's processes listen somewhere"
    outside = [f"{a}:{port}" for a, port in addresses if not a.is_loopback]
    assert not outside, f"listening beyond loopback: {outside}"


def test_calls_run_in_fresh_state_on_both_nodes(cluster: Any) -> None:
    with SandboxPool("demo", size_per_node=2) as pool:
        assert len(pool.nodes) == 2 and pool.kind == "native"
        assert pool.call("add", 2, 3) == 5
        assert [pool.call("counter") for _ in range(6)] == [1] * 6  # fresh every call
        n = 10_000
        assert pool.map("add", range(n), range(n)) == [2 * i for i in range(n)]
        served = {s["node_id"]: s["calls"] for s in pool.stats()}
        assert set(served) == set(kvm_nodes()) and min(served.values()) > 1000

        async def some() -> list[Any]:
            return list(await asyncio.gather(*(pool.acall("add", i, 1) for i in range(50))))

        assert asyncio.run(some()) == [i + 1 for i in range(50)]


def test_a_snapshot_reaches_each_node_once_and_pools_share_it(cluster: Any) -> None:
    with Sandbox() as sb:
        sb.call("counter")
        sb.call("counter")
        snap = sb.snapshot()
    with SandboxPool(snap, size_per_node=1) as a, SandboxPool(snap, size_per_node=1) as b:
        assert a.spec.digest == b.spec.digest
        assert a.call("counter") == 3 and b.call("counter") == 3  # the snapshot's state
        for stats in a.stats():
            (held,) = [v for k, v in stats["pools"].items() if k.startswith(a.spec.digest[:12])]
            assert held["users"] == 2
    for stats in SandboxPool("demo", size_per_node=3).stats():  # a, b closed: unloaded
        assert not any(k.startswith(a.spec.digest[:12]) for k in stats["pools"])


def test_native_errors_arrive_typed(cluster: Any) -> None:
    with SandboxPool("demo", size_per_node=1) as pool:
        with pytest.raises(errors.GuestTrap) as trap:
            pool.call("fault", "null")
        assert type(trap.value) is errors.GuestTrap and trap.value.kind == "page_fault"
        assert trap.value.vector == 14 and trap.value.address == 0
        with pytest.raises(errors.GuestAbort, match="deliberate abort"):
            pool.call("fault", "abort")
        with pytest.raises(errors.CallTimeout):
            pool.call("fault", "spin_forever", timeout=0.2)
        with pytest.raises(errors.FunctionNotFound):
            pool.call("no_such_function")
        with pytest.raises(errors.ArgumentError):
            pool.call("add", "one", 2)
        assert pool.call("add", 1, 2) == 3  # trapped members were restored
        results = pool.map("fault", ["null", "abort"], return_exceptions=True)
        assert [type(r) for r in results] == [errors.GuestTrap, errors.GuestAbort]
        with pytest.raises(errors.GuestTrap):
            pool.map("fault", ["abort", "null"][1:])


def test_wasm_module_and_its_traps(cluster: Any) -> None:
    module = wasmtime.wat2wasm(DIV_WAT)
    with SandboxPool(bytes(module), size_per_node=1) as pool:
        assert pool.kind == "wasm"
        assert pool.map("div", [10, 9], [2, 3]) == [5, 3]
        with pytest.raises(errors.WasmTrap) as trap:
            pool.call("div", 1, 0)
        assert trap.value.kind == "div_zero" and "divide by zero" in str(trap.value)


def test_python_functions_and_their_errors(cluster: Any) -> None:
    def square(x: int) -> int:
        return x * x

    def fails(x: int) -> int:
        raise ValueError(f"bad {x}")

    with SandboxPool("python", size_per_node=1) as pool:
        assert pool.kind == "python"
        assert pool.call(square, 7) == 49
        assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]
        with pytest.raises(errors.PythonError) as err:
            pool.call(fails, 3)
        assert err.value.type_name == "ValueError" and err.value.message == "bad 3"
        assert "fails" in err.value.guest_traceback


def test_bad_arguments_are_refused_before_any_node_work(cluster: Any) -> None:
    with pytest.raises(errors.ArgumentError):
        SandboxPool("demo", size_per_node=0)
    with pytest.raises(errors.ArgumentError):
        SandboxPool("demo", retries=-1)
    with pytest.raises(errors.GuestNotFound):
        SandboxPool("no-such-guest")
    with pytest.raises(errors.ArgumentError):
        SandboxPool(object())
    pool = SandboxPool("demo", size_per_node=1)
    with pytest.raises(errors.ArgumentError):
        pool.call(len)  # a native guest's functions are named
    pool.close()
    with pytest.raises(errors.SandboxClosed):
        pool.call("add", 1, 2)


def _kill_actors_during(pool: SandboxPool, call: Any) -> tuple[Any, float]:
    """Runs `call()` on a thread, kills every node actor of `pool` while it runs, and
    returns its result (or the exception it raised) and how long it took."""
    box: dict[str, Any] = {}

    def run() -> None:
        t0 = time.monotonic()
        try:
            box["result"] = call()
        except Exception as exc:
            box["result"] = exc
        box["took"] = time.monotonic() - t0

    actors = [m.actor for m in pool._members]  # the test reaches in to kill them
    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.5)  # the call is running (it takes ~10 s)
    for actor in actors:
        ray.kill(actor)
    thread.join(30)
    assert not thread.is_alive(), "the call hung after its node actor died"
    return box["result"], box["took"]


LONG = 12 * 10**9  # spin iterations: ~10 s on the development machine


def test_a_killed_node_actor_raises_node_lost_not_a_hang(cluster: Any) -> None:
    pool = SandboxPool("demo", size_per_node=1)
    result, took = _kill_actors_during(pool, lambda: pool.call("spin", LONG, timeout=60))
    assert isinstance(result, NodeLost) and "died during the call" in str(result)
    assert took < 5
    assert pool.call("add", 1, 2) == 3  # new node actors took over
    assert len(pool.nodes) == 2
    pool.close()


def test_a_killed_node_actor_with_retries_sends_the_call_again(cluster: Any) -> None:
    n = 2 * 10**9  # ~1.6 s of spinning
    with Sandbox() as sb:
        expected = sb.call("spin", n)
    pool = SandboxPool("demo", size_per_node=1, retries=1)
    result, took = _kill_actors_during(pool, lambda: pool.call("spin", n, timeout=60))
    assert result == expected and pool.resent == 1
    assert took > 0.5 + 1.0  # killed after 0.5 s, then ran again from the start
    pool.close()


def test_a_worker_node_lost_under_load(cluster: Any) -> None:
    extra = cluster.add_node(**NODE)
    cluster.wait_for_nodes()
    pool = SandboxPool("demo", size_per_node=1, retries=3)
    stop = threading.Event()
    maps: list[tuple[float, bool]] = []  # (when it ended, every result right)
    n = 600

    def load() -> None:
        while not stop.is_set():
            maps.append(
                (time.monotonic(), pool.map("add", range(n), range(n)) == [*range(0, 2 * n, 2)])
            )

    try:
        assert len(pool.nodes) == 3
        thread = threading.Thread(target=load)
        thread.start()
        time.sleep(1.0)
        removed = time.monotonic()
        cluster.remove_node(extra)
        time.sleep(2.0)
        stop.set()
        thread.join(60)
        assert not thread.is_alive(), "map hung after a node was lost"
        assert maps and all(ok for _, ok in maps)
        assert any(t < removed for t, _ in maps) and any(t > removed + 0.5 for t, _ in maps)
        assert pool.resent >= 1  # batches in flight on the lost node were sent again
        assert len(pool.nodes) == 2 and len(kvm_nodes()) == 2
        assert pool.call("add", 20, 22) == 42
    finally:
        stop.set()
        pool.close()


def test_no_kvm_node_is_a_cluster_error(cluster: Any) -> None:
    import sandbox.ray.node as node

    real = node.KVM_RESOURCE
    try:
        node.KVM_RESOURCE = "no-such-resource"
        with pytest.raises(ClusterError, match="kvm"):
            SandboxPool("demo")
    finally:
        node.KVM_RESOURCE = real
