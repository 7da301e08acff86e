"""The function host on Ray Serve (sandbox/ray/serve.py) on the session's two-node
loopback cluster (a Serve proxy on each node, each on its own port of 127.0.0.1), and
the cluster store it keeps functions in (catalog.py)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from ray_support import NODE, WORKER_PROXY_PORT_ENV, alive, free_port, listening, node_pids

from sandbox import Sandbox
from sandbox.guests import BUNDLED_DIR
from sandbox.host.manifest import FunctionSpec
from sandbox.host.store import StoreError
from sandbox.ray.catalog import ClusterStore
from sandbox.ray.serve import build_app

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

DEMO = BUNDLED_DIR / "demo.elf"
SPIN = 10**9  # the demo's spin iterations: ~1 s


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


@dataclass(frozen=True)
class Outcome:
    start: float
    end: float
    kind: str  # "ok", "http" (an error status), "transport" (the client may retry)
    status: int = 0
    replica: str = ""  # x-sandbox-replica: the replica that answered
    body: str = ""


def _invoke(client: httpx.Client, name: str, a: int, b: int) -> Outcome:
    """One invocation of `name` (the demo's add): its outcome; a wrong result or no
    answer within the client's timeout fails the test."""
    start = time.monotonic()
    try:
        r = client.post(f"/functions/{name}/invoke", json={"args": [a, b]})
    except httpx.TimeoutException as exc:  # a hang: never acceptable
        raise AssertionError(f"{name}: no answer in time ({exc!r})") from exc
    except httpx.TransportError as exc:
        return Outcome(start, time.monotonic(), "transport", body=repr(exc))
    end, replica = time.monotonic(), r.headers.get("x-sandbox-replica", "")
    if r.status_code == 200:
        assert r.json()["result"] == a + b, f"{name}: wrong result {r.text}"
        return Outcome(start, end, "ok", 200, replica)
    return Outcome(start, end, "http", r.status_code, replica, r.text[:300])


def _spin(url: str, token: str, n: int, expected: int) -> Outcome:
    """One long call (the demo's spin: ~1 s), the kind a node's loss catches in flight."""
    with httpx.Client(base_url=url, timeout=30,
                      headers={"authorization": f"Bearer {token}"}) as client:  # fmt: skip
        start = time.monotonic()
        try:
            r = client.post("/functions/haspin/invoke", json={"args": [n]})
        except httpx.TimeoutException as exc:
            raise AssertionError(f"spin: no answer in time ({exc!r})") from exc
        except httpx.TransportError as exc:
            return Outcome(start, time.monotonic(), "transport", body=repr(exc))
    replica = r.headers.get("x-sandbox-replica", "")
    if r.status_code == 200:
        assert r.json()["result"] == expected, f"spin: wrong result {r.text}"
        return Outcome(start, time.monotonic(), "ok", 200, replica)
    return Outcome(start, time.monotonic(), "http", r.status_code, replica, r.text[:300])


def _typed(o: Outcome) -> bool:
    """A failure a client can act on: a connection error (retry), or a 5xx that is the
    host's JSON error, or Serve's proxy's own 5xx when the replica died under the request
    (no replica answered: no x-sandbox-replica; "Internal Server Error")."""
    if o.kind == "transport":
        return True
    if o.kind != "http" or not 500 <= o.status < 600:
        return False
    if o.replica:
        try:
            error = json.loads(o.body)["error"]
        except (ValueError, KeyError, TypeError):
            return False
        return isinstance(error, dict) and isinstance(error.get("type"), str)
    return o.body in ("Internal Server Error", "Service Unavailable")


def test_a_worker_node_killed_under_load_loses_no_function(cluster: Any, served: Served) -> None:
    """A third node joins and gets a replica of its own; functions are deployed (each
    deploy acknowledged); under a load of short calls through the two other nodes'
    proxies, with 8 long calls in flight across the replicas, the third node is killed
    (SIGKILL of its raylet; its proxy and replica follow). Every call returns its right
    result or fails typed, none hangs; new calls succeed; a replacement replica serves
    every acknowledged function. Last in this module: it redeploys the application with
    3 replicas over the module's store."""
    extra_port = free_port()  # its proxy on its own port: the load goes to the others
    extra = cluster.add_node(**NODE, env_vars={WORKER_PROXY_PORT_ENV: str(extra_port)})
    cluster.wait_for_nodes()
    doomed = extra.node_id[:12] + "-"
    stop = threading.Event()
    outcomes: list[Outcome] = []
    names = [f"ha{k}" for k in range(4)]

    def load(worker: int) -> None:
        url = (served.url, served.worker_url)[worker % 2]
        with httpx.Client(base_url=url, headers=served.auth, timeout=20) as client:
            for i in range(3000):  # bounded
                if stop.is_set():
                    return
                k = (worker + i) % len(names)
                outcomes.append(_invoke(client, names[k], i, 1000 * k))

    try:
        serve.run(_app(served.store, 3), name="sandbox-host", route_prefix="/")
        for k, name in enumerate(names):  # acknowledged: a 201 from some replica
            url = (served.url, served.worker_url)[k % 2]
            assert _deploy(url, served.token, name, entry="add").status_code == 201
        assert _deploy(served.url, served.token, "haspin", entry="spin").status_code == 201
        with Sandbox() as sb:
            spun = sb.call("spin", SPIN)
        with ThreadPoolExecutor(4 + 8) as pool:
            futures = [pool.submit(load, w) for w in range(4)]
            deadline = time.monotonic() + 30
            while not any(o.replica.startswith(doomed) for o in outcomes):
                assert time.monotonic() < deadline, "no replica on the third node served"
                assert not any(f.done() for f in futures), [f.result() for f in futures]
                time.sleep(0.1)
            spins = [  # in flight on every replica (Serve routes to the least busy)
                pool.submit(_spin, (served.url, served.worker_url)[j % 2], served.token,
                            SPIN, spun)
                for j in range(8)
            ]  # fmt: skip
            time.sleep(0.5)
            before = {o.replica for o in outcomes if o.kind == "ok"}
            pids = node_pids(extra)  # its raylet and the workers it started
            killed = time.monotonic()
            cluster.remove_node(extra, allow_graceful=False)  # SIGKILL, no goodbye
            # The raylet dies at once; its workers (the proxy, the replica) notice and
            # exit on their own, a moment later: the node is gone when they are.
            while alive(pids):
                assert time.monotonic() < killed + 30, f"still alive: {alive(pids)}"
                time.sleep(0.05)
            gone = time.monotonic()
            recovered, deadline = 0.0, gone + 45
            while not recovered and time.monotonic() < deadline:
                tail = [o for o in outcomes if o.start > gone]
                if len(tail) > 30 and all(o.kind == "ok" for o in tail[-30:]):
                    recovered = tail[-30].start  # 30 calls in a row succeeded from here
                time.sleep(0.2)
            time.sleep(0.5)
            stop.set()
            for f in futures:
                f.result(timeout=30)  # re-raises a wrong result or a timeout
            long_calls = [f.result(timeout=30) for f in spins]
        assert recovered, "new calls did not keep succeeding after the node was lost"
        failed = [o for o in outcomes + long_calls if o.kind != "ok"]
        assert all(_typed(o) for o in failed), [o for o in failed if not _typed(o)]
        assert all(o.start < recovered for o in failed), "a call failed after recovery"
        assert not any(o.replica.startswith(doomed) for o in outcomes if o.start > gone)

        # Serve replaces the lost replica on a node that remains; it loads every function
        # from the store before it takes traffic (its readiness), and serves them.
        new: set[str] = set()
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=served.url, headers=served.auth, timeout=20) as client:
            while not new:
                assert time.monotonic() < deadline, "no replacement replica took traffic"
                for k, name in enumerate(names):
                    o = _invoke(client, name, 1, 1000 * k)
                    assert o.kind == "ok" and not o.replica.startswith(doomed), o
                    new |= {o.replica} - before
                time.sleep(0.1)
        for url in (served.url, served.worker_url):
            with httpx.Client(base_url=url, headers=served.auth, timeout=20) as client:
                for i in range(10):
                    for k, name in enumerate(names):
                        o = _invoke(client, name, i, 1000 * k)
                        assert o.kind == "ok" and not o.replica.startswith(doomed), o
                for _ in range(6):  # each replica lists every function
                    listed = client.get("/functions").json()["functions"]
                    assert set(names) <= {f["name"] for f in listed}
        entries = ClusterStore(served.store).entries()
        assert all(n in entries and not entries[n].deleted for n in names)
        statuses = sorted({o.status for o in failed})
        caught = sum(o.kind != "ok" for o in long_calls)  # in flight on the lost node
        print(
            f"\n{len(outcomes)} calls; {len(failed)} failed {statuses} ({caught} of "
            f"{len(long_calls)} long calls); the node's processes gone {gone - killed:.1f} s "
            f"after the kill, calls succeeded again {recovered - killed:.1f} s after it, a "
            f"replacement replica took traffic {time.monotonic() - killed:.1f} s after it"
        )
    finally:
        stop.set()
        if extra in cluster.worker_nodes:
            cluster.remove_node(extra)
