"""The Ray cluster pool (sandbox.ray) against the local SandboxPool, in the same run: a
two-node Ray cluster on loopback (each node its own raylet, both offering `kvm`, as in
tests/ray), started once for this module. Peer rows (no target): the local pool is the
reference.

- throughput: N fresh-state `add` calls through the cluster pool's `map` (batches over
  both nodes' actors, in parallel) against the same N calls through a local pool of the
  same total size on one node, one after the other (`pool.call` in a loop);
- the Ray hop: one `call` through the cluster pool against one `call` on a local pool
  (a round trip to the node actor and back, the object store not involved);
- the function host: one HTTP invocation through Ray Serve (its proxy, two replicas on
  the two nodes) against one on the single-node host (`python -m sandbox serve`), both
  on loopback, one client, one request at a time.

Skipped in --quick mode (starting the cluster costs ~10 s; CI runs quick) and where the
`ray` extra is not installed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

THEME = "cluster"
N = 2000  # calls per throughput round
MAP_WHAT = f"local SandboxPool (1 node, size 4): {N} x pool.call('add', i, i)"
HOP_WHAT = "local SandboxPool (1 node): pool.call('add', 1, 2)"
HOST_WHAT = "single-node host (python -m sandbox serve): POST /functions/add/invoke"
TOKEN = "bench-token-bench-token-bench-token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _deploy(url: str, token: str) -> None:
    import httpx

    from sandbox.guests import BUNDLED_DIR

    files = {
        "manifest": (None, json.dumps({"entry": "add"}), "application/json"),
        "module": ("demo.elf", (BUNDLED_DIR / "demo.elf").read_bytes()),
    }
    auth = {"authorization": f"Bearer {token}"}
    r = httpx.put(f"{url}/functions/add", files=files, headers=auth, timeout=60)
    assert r.status_code in (200, 201), r.text


def _wait_ready(url: str, limit: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not become ready")


@pytest.fixture(scope="module")
def hosts(cluster: Any) -> Iterator[Any]:
    """(Serve's URL, the single-node host's URL, the token), with `add` deployed on both."""
    if isinstance(cluster, str):
        yield cluster
        return
    from ray import serve

    from sandbox.ray.catalog import ClusterStore
    from sandbox.ray.serve import build_app

    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        serve_port, host_port = _free_port(), _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": serve_port})
        app = build_app(f"{tmp}/store", {}, min_replicas=2, max_replicas=2, replica_cpus=0.25)
        serve.run(app, name="sandbox-host", route_prefix="/")
        env = {**os.environ, "SANDBOX_HOST_TOKEN": TOKEN}
        host = subprocess.Popen(
            [sys.executable, "-m", "sandbox", "serve", "--port", str(host_port),
             "--data-dir", f"{tmp}/data"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            # on every CPU, as the cluster's processes (the suite pins itself to one)
            preexec_fn=lambda: os.sched_setaffinity(0, range(os.cpu_count() or 1)),
        )  # fmt: skip
        try:
            serve_url, host_url = f"http://127.0.0.1:{serve_port}", f"http://127.0.0.1:{host_port}"
            _wait_ready(host_url)
            token = ClusterStore(Path(tmp) / "store").token()
            _deploy(serve_url, token)
            _deploy(host_url, TOKEN)
            yield serve_url, host_url, token
        finally:
            host.terminate()
            host.wait(30)
            serve.shutdown()


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[Any]:
    quick = request.config.getoption("--quick") or os.environ.get("SANDBOX_BENCH_QUICK")
    if quick:
        yield "quick mode: the cluster rows start a Ray cluster (~10 s); run the full suite"
        return
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # loopback only (see tests/ray)
    try:
        import ray
        from ray.cluster_utils import Cluster

        from sandbox import SandboxPool as LocalPool
        from sandbox.ray import SandboxPool
    except ImportError as exc:
        yield f"the ray extra is not installed ({exc}): pip install 'kvm-sandbox[ray]'"
        return
    node = {"num_cpus": 1, "resources": {"kvm": 1}, "node_ip_address": "127.0.0.1"}
    # The suite pins itself to one CPU; the cluster's processes (which inherit it) run
    # on every CPU, as a cluster's nodes would: unpinned while they start.
    pinned = os.sched_getaffinity(0)
    os.sched_setaffinity(0, range(os.cpu_count() or 1))
    try:
        c = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
        c.add_node(**node)
        c.wait_for_nodes()
    finally:
        os.sched_setaffinity(0, pinned)
    ray.init(address=c.address, logging_level="WARNING", log_to_driver=False)
    try:
        with SandboxPool("demo", size_per_node=2) as remote, LocalPool("demo", size=4) as local:
            yield remote, local
    finally:
        ray.shutdown()
        c.shutdown()


def test_cluster_map_vs_local_pool(bench_nofloor: Any, cluster: Any) -> None:
    scenario = f"{N} calls: cluster pool map (2 nodes x 2) / local pool loop"
    if isinstance(cluster, str):
        bench_nofloor.skip(scenario, cluster, baseline_what=MAP_WHAT, kind="peer")
    remote, local = cluster
    expected = [2 * i for i in range(N)]

    def ours() -> list[int]:
        return list(remote.map("add", range(N), range(N)))

    def peer() -> list[int]:
        return [local.call("add", i, i) for i in range(N)]

    a, b, v = bench_nofloor.versus(ours, peer, rounds=7, warmup_rounds=1, peer_rounds=7)
    assert a == expected and b == expected
    if v is not None:
        bench_nofloor.report_versus(scenario, v, MAP_WHAT)


def test_cluster_call_vs_local_call(bench_nofloor: Any, cluster: Any) -> None:
    scenario = "one call through the Ray hop: cluster pool call / local pool call"
    if isinstance(cluster, str):
        bench_nofloor.skip(scenario, cluster, baseline_what=HOP_WHAT, kind="peer")
    remote, local = cluster
    a, b, v = bench_nofloor.versus(
        lambda: remote.call("add", 1, 2),
        lambda: local.call("add", 1, 2),
        rounds=1000,
        warmup_rounds=50,
    )
    assert a == b == 3
    if v is not None:
        bench_nofloor.report_versus(scenario, v, HOP_WHAT)


def test_serve_host_vs_single_node_host(bench_nofloor: Any, hosts: Any) -> None:
    scenario = "one invocation: host on Ray Serve (2 replicas) / single-node host"
    if isinstance(hosts, str):
        bench_nofloor.skip(scenario, hosts, baseline_what=HOST_WHAT, kind="peer")
    import httpx

    serve_url, host_url, token = hosts
    body = {"args": [1, 2]}
    with (
        httpx.Client(base_url=serve_url, headers={"authorization": f"Bearer {token}"}) as ours,
        httpx.Client(base_url=host_url, headers={"authorization": f"Bearer {TOKEN}"}) as peer,
    ):
        a, b, v = bench_nofloor.versus(
            lambda: ours.post("/functions/add/invoke", json=body).json()["result"],
            lambda: peer.post("/functions/add/invoke", json=body).json()["result"],
            rounds=300,
            warmup_rounds=20,
        )
    assert a == b == 3
    if v is not None:
        bench_nofloor.report_versus(scenario, v, HOST_WHAT)
