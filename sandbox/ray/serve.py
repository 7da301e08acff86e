"""The function host on Ray Serve: the same HTTP API (routes, auth, limits, metrics,
OpenAPI: the app of `sandbox.host.create_app`) served by every replica of one Serve
deployment, with the functions in a `ClusterStore` every node reads (catalog.py).

Each replica (`HostReplica`) runs its own host app over a replica-private data
directory (the host's store takes one process per data directory: a lock) and its own
warm pools, and keeps that host in step with the cluster store:

- a deploy, PATCH or rollback through a replica (PUT/PATCH/POST under /functions/{name})
  that succeeds is published: the replica's new record (manifest and module) becomes
  the function's next cluster revision; a DELETE publishes a tombstone;
- every `sync_interval` seconds, and at once when a request names a function the replica
  does not have yet, the replica applies the revisions it has not seen through its own
  API in-process (a PUT of the manifest and module, or a DELETE, with the admin token);
  so a function deployed through one replica is served by every replica, and a replica
  started later (autoscaling, a node replaced) loads every function before its
  /readyz says ready.

Limits of this first version, which docs/cluster.md repeats: versions and If-Match are
per replica (the cluster revision orders changes, last writer wins); scoped tokens
(POST /tokens) live in the replica that made them; function logs and /metrics are per
replica (Prometheus scrapes each, as with any Serve deployment).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from ..host.manifest import FunctionRecord
from .catalog import ClusterStore, Published

log = logging.getLogger("sandbox.ray.serve")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_CHANGE = re.compile(r"^/functions/([^/]+)(?:/rollback)?/?$")
_NAMED = re.compile(r"^/functions/([^/]+)(?:/|$)")
SYNC_INTERVAL = 1.0
REPLICA_HEADER = b"x-sandbox-replica"


async def asgi_request(
    app: ASGIApp,
    method: str,
    path: str,
    *,
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes = b"",
) -> tuple[int, bytes]:
    """One HTTP request to `app`, in process (no socket): its status and body."""
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"replica"), *(headers or [])],
        "client": ("127.0.0.1", 0),
        "server": ("127.0.0.1", 0),
    }
    sent = False
    status = 500
    chunks: list[bytes] = []

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # no more: wait for the app to answer
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
        elif message["type"] == "http.response.body":
            chunks.append(bytes(message.get("body", b"")))

    await app(scope, receive, send)
    return status, b"".join(chunks)


def _multipart(manifest: dict[str, Any], module: bytes) -> tuple[bytes, bytes]:
    """A multipart/form-data body of the host's deploy (manifest, module): its
    content type and bytes."""
    boundary = secrets.token_hex(16).encode()
    body = b"".join(
        [
            b"--" + boundary + b"\r\n",
            b'Content-Disposition: form-data; name="manifest"\r\n',
            b"Content-Type: application/json\r\n\r\n",
            json.dumps(manifest).encode(),
            b"\r\n--" + boundary + b"\r\n",
            b'Content-Disposition: form-data; name="module"; filename="module"\r\n',
            b"Content-Type: application/octet-stream\r\n\r\n",
            module,
            b"\r\n--" + boundary + b"--\r\n",
        ]
    )
    return b"multipart/form-data; boundary=" + boundary, body


class HostReplica:
    """One replica of the cluster host: the host app over a private data directory,
    kept in step with the cluster store at `store_dir`. `settings`: HostConfig fields
    (data_dir and token are the replica's: the token is the cluster store's). Used as
    the Serve deployment's class (`build_app`), and directly by tests."""

    def __init__(
        self,
        store_dir: str,
        settings: dict[str, Any] | None = None,
        sync_interval: float = SYNC_INTERVAL,
    ) -> None:
        from ..host import HostConfig, create_app

        self.store = ClusterStore(store_dir)
        self.id = f"{_node_id()[:12]}-{secrets.token_hex(4)}"  # node, replica
        self.data_dir = Path(tempfile.mkdtemp(prefix=f"sandbox-host-replica-{self.id}-"))
        self._token = self.store.token()
        config = HostConfig(**{**(settings or {}), "data_dir": self.data_dir, "token": self._token})
        self.app: ASGIApp = create_app(config)
        self.sync_interval = sync_interval
        self.applied: dict[str, int] = {}  # name -> the cluster revision this replica has
        node, _, replica = self.id.partition("-")
        # Appended to the host's /metrics: Prometheus, scraping every replica, counts
        # them (count(sandbox_cluster_replica)); through the proxy one sees who answered.
        self._metrics_line = (
            "# HELP sandbox_cluster_replica This replica of the host on Ray Serve.\n"
            "# TYPE sandbox_cluster_replica gauge\n"
            f'sandbox_cluster_replica{{replica="{replica}",node="{node}"}} 1\n'
        ).encode()
        self._sync_lock: asyncio.Lock | None = None
        self._syncer: asyncio.Task[None] | None = None

    # -- the ASGI front --------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        named = _NAMED.match(path)
        if named is not None and named.group(1) not in self.applied:
            await self.sync(only=named.group(1))  # deployed through another replica?
        status = 0
        extra = self._metrics_line if method == "GET" and path == "/metrics" else b""

        async def send_tagged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [*message.get("headers", []), (REPLICA_HEADER, self.id.encode())]
                if extra and status == 200:
                    headers = [
                        (k, str(int(v) + len(extra)).encode() if k == b"content-length" else v)
                        for k, v in headers
                    ]
                message = {**message, "headers": headers}
            elif (
                message["type"] == "http.response.body"
                and extra
                and status == 200
                and not message.get("more_body", False)
            ):
                await send({**message, "more_body": True})
                message = {"type": "http.response.body", "body": extra, "more_body": False}
            await send(message)

        await self.app(scope, receive, send_tagged)
        change = _CHANGE.match(path)
        if change is not None and method in ("PUT", "PATCH", "POST", "DELETE") and status < 300:
            await self._publish(change.group(1), deleted=method == "DELETE")

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The host app's lifespan, with the sync loop started once it is up (and the
        store applied once before the startup completes: a new replica is warm)."""

        async def receive_wrapped() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown" and self._syncer is not None:
                self._syncer.cancel()
            return message

        async def send_wrapped(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                await self._await_ready()
                await self.sync()
                self._syncer = asyncio.get_running_loop().create_task(self._sync_loop())
            if message["type"] == "lifespan.shutdown.complete":
                shutil.rmtree(self.data_dir, ignore_errors=True)
            await send(message)

        await self.app(scope, receive_wrapped, send_wrapped)

    async def _await_ready(self, limit: float = 120.0) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            status, _ = await asgi_request(self.app, "GET", "/readyz")
            if status == 200:
                return
            await asyncio.sleep(0.05)

    # -- keeping in step with the cluster store ------------------------------------------

    def _auth(self) -> list[tuple[bytes, bytes]]:
        return [(b"authorization", b"Bearer " + self._token.encode())]

    async def _publish(self, name: str, *, deleted: bool) -> None:
        async with self._lock():
            if deleted:
                entry = await asyncio.to_thread(self.store.withdraw, name)
            else:
                entry = await asyncio.to_thread(self._publish_local, name)
            if entry is not None:
                self.applied[name] = entry.revision

    def _publish_local(self, name: str) -> Published | None:
        """The replica's own record of `name` (its data directory, the host store's
        layout: functions/<name>.json and blobs/<sha256>), published."""
        try:
            record = FunctionRecord.model_validate_json(
                (self.data_dir / "functions" / f"{name}.json").read_bytes()
            )
            module = (self.data_dir / "blobs" / record.sha256).read_bytes()
        except (OSError, ValueError) as exc:
            log.warning("cannot publish", extra={"function": name, "error": str(exc)})
            return None
        return self.store.publish(name, record.spec, module)

    def _lock(self) -> asyncio.Lock:
        if self._sync_lock is None:
            self._sync_lock = asyncio.Lock()
        return self._sync_lock

    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sync_interval)
            try:
                await self.sync()
            except Exception as exc:  # keep syncing: the next pass may succeed
                log.warning("sync failed", extra={"error": str(exc)})

    async def sync(self, only: str | None = None) -> int:
        """Applies the cluster revisions this replica has not seen (of `only`, or all);
        returns how many were applied."""
        async with self._lock():
            if only is not None:
                entry = await asyncio.to_thread(self.store.get, only)
                entries = {only: entry} if entry is not None else {}
            else:
                entries = await asyncio.to_thread(self.store.entries)
            done = 0
            for name, entry in entries.items():
                if entry.revision > self.applied.get(name, 0):
                    await self._apply(entry)
                    done += 1
            return done

    async def _apply(self, entry: Published) -> None:
        path = f"/functions/{entry.name}"
        if entry.deleted:
            status, body = await asgi_request(self.app, "DELETE", path, headers=self._auth())
            ok = status < 300 or status == 404
        else:
            module = await asyncio.to_thread(self.store.module, entry)
            ctype, data = _multipart(self.store.manifest(entry), module)
            status, body = await asgi_request(
                self.app, "PUT", path, headers=[*self._auth(), (b"content-type", ctype)], body=data
            )
            ok = status < 300
        if not ok:  # a function this replica cannot run: say so, do not retry it forever
            log.warning(
                "cannot apply",
                extra={"function": entry.name, "status": status, "body": body[:300].decode()},
            )
        self.applied[entry.name] = entry.revision


def _node_id() -> str:
    """The Ray node this process runs on ("local" outside Ray)."""
    import ray

    return str(ray.get_runtime_context().get_node_id()) if ray.is_initialized() else "local"


def build_app(
    store_dir: str,
    settings: dict[str, Any] | None = None,
    *,
    sync_interval: float = SYNC_INTERVAL,
    min_replicas: int = 1,
    max_replicas: int = 4,
    target_ongoing_requests: float = 8.0,
    replica_cpus: float = 1.0,
) -> Any:
    """The Serve application of the cluster host (`serve.run(build_app(...))`):
    replicas on KVM nodes only (a sliver of the `kvm` resource), autoscaled on the
    requests queued and running per replica between `min_replicas` and `max_replicas`
    (min_replicas=0: down to zero)."""
    from ray import serve

    from .node import ACTOR_KVM_SHARE, KVM_RESOURCE

    @serve.ingress()  # the app is made per replica, by __serve_build_asgi_app__
    class SandboxHost:
        def __init__(self) -> None:
            self.replica = HostReplica(store_dir, settings, sync_interval)

        def __serve_build_asgi_app__(self) -> ASGIApp:
            return self.replica

    deployment = serve.deployment(
        name="sandbox-host",
        ray_actor_options={"num_cpus": replica_cpus, "resources": {KVM_RESOURCE: ACTOR_KVM_SHARE}},
        autoscaling_config={
            "min_replicas": min_replicas,
            "initial_replicas": max(min_replicas, 1),
            "max_replicas": max_replicas,
            "target_ongoing_requests": target_ongoing_requests,
        },
        max_ongoing_requests=max(int(target_ongoing_requests * 4), 16),
    )(SandboxHost)
    return deployment.bind()


def app_builder(args: dict[str, Any]) -> Any:
    """The application builder that a Serve config names (`import_path:
    sandbox.ray.serve:app_builder`, KubeRay's RayService serveConfigV2): `args` are
    `build_app`'s parameters (store_dir, settings, sync_interval, min_replicas...)."""
    args = dict(args)
    store_dir = args.pop("store_dir", None)
    if not isinstance(store_dir, str) or not store_dir:
        raise ValueError("the sandbox host's Serve args need store_dir (a shared directory)")
    return build_app(store_dir, **args)
