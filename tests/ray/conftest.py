"""One real Ray cluster per test session, on loopback: two nodes (each its own raylet),
both offering the `kvm` resource, small (one CPU each, no dashboard), shared by every
test in tests/ray; the worker node's Serve proxy, when Serve runs, binds a port of its
own (`worker_proxy_port`). Skipped where Ray is not installed (the `ray` extra; CI
installs it with `dev`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Ray binds the machine's external address unless told otherwise: this (read when ray
# is imported: so before it) and node_ip_address (ray_support.NODE) keep every node,
# and everything it listens on, on 127.0.0.1 (test_cluster_stays_on_loopback checks).
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
# Serve's proxy (one, on the head node) would prefer the replica on its own node while
# it is not full; the Serve tests want each request routed to either replica, so that a
# function deployed through one is seen served by the other node's replica too.
os.environ["RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING"] = "0"
# Ray's core worker installs absl's fatal-signal handler (SIGSEGV, SIGTERM...) in the
# driver: in this process it would stand in front of wasmtime's SIGSEGV handler, which
# Wasm traps in the differential tests rely on (they crashed the suite). Off.
os.environ["RAY_DISABLE_FAILURE_SIGNAL_HANDLER"] = "1"

ray = pytest.importorskip("ray", reason="the ray extra is not installed")

from ray.cluster_utils import Cluster  # noqa: E402
from ray_support import NODE, WORKER_PROXY_PORT_ENV, free_port  # noqa: E402

_started: list[Cluster] = []
_worker_proxy_port: list[int] = []


def _stop() -> None:
    while _started:
        c = _started.pop()
        ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The session's cluster (connected: ray.init). Stopped after the last test of
    tests/ray (pytest_runtest_teardown), so that the tests after them run in a process
    without Ray, as they do without this directory."""
    c = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    _started.append(c)
    _worker_proxy_port[:] = [free_port()]
    c.add_node(**NODE, env_vars={WORKER_PROXY_PORT_ENV: str(_worker_proxy_port[0])})
    c.wait_for_nodes()
    ray.init(address=c.address, logging_level="WARNING", log_to_driver=False)
    try:
        yield c
    finally:
        _stop()


@pytest.fixture(scope="session")
def worker_proxy_port(cluster: Cluster) -> int:
    """The port of Serve's HTTP proxy on the cluster's worker node (the head's proxy is
    on http_options' port): each node's proxy on its own port, both on 127.0.0.1."""
    return _worker_proxy_port[0]


HERE = Path(__file__).resolve().parent


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    if nextitem is None or HERE not in Path(nextitem.path).resolve().parents:
        _stop()
