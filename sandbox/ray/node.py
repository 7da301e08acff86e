"""`NodeHost`: the one long-lived Ray actor per KVM node, owning that node's local
`SandboxPool`s and its snapshot cache.

It is a named, detached async actor (`kvm-sandbox-node-<node id>` in the `kvm-sandbox`
namespace), pinned to its node (`NodeAffinitySchedulingStrategy`, not soft) and asking
for a sliver of the node's `kvm` resource, so it only ever runs where `/dev/kvm` is
offered. Every cluster pool, in any driver or Serve replica, reaches the same actor
(`node_actor`: get-or-create), so a snapshot is loaded once per node however many
callers use it.

Replies are `(True, value)` or `(False, error)`: a `SandboxError` comes back as a value,
pickled with its type and attributes (errors.SandboxError.__reduce__), and the caller
raises it as the same typed exception a local pool raises. Anything else (a bug) is
raised, and Ray hands it to the caller as a RayTaskError.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..errors import SandboxError
from ..pool import SandboxPool as LocalPool
from .spec import GuestSpec, open_pool

NAMESPACE = "kvm-sandbox"
KVM_RESOURCE = "kvm"  # the custom resource a KVM node offers (ray start --resources)
ACTOR_KVM_SHARE = 0.001  # what the node actor takes of it: placement, not capacity
CACHE_ENVIRONMENT = "SANDBOX_RAY_CACHE"  # the node's snapshot cache directory
Reply = tuple[bool, Any]


class NotLoaded(SandboxError):
    """The node actor does not hold that snapshot (it restarted, or never loaded it):
    the caller loads it and sends the call again. Never reaches the user."""


@dataclass
class _Held:
    pool: LocalPool[Any]
    users: int


class NodeHost:
    """The node actor's class. Methods run on the actor's event loop; calls run on the
    local pools' threads (`acall`), so many run at once up to the pools' sizes."""

    def __init__(self, cache_dir: str | None = None) -> None:
        default = Path(tempfile.gettempdir()) / f"sandbox-ray-{os.getuid()}"
        self._cache = Path(cache_dir or os.environ.get(CACHE_ENVIRONMENT) or default)
        self._pools: dict[tuple[str, int], _Held] = {}
        self._loading: dict[tuple[str, int], asyncio.Future[None]] = {}
        self._calls = 0

    def node_id(self) -> str:
        return str(ray.get_runtime_context().get_node_id())

    def holds(self, digest: str, size: int) -> bool:
        return (digest, size) in self._pools

    async def load(self, spec: GuestSpec, payload: bytes, size: int) -> Reply:
        """Makes the local pool of `spec` (once per digest and size; a second caller
        waits for the first's load) and counts one more user of it."""
        key = (spec.digest, size)
        while key not in self._pools:
            pending = self._loading.get(key)
            if pending is not None:
                await asyncio.shield(pending)
                continue
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._loading[key] = done
            try:
                pool = await asyncio.to_thread(open_pool, spec, payload, size, self._cache)
            except SandboxError as exc:
                return (False, exc)
            finally:
                del self._loading[key]
                done.set_result(None)
            self._pools[key] = _Held(pool, 0)
        self._pools[key].users += 1
        return (True, None)

    def unload(self, digest: str, size: int) -> None:
        """One user fewer; the pool is closed when none is left."""
        held = self._pools.get((digest, size))
        if held is not None:
            held.users -= 1
            if held.users <= 0:
                del self._pools[(digest, size)]
                held.pool.close(cancel=True)

    async def call(
        self, digest: str, size: int, fn: Any, args: tuple[Any, ...], timeout: float | None
    ) -> Reply:
        held = self._pools.get((digest, size))
        if held is None:
            return (False, NotLoaded(digest))
        self._calls += 1
        try:
            return (True, await held.pool.acall(fn, *args, timeout=timeout))
        except SandboxError as exc:
            return (False, exc)

    async def call_many(
        self,
        digest: str,
        size: int,
        fn: Any,
        batch: Sequence[tuple[Any, ...]],
        timeout: float | None,
    ) -> list[Reply]:
        """`call` for each argument tuple of `batch`, at once; the replies in order."""
        return list(
            await asyncio.gather(*(self.call(digest, size, fn, args, timeout) for args in batch))
        )

    def stats(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id(),
            "pid": os.getpid(),
            "calls": self._calls,
            "pools": {
                f"{digest[:12]}/{size}": {"users": h.users, "members": h.pool.members}
                for (digest, size), h in self._pools.items()
            },
        }


_NodeActor = ray.remote(NodeHost)


def actor_name(node_id: str) -> str:
    return f"kvm-sandbox-node-{node_id}"


def node_actor(node_id: str) -> Any:
    """The node actor of `node_id` (an ActorHandle), made if there is none."""
    return _NodeActor.options(
        name=actor_name(node_id),
        namespace=NAMESPACE,
        get_if_exists=True,
        lifetime="detached",
        num_cpus=0,
        resources={KVM_RESOURCE: ACTOR_KVM_SHARE},
        max_concurrency=1000,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
    ).remote()


def kvm_nodes() -> list[str]:
    """The ids of the live nodes that offer the `kvm` resource."""
    return sorted(
        str(n["NodeID"])
        for n in ray.nodes()  # type: ignore[no-untyped-call]
        if n.get("Alive") and n.get("Resources", {}).get(KVM_RESOURCE, 0) > 0
    )
