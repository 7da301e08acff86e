"""Helpers of the Ray tests: which addresses a cluster's processes listen on (read from
/proc, no extra packages)."""

from __future__ import annotations

import os
import socket
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

# One node of the test cluster: every node on 127.0.0.1 (see conftest.py), small.
NODE = {"num_cpus": 1, "resources": {"kvm": 1}, "node_ip_address": "127.0.0.1",
        "object_store_memory": 80 << 20}  # fmt: skip
# Ray Serve 2.60 runs an HTTP proxy on every node with a replica (ProxyLocation.EveryNode,
# its default), each bound to http_options' port with SO_REUSEPORT: on nodes sharing one
# IP they would share that port, the kernel spreading connections over them. A worker
# node whose raylet has this variable set (Cluster.add_node(env_vars=...)) binds its
# proxy to this port instead (the head keeps http_options'), so each node's proxy can be
# addressed on its own (docs/cluster.md).
WORKER_PROXY_PORT_ENV = "RAY_SERVE_WORKER_PROXY_HTTP_PORT"
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def descendants(roots: list[int]) -> set[int]:
    """`roots` and every process below them."""
    tree, found, todo = _children(), set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(tree.get(pid, ()))
    return found


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def _address(hex_addr: str) -> tuple[IPv4Address | IPv6Address, int]:
    host, _, port = hex_addr.partition(":")
    if len(host) == 8:  # IPv4, little-endian
        return IPv4Address(bytes.fromhex(host)[::-1]), int(port, 16)
    words = [host[i : i + 8] for i in range(0, 32, 8)]  # four little-endian words
    v6 = IPv6Address(b"".join(bytes.fromhex(w)[::-1] for w in words))
    return (v6.ipv4_mapped or v6), int(port, 16)


def listening(pids: set[int]) -> list[tuple[IPv4Address | IPv6Address, int]]:
    """The local (address, port) of the TCP sockets in LISTEN state that `pids` hold
    (an IPv4-mapped IPv6 address as its IPv4 address)."""
    inodes = set().union(*(_socket_inodes(p) for p in pids)) if pids else set()
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == _LISTEN and fields[9] in inodes:
                found.append(_address(fields[1]))
    return found


def node_pids(node: Any) -> set[int]:
    """Every process of one node of a ray.cluster_utils.Cluster (its raylet and what it
    started: the workers, actors included)."""
    return descendants(
        [info.process.pid for infos in node.all_processes.values() for info in infos]
    )


def alive(pids: set[int]) -> set[int]:
    """The processes of `pids` still running (a zombie is not)."""
    running = set()
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat.rpartition(")")[2].split()[0] != "Z":
            running.add(pid)
    return running


def cluster_pids(cluster: Any) -> set[int]:
    """Every process of a ray.cluster_utils.Cluster's nodes, workers included."""
    return set().union(*(node_pids(n) for n in [cluster.head_node, *cluster.worker_nodes]))
