"""Sandboxes on a Ray cluster (docs/cluster.md): the optional `ray` extra
(`pip install kvm-sandbox[ray]`).

    import ray
    from sandbox.ray import SandboxPool
    ray.init(address="auto")
    with SandboxPool("demo", size_per_node=4) as pool:
        pool.call("add", 1, 2)                  # on some KVM node, in fresh state
        pool.map("add", range(100), range(100))

One long-lived actor per node that offers the `kvm` resource owns that node's pools and
snapshot cache (node.py); a pool's snapshot goes through Ray's object store once and is
loaded once per node (spec.py); the caller's side routes calls to the nodes that hold it
(pool.py). The function host runs on Ray Serve (serve.py) over a shared function store
(catalog.py); flatcar.py writes the Ignition config of a Flatcar KVM node.

`import sandbox` imports nothing of this, and this package imports Ray only when one of
the names below is used (so `sandbox.ray.flatcar` works without it).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .node import KVM_RESOURCE, NAMESPACE, NodeHost, kvm_nodes, node_actor
    from .pool import ClusterError, NodeLost, SandboxPool
    from .spec import GuestSpec

__all__ = [
    "KVM_RESOURCE",
    "NAMESPACE",
    "ClusterError",
    "GuestSpec",
    "NodeHost",
    "NodeLost",
    "SandboxPool",
    "kvm_nodes",
    "node_actor",
]

_WHERE = {
    "KVM_RESOURCE": ".node",
    "NAMESPACE": ".node",
    "NodeHost": ".node",
    "kvm_nodes": ".node",
    "node_actor": ".node",
    "ClusterError": ".pool",
    "NodeLost": ".pool",
    "SandboxPool": ".pool",
    "GuestSpec": ".spec",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        module = importlib.import_module(_WHERE[name], __name__)
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] == "ray":
            raise ImportError("sandbox.ray needs Ray: pip install 'kvm-sandbox[ray]'") from exc
        raise
    return getattr(module, name)
