"""`Deployment`: one version of a stored function made runnable: its limits, signature
and pool, and how many invocations run on it.

Versions are reference-counted: an invocation takes the current deployment and runs to
completion on it (`active` counts it); an update or delete retires a deployment, whose
pool is closed when its last invocation ends. So neither ever fails a running or
queued invocation, and a retired version's sandboxes are made from its own snapshot
(no file of it is read again).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..abi import Signature
from ..pool import Gate, SandboxPool
from .config import HostConfig
from .errors import bad_request
from .functions import Function, FunctionKind, http_body_limit
from .manifest import FunctionRecord, FunctionSpec
from .wasm_functions import WasmKind

T = TypeVar("T")
LOG_TAIL = 4096  # bytes of stdout/stderr kept per log entry


@dataclass(frozen=True)
class Limits:
    """A function's limits: its manifest's, or the host's defaults."""

    timeout_s: float
    max_concurrency: int
    max_queue: int
    warm: int
    http_body_bytes: int  # http mode: the largest request body (functions.http_body_limit)

    @classmethod
    def resolve(cls, spec: FunctionSpec, config: HostConfig, *, strict: bool = True) -> Limits:
        """Raises ApiError (400) for a limit over what the host allows; with
        strict=False (functions stored under another config) clamps it instead."""
        timeout = spec.timeout_s if spec.timeout_s is not None else config.default_timeout_s
        concurrency = spec.max_concurrency or config.default_max_concurrency
        if strict and timeout > config.max_timeout_s:
            raise bad_request(
                f"timeout_s must be at most {config.max_timeout_s}", "InvalidManifest"
            )
        if strict and concurrency > config.max_concurrency_limit:
            raise bad_request(
                f"max_concurrency must be at most {config.max_concurrency_limit}",
                "InvalidManifest",
            )
        timeout = min(timeout, config.max_timeout_s)
        concurrency = min(concurrency, config.max_concurrency_limit)
        queue = spec.max_queue if spec.max_queue is not None else config.default_max_queue
        warm = spec.warm if spec.warm is not None else config.default_warm
        body = http_body_limit(spec, config)
        return cls(timeout, concurrency, queue, min(warm, concurrency), body)


@dataclass(eq=False)
class Deployment:
    """A function's version as it is served. `problem` is set (and `pool` None) for a
    stored function that cannot run, e.g. its blob is corrupt."""

    record: FunctionRecord
    limits: Limits
    signature: Signature | None = None
    pool: SandboxPool[Function] | None = None
    problem: str | None = None
    active: int = 0  # invocations running or waiting on this version
    retired: bool = False
    logs: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=100))
    kind: FunctionKind | None = None

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def spec(self) -> FunctionSpec:
        return self.record.spec

    @property
    def version(self) -> int:
        return self.record.version

    def info(self) -> dict[str, object]:
        """The JSON description of GET /functions/{name} (secrets by name only)."""
        sig = self.signature
        pool = self.pool
        record = self.record
        return {
            "name": self.name,
            "version": record.version,
            "sha256": record.sha256,
            "size": record.size,
            "created_at": record.created_at,
            "updated_at": record.updated_at,
            "spec": self.spec.public_view(),
            "signature": None if sig is None else str(sig),
            "params": None if sig is None else [t.type_name for t in sig.params],
            "returns": None if sig is None else sig.ret.type_name,
            "limits": {
                "timeout_s": self.limits.timeout_s,
                "max_concurrency": self.limits.max_concurrency,
                "max_queue": self.limits.max_queue,
                "warm": self.limits.warm,
            },
            "state": "ready" if self.problem is None else "failed",
            "problem": self.problem,
            "pool": {
                "size": pool.members if pool else 0,
                "idle": pool.idle if pool else 0,
                "busy": pool.busy if pool else 0,
                "queued": pool.queued if pool else 0,
            },
            "wasm": self.kind.code() if isinstance(self.kind, WasmKind) else None,
            "previous_versions": [rev.version for rev in record.previous],
        }

    def log(self, entry: dict[str, Any]) -> None:
        self.logs.append(entry)


def new_pool(
    name: str,
    limits: Limits,
    kind: FunctionKind,
    created: Callable[[], None],
    gate: Gate | None = None,
) -> SandboxPool[Function]:
    """The pool of one version: `warm` sandboxes made by `fill()`, up to
    max_concurrency on demand, max_queue requests waiting; `created` is called for
    every sandbox made (the cold-start counter); `gate`: the host's fair shares of
    worker threads (shares.py)."""

    def factory() -> Function:
        fn = kind.new()
        created()
        return fn

    return SandboxPool(
        factory=factory,
        size=limits.warm,
        max_size=limits.max_concurrency,
        max_queue=limits.max_queue,
        create=False,
        label=f"fn-{name[:10]}",
        gate=gate,
    )


async def in_daemon_thread(fn: Callable[[], T], discard: Callable[[T], None]) -> T:
    """`fn()` on a daemon thread of its own: a module's start-up that runs until its
    time limit does not keep the process alive at shutdown (asyncio.to_thread's
    threads are joined at exit). If the caller has left (cancelled, timed out) when
    `fn` returns, its result goes to `discard` instead (to close what was made)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.cancelled():
            if error is None:
                discard(result)
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def run() -> None:
        try:
            result: Any = fn()
            error: BaseException | None = None
        except BaseException as exc:
            result, error = None, exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop is closed
            pass

    threading.Thread(target=run, name="fn-deploy", daemon=True).start()
    return await future
