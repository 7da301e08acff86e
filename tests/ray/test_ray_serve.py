"""The function host on Ray Serve (sandbox/ray/serve.py) on the session's two-node
loopback cluster, and the cluster store it keeps functions in (catalog.py)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from ray_support import free_port, listening, node_pids

from sandbox.guests import BUNDLED_DIR
from sandbox.host.manifest import FunctionSpec
from sandbox.host.store import StoreError
from sandbox.ray.catalog import ClusterStore
from sandbox.ray.serve import build_app

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

DEMO = BUNDLED_DIR / "demo.elf"


# -- the cluster store ---------------------------------------------------------------------


def test_store_publishes_revisions_and_tombstones(tmp_path: Path) -> None:
    store = ClusterStore(tmp_path / "store")
    spec = FunctionSpec(entry="add", secrets={"k": "v"})
    first = store.publish("add", spec, b"module-1")
    second = store.publish("add", spec, b"module-2")
    assert (first.revision, second.revision) == (1, 2)
    entry = store.get("add")
    assert entry is not None and entry.spec == spec and store.module(entry) == b"module-2"
    assert entry.sha256 == hashlib.sha256(b"module-2").hexdigest()
    assert store.manifest(entry)["secrets"] == {"k": "v"}  # replicas need them
    assert (tmp_path / "store/functions/add.json").stat().st_mode & 0o077 == 0
    gone = store.withdraw("add")
    assert gone is not None and gone.revision == 3 and gone.deleted
    assert store.withdraw("add") is None and store.withdraw("never") is None
    assert ClusterStore(tmp_path / "store").entries()["add"].deleted  # durable


def test_store_refuses_what_it_did_not_write(tmp_path: Path) -> None:
    store = ClusterStore(tmp_path)
    entry = store.publish("f", FunctionSpec(entry="add"), b"good")
    assert entry.sha256 is not None
    (tmp_path / "blobs" / entry.sha256).write_bytes(b"evil")
    with pytest.raises(StoreError, match="corrupt"):
        store.module(entry)
    (tmp_path / "functions" / "g.json").write_text('{"name": "h", "revision": 1}')
    (tmp_path / "functions" / "bad.json").write_text("not json")
    found, problems = store.scan()
    assert set(found) == {"f"} and len(problems) == 2
    assert store.get("../etc/passwd") is None  # names are checked before any path
    with pytest.raises(ValueError):
        store.publish("../x", FunctionSpec(), b"")


def test_store_token_is_made_once_and_private(tmp_path: Path) -> None:
    a, b = ClusterStore(tmp_path).token(), ClusterStore(tmp_path).token()
    assert a == b and len(a) > 30
    assert os.stat(tmp_path / "token").st_mode & 0o077 == 0


# -- the Serve application -----------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    url: str  # through the head node's proxy
    worker_url: str  # through the worker node's proxy
    token: str  # the admin token
    store: Path  # the cluster store's directory

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}


def _app(store: Path, replicas: int) -> Any:
    return build_app(
        str(store), {"default_warm": 1}, sync_interval=0.5, min_replicas=replicas,
        max_replicas=replicas, replica_cpus=0.25,
    )  # fmt: skip


@pytest.fixture(scope="module")
def served(
    cluster: Any, worker_proxy_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """The cluster host on Serve with two replicas, one per node, and a proxy per node."""
    store_dir = tmp_path_factory.mktemp("cluster-store")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(_app(store_dir, 2), name="sandbox-host", route_prefix="/")
    try:
        yield Served(
            f"http://127.0.0.1:{port}", f"http://127.0.0.1:{worker_proxy_port}",
            ClusterStore(store_dir).token(), store_dir,
        )  # fmt: skip
    finally:
        serve.shutdown()


def _deploy(url: str, token: str, name: str, **manifest: object) -> httpx.Response:
    files: dict[str, Any] = {
        "manifest": (None, json.dumps(manifest), "application/json"),
        "module": ("demo.elf", DEMO.read_bytes(), "application/octet-stream"),
    }
    return httpx.put(
        f"{url}/functions/{name}", files=files, timeout=30,
        headers={"authorization": f"Bearer {token}"},
    )  # fmt: skip


def test_deploy_once_and_every_replica_serves_it(served: Served) -> None:
    url, token = served.url, served.token
    auth = {"authorization": f"Bearer {token}"}
    assert _deploy(url, token, "add", entry="add").status_code == 201
    replicas = set()
    with httpx.Client(base_url=url, headers=auth, timeout=30) as client:
        for i in range(40):
            r = client.post("/functions/add/invoke", json={"args": [i, 1]})
            assert r.status_code == 200, r.text
            assert r.json()["result"] == i + 1
            replicas.add(r.headers["x-sandbox-replica"])
        assert len(replicas) == 2, "both replicas served the function deployed through one"
        nodes = {r.partition("-")[0] for r in replicas}
        assert len(nodes) == 2, "the replicas run on the two nodes (Serve spreads them)"
        assert client.get("/readyz").status_code == 200
        assert "sandbox_" in client.get("/metrics").text
        assert client.get("/openapi.json").json()["info"]["title"] == "sandbox function host"
        assert client.post("/functions/add/invoke", json={"args": [1]}).status_code == 400
        assert httpx.post(f"{url}/functions/add/invoke", json={"args": [1, 2]}).status_code == 401

        assert client.delete("/functions/add").status_code == 204
        time.sleep(1.5)  # > the sync interval: every replica has applied the tombstone
        for _ in range(10):
            assert client.post("/functions/add/invoke", json={"args": [1, 2]}).status_code == 404


def test_deployed_through_one_nodes_replica_served_by_the_others_proxy(
    cluster: Any, served: Served
) -> None:
    """Each node runs its own proxy (Serve's EveryNode), on its own port of 127.0.0.1:
    a function deployed through the replica on one node is invoked through the proxy
    of the other node and served by that node's replica."""
    head, (worker,) = cluster.head_node, cluster.worker_nodes
    port = {served.url: int(served.url.rpartition(":")[2]),
            served.worker_url: int(served.worker_url.rpartition(":")[2])}  # fmt: skip
    for node, url, other in ((head, served.url, served.worker_url),
                             (worker, served.worker_url, served.url)):  # fmt: skip
        ports = {p for a, p in listening(node_pids(node)) if a.is_loopback}
        assert port[url] in ports and port[other] not in ports, "one proxy per node"
    proxies = serve.status().proxies
    assert set(proxies) == {head.node_id, worker.node_id}, proxies
    assert {s.value for s in proxies.values()} == {"HEALTHY"}
    proxy_of = {head.node_id[:12]: served.url, worker.node_id[:12]: served.worker_url}

    r = _deploy(served.url, served.token, "across", entry="add")
    assert r.status_code == 201, r.text
    deployed_on = r.headers["x-sandbox-replica"].partition("-")[0]  # who took the deploy
    (other,) = set(proxy_of) - {deployed_on}
    with httpx.Client(base_url=proxy_of[other], headers=served.auth, timeout=30) as client:
        for i in range(60):  # Serve routes each request to either replica
            r = client.post("/functions/across/invoke", json={"args": [i, 2]})
            assert r.status_code == 200 and r.json()["result"] == i + 2, r.text
            if r.headers["x-sandbox-replica"].startswith(other + "-"):
                break
        else:
            pytest.fail("the other node's replica never served the function")


def _replicas() -> list[str]:
    """The names of the host's Serve replica actors (namespace "serve")."""
    return [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == "serve" and "REPLICA" in a["name"] and "sandbox-host" in a["name"]
    ]


def test_a_replica_killed_under_load_loses_no_function(served: Served) -> None:
    url, token = served.url, served.token
    assert _deploy(url, token, "add2", entry="add").status_code == 201
    names = _replicas()
    assert len(names) == 2, names
    seen: list[tuple[float, int, str]] = []  # (when, status, replica)
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=url, timeout=30,
                          headers={"authorization": f"Bearer {token}"}) as client:  # fmt: skip
            while not stop.is_set():
                try:
                    r = client.post("/functions/add2/invoke", json={"args": [20, 22]})
                except httpx.TransportError:
                    seen.append((time.monotonic(), 0, ""))
                    continue
                assert r.status_code != 200 or r.json()["result"] == 42
                seen.append(
                    (time.monotonic(), r.status_code, r.headers.get("x-sandbox-replica", ""))
                )

    thread = threading.Thread(target=load)
    thread.start()
    try:
        time.sleep(1.0)
        before = {rep for _, status, rep in seen if status == 200}
        assert len(before) == 2, "both replicas served before the kill"
        killed = time.monotonic()
        ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
        deadline = killed + 60
        while time.monotonic() < deadline:  # Serve starts a replacement replica
            new = {rep for t, status, rep in seen if status == 200 and t > killed} - before
            if new and len(_replicas()) == 2:
                break
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        stop.set()
        thread.join(30)
    assert new, "a new replica served the function deployed before it started"
    after = [status for t, status, _ in seen if t > time.monotonic() - 1.0]
    assert after and set(after) == {200}, "new calls succeed once the replica is replaced"
    failed = {status for t, status, _ in seen if t > killed and status != 200}
    assert failed <= {0, 500, 502, 503}, failed  # in-flight calls on the killed replica


def _replicas_in_metrics(url: str, requests: int) -> set[str]:
    seen = set()
    for _ in range(requests):
        text = httpx.get(f"{url}/metrics", timeout=30).text
        seen |= set(re.findall(r'sandbox_cluster_replica\{replica="([0-9a-f]+)"', text))
    return seen


def test_scaling_replicas_shows_in_metrics(served: Served, tmp_path: Path) -> None:
    """It redeploys the application with other replica counts and a fresh store."""
    url = served.url
    assert len(_replicas_in_metrics(url, 30)) == 2
    store = ClusterStore(tmp_path).root  # a fresh store: only the replica count matters
    for count in (3, 1):
        app = build_app(str(store), {}, sync_interval=0.5, min_replicas=count,
                        max_replicas=count, replica_cpus=0.25)  # fmt: skip
        serve.run(app, name="sandbox-host", route_prefix="/")
        deadline = time.monotonic() + 90
        while len(_replicas()) != count and time.monotonic() < deadline:
            time.sleep(0.2)  # the replicas of the previous version are stopping
        assert len(_replicas()) == count
        assert len(_replicas_in_metrics(url, 20 * count)) == count
