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
(pool.py). Nothing here is imported by `import sandbox`.
"""

from __future__ import annotations

try:
    import ray as _ray  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError("sandbox.ray needs Ray: pip install 'kvm-sandbox[ray]'") from exc

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
