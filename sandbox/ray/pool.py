"""`sandbox.ray.SandboxPool`: calls in fresh sandbox state on the nodes of a Ray cluster
that offer a `kvm` resource.

The caller's side. At construction the guest becomes a spec and a payload (spec.py), the
payload goes into Ray's object store once (`ray.put`), and the node actor of every KVM
node (node.py) loads it once into a local `SandboxPool` of `size_per_node` members. Calls
go round-robin to the actors that hold it; `map` sends them in batches (one Ray task per
batch per node). A node actor that dies under a call (its node lost, or killed) raises
`NodeLost`, or with `retries=N` the call is sent again to another holder, up to N times
(at-least-once: a call whose node died may have run there). Each call runs in fresh
state, so a retried call sees what the first saw; host functions it called may have run
twice. After a loss the pool asks Ray again for the KVM nodes and loads the payload
onto any node whose actor is new.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import socket
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError

from ..config import SandboxConfig
from ..errors import ArgumentError, SandboxClosed, SandboxError
from .node import NotLoaded, Reply, kvm_nodes, node_actor
from .spec import GuestSpec, prepare

_LOST = (RayActorError, ActorDiedError, ActorUnavailableError)
MAP_BATCH = 64  # calls per Ray task in map()
NO_SIGNAL_HANDLER = "RAY_DISABLE_FAILURE_SIGNAL_HANDLER"
CONNECT_TIMEOUT = 5.0  # seconds to reach a cluster's GCS port before ray.init
_HOST_PORT = re.compile(r"^(?:ray://)?\[?([^\]]+?)\]?:(\d+)$")


def connect(address: str | None, **options: Any) -> None:
    """ray.init(address, **options), after checking that a "host:port" address answers
    within CONNECT_TIMEOUT: ray.init itself retries an unreachable address for minutes.
    Raises ConnectionError with the address and the reason."""
    found = _HOST_PORT.match(address or "")
    if found:
        host, port = found.group(1), int(found.group(2))
        try:
            socket.create_connection((host, port), timeout=CONNECT_TIMEOUT).close()
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise ConnectionError(f"nothing answers at {host}:{port} ({reason})") from None
    ray.init(address=address, **options)


class ClusterError(SandboxError):
    """The cluster cannot run the pool: Ray is not reachable, or no live node offers the
    `kvm` resource. The message says which."""


class NodeLost(SandboxError):
    """The node actor running a call died before it replied (its node was lost, or the
    actor was killed), and the call's retries (if any) were used up, or no reply came
    within the pool's `reply_timeout`. The call may or may not have run."""


class _Member:
    __slots__ = ("node_id", "actor")

    def __init__(self, node_id: str, actor: Any) -> None:
        self.node_id, self.actor = node_id, actor


class SandboxPool:
    """Sandboxes of one guest on every KVM node of the Ray cluster this process is
    connected to (`address=`: connects with `ray.init(address)` if it is not yet).

    `guest`: None or a native guest's path or bundled name, a `Snapshot`, a Wasm
    module's bytes or path (`.wasm`, or `\\0asm` content), or "python".
    `size_per_node`: members of each node's local pool. `retries`: how many times a call
    whose node died is sent again (0: raise NodeLost). `reply_timeout`: the longest a
    caller waits for a node's reply beyond the call's own time limit (None: as long as
    the node actor lives; Ray reports a dead actor or node). `config`, `host_functions`,
    `imports`: as for `Sandbox`/`Sandbox.from_wasm`; callables are pickled to the nodes
    and run there.
    """

    def __init__(
        self,
        guest: object = None,
        *,
        size_per_node: int = 2,
        config: SandboxConfig | None = None,
        host_functions: Mapping[str, Callable[..., Any]] | None = None,
        imports: Mapping[str, Mapping[str, Callable[..., Any]]] | None = None,
        retries: int = 0,
        reply_timeout: float | None = None,
        address: str | None = None,
    ) -> None:
        if isinstance(size_per_node, bool) or not isinstance(size_per_node, int):
            raise ArgumentError(f"size_per_node must be a positive int, not {size_per_node!r}")
        if size_per_node < 1:
            raise ArgumentError(f"size_per_node must be a positive int, not {size_per_node!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ArgumentError(f"retries must be a non-negative int, not {retries!r}")
        if reply_timeout is not None and not reply_timeout > 0:
            raise ArgumentError(f"reply_timeout must be more than 0 seconds, not {reply_timeout}")
        self.size_per_node = size_per_node
        self.retries = retries
        self.reply_timeout = reply_timeout
        self._spec, payload = prepare(
            guest, config=config, host_functions=host_functions, imports=imports
        )
        if not ray.is_initialized():
            # Ray's fatal-signal handler (absl) would stand in front of the handlers that
            # this process's wasmtime relies on; a driver that calls ray.init itself
            # decides for itself (docs/cluster.md).
            os.environ.setdefault(NO_SIGNAL_HANDLER, "1")
            try:
                connect(address, logging_level=logging.WARNING, log_to_driver=False)
            except ConnectionError as exc:
                raise ClusterError(f"cannot reach the Ray cluster at {address}: {exc}") from exc
        self._payload = ray.put(payload)  # once: every node fetches it from here
        self._lock = threading.Lock()
        self._members: list[_Member] = []
        self._turn = itertools.count()
        self._closed = False
        self.resent = 0  # calls (map: batches) sent again after their node actor died
        self._join_nodes()

    @property
    def kind(self) -> str:
        """ "native", "wasm" or "python"."""
        return self._spec.kind

    @property
    def nodes(self) -> list[str]:
        """The ids of the nodes whose actors hold the pool's snapshot."""
        with self._lock:
            return [m.node_id for m in self._members]

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- membership --------------------------------------------------------------------

    def _join_nodes(self) -> None:
        """Loads the payload on every KVM node whose actor does not hold it yet."""
        nodes = kvm_nodes()
        if not nodes:
            raise ClusterError(
                'no live Ray node offers the "kvm" resource (start KVM nodes with '
                "`ray start --resources='{\"kvm\": 1}'`)"
            )
        with self._lock:
            held = {m.node_id for m in self._members}
        new = [_Member(n, node_actor(n)) for n in nodes if n not in held]
        loads = [m.actor.load.remote(self._spec, self._payload, self.size_per_node) for m in new]
        joined: list[_Member] = []
        for member, ref in zip(new, loads, strict=True):
            try:
                ok, error = ray.get(ref)
            except _LOST:
                continue  # lost while loading: the next _join_nodes tries again
            if not ok:
                for m in joined:
                    m.actor.unload.remote(self._spec.digest, self.size_per_node)
                raise error
            joined.append(member)
        with self._lock:
            self._members.extend(joined)
            if not self._members:
                raise NodeLost("every KVM node's actor died while loading the guest")

    def _pick(self, avoid: _Member | None = None) -> _Member:
        with self._lock:
            if self._closed:
                raise SandboxClosed("the cluster pool is closed")
            members = [m for m in self._members if m is not avoid] or self._members
            if not members:
                raise NodeLost("no KVM node holds the pool's guest any more")
            return members[next(self._turn) % len(members)]

    def _lose(self, member: _Member) -> None:
        """Forgets a dead actor, and rejoins the KVM nodes (a new actor on a live node)."""
        with self._lock:
            if member in self._members:
                self._members.remove(member)
        try:
            self._join_nodes()
        except SandboxError:
            pass  # no node left: the next _pick says so

    def _reload(self, member: _Member) -> None:
        ok, error = ray.get(member.actor.load.remote(self._spec, self._payload, self.size_per_node))
        if not ok:
            raise error

    # -- calls -------------------------------------------------------------------------

    def _args(self, fn: object) -> object:
        """What travels for `fn`: a name, or (Python guests) a function shipped here,
        where its source is (sandbox.python.shipping)."""
        if isinstance(fn, str):
            return fn
        if self._spec.kind == "python" and callable(fn):
            from ..python.shipping import ship

            return ship(fn)
        raise ArgumentError(f"a function name (str) is needed, not {type(fn).__name__}")

    def _limit(self, timeout: float | None) -> float | None:
        if self.reply_timeout is None:
            return None
        limit = timeout if timeout is not None else self._default_timeout()
        return self.reply_timeout + (limit or 0.0)

    def _default_timeout(self) -> float | None:
        config = self._spec.config
        return config.timeout if config is not None else None

    def call(
        self, fn: str | Callable[..., Any], *args: object, timeout: float | None = None
    ) -> Any:
        """Runs `fn(*args)` in a fresh sandbox on one of the nodes and returns its value,
        or raises what a local pool's call raises (GuestTrap, CallTimeout, PythonError...),
        or NodeLost."""
        sent = self._args(fn)
        avoid: _Member | None = None
        for attempt in itertools.count():
            member = self._pick(avoid)
            ref = member.actor.call.remote(
                self._spec.digest, self.size_per_node, sent, args, timeout
            )
            try:
                reply: Reply = ray.get(ref, timeout=self._limit(timeout))
            except GetTimeoutError:
                ray.cancel(ref)
                raise NodeLost(f"no reply from node {member.node_id} in time") from None
            except _LOST as exc:
                self._lose(member)
                if attempt >= self.retries:
                    raise NodeLost(self._lost_message(member, exc)) from None
                avoid = member
                self.resent += 1
                continue
            if self._settle(member, reply):
                return reply[1]
        raise AssertionError("unreachable")

    async def acall(
        self, fn: str | Callable[..., Any], *args: object, timeout: float | None = None
    ) -> Any:
        """`call` from asyncio: the event loop keeps running while the node works."""
        sent = self._args(fn)
        avoid: _Member | None = None
        for attempt in itertools.count():
            member = self._pick(avoid)
            ref = member.actor.call.remote(
                self._spec.digest, self.size_per_node, sent, args, timeout
            )
            try:
                reply: Reply = await asyncio.wait_for(ref, self._limit(timeout))
            except TimeoutError:
                ray.cancel(ref)
                raise NodeLost(f"no reply from node {member.node_id} in time") from None
            except _LOST as exc:
                await asyncio.to_thread(self._lose, member)
                if attempt >= self.retries:
                    raise NodeLost(self._lost_message(member, exc)) from None
                avoid = member
                self.resent += 1
                continue
            if not reply[0] and isinstance(reply[1], NotLoaded):
                await asyncio.to_thread(self._reload, member)
                continue
            if self._settle(member, reply):
                return reply[1]
        raise AssertionError("unreachable")

    def _settle(self, member: _Member, reply: Reply) -> bool:
        """True: `reply` is the value; raises its error; False: send the call again (the
        actor no longer held the guest and has loaded it now)."""
        ok, value = reply
        if ok:
            return True
        if isinstance(value, NotLoaded):
            self._reload(member)
            return False
        raise value

    def _lost_message(self, member: _Member, exc: BaseException) -> str:
        tries = f" after {self.retries + 1} tries" if self.retries else ""
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"the node actor on {member.node_id} died during the call{tries} ({first})"

    def map(
        self,
        fn: str | Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """`[call(fn, *args) for args in zip(*iterables)]`, sent in batches of
        MAP_BATCH calls spread over the nodes. Raises the first error in order, or with
        `return_exceptions` puts each error in its place."""
        sent = self._args(fn)
        calls = list(zip(*iterables, strict=False))
        results: list[Any] = [None] * len(calls)
        pending = [(i, calls[i : i + MAP_BATCH], 0) for i in range(0, len(calls), MAP_BATCH)]
        while pending:
            sent_now = []
            for start, batch, tries in pending:
                member = self._pick()
                ref = member.actor.call_many.remote(
                    self._spec.digest, self.size_per_node, sent, batch, timeout
                )
                sent_now.append((start, batch, tries, member, ref))
            pending = []
            for start, batch, tries, member, ref in sent_now:
                try:
                    replies: Sequence[Reply] = ray.get(ref, timeout=self._limit(timeout))
                except GetTimeoutError:
                    ray.cancel(ref)
                    raise NodeLost(f"no reply from node {member.node_id} in time") from None
                except _LOST as exc:
                    self._lose(member)
                    if tries >= self.retries:
                        raise NodeLost(self._lost_message(member, exc)) from None
                    pending.append((start, batch, tries + 1))
                    self.resent += 1
                    continue
                if any(not ok and isinstance(v, NotLoaded) for ok, v in replies):
                    self._reload(member)
                    pending.append((start, batch, tries))
                    continue
                for offset, (ok, value) in enumerate(replies):
                    if not ok and not return_exceptions:
                        raise value
                    results[start + offset] = value
        return results

    def stats(self) -> list[dict[str, Any]]:
        """Each holding node actor's counters (node id, pid, calls, pools)."""
        with self._lock:
            members = list(self._members)
        return list(ray.get([m.actor.stats.remote() for m in members]))

    def close(self) -> None:
        """Releases the pool's share of each node's local pool (closed when no cluster
        pool uses it any more). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            members, self._members = self._members, []
        for m in members:
            try:
                m.actor.unload.remote(self._spec.digest, self.size_per_node)
            except Exception:  # the actor or Ray is gone: nothing left to release
                pass

    @property
    def spec(self) -> GuestSpec:
        return self._spec
