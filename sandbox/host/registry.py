"""`Registry`: the deployed functions of a running host. It keeps the store (disk) and
the deployments (pools) in step, and runs invocations."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Coroutine, Iterable, Sequence
from typing import Any, BinaryIO

from .. import errors as sbx
from ..abi import Signature
from ..elf import load_guest
from ..wasm.module import load as load_wasm
from .config import HostConfig
from .deployment import (
    Deployment,
    Limits,
    check_entry,
    make_factory,
    new_pool,
    open_sandbox,
    wasm_entry,
)
from .errors import ApiError, bad_request, body_too_large, from_guest_error, not_found
from .manifest import FunctionRecord, FunctionSpec
from .metrics import Gauge, Labels, Metrics
from .pool import CallOutcome, PoolClosed, QueueFull
from .store import Blob, FunctionStore, Loaded, StoredTooLarge, StoreError

log = logging.getLogger("sandbox.host")


class Registry:
    def __init__(self, config: HostConfig, metrics: Metrics) -> None:
        self.config = config
        self.store = FunctionStore(config.data_dir)
        self.metrics = metrics
        self._deployments: dict[str, Deployment] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._retiring: set[Deployment] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.started = False
        metrics.gauges.extend(self._gauges())

    # -- start and stop -----------------------------------------------------------------

    async def start(self) -> None:
        """Opens the store and loads every stored function (warming its pool if
        configured). Raises StoreError if the data directory is unusable."""
        loaded, warnings = await asyncio.to_thread(self.store.open)
        for warning in warnings:
            log.warning(warning)
        for item in loaded:
            dep = await self._load(item)
            self._deployments[dep.name] = dep
            if dep.problem:
                log.error(
                    "function cannot run", extra={"function": dep.name, "problem": dep.problem}
                )
        self._spawn(self._shrink_idle())
        self.started = True
        log.info("functions loaded", extra={"functions": len(loaded)})

    async def _load(self, item: Loaded) -> Deployment:
        record = item.record
        limits = Limits.resolve(record.spec, self.config, strict=False)
        if item.problem is not None:
            return Deployment(record, limits, problem=item.problem)
        blob = self.store.blob_path(record.sha256)
        sig: Signature | None
        try:
            if record.spec.kind == "wasm":
                module = await asyncio.to_thread(load_wasm, blob)
                sig = wasm_entry(module, record.spec)
            else:
                image = await asyncio.to_thread(load_guest, blob)
                sig = image.functions.get(record.spec.entry)
        except ApiError as exc:
            return Deployment(record, limits, problem=exc.message)
        except Exception as exc:
            return Deployment(record, limits, problem=f"module does not load: {exc}")
        if sig is None:
            return Deployment(record, limits, problem=f"no entry {record.spec.entry!r}")
        pool = new_pool(record.name, limits, make_factory(blob, record.spec, self.config))
        dep = Deployment(record, limits, sig, pool)
        if self.config.warm_on_start:
            try:
                await pool.fill()
            except Exception as exc:
                await pool.close()
                return Deployment(record, limits, problem=f"cannot start sandboxes: {exc}")
        return dep

    async def close(self) -> None:
        """Closes every pool, cancelling calls still running. Idempotent."""
        for task in list(self._tasks):
            task.cancel()
        deps = [*self._deployments.values(), *self._retiring]
        await asyncio.gather(*(d.pool.close(cancel=True) for d in deps if d.pool is not None))
        self.store.close()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    async def _shrink_idle(self) -> None:
        period = max(0.5, min(self.config.pool_idle_s / 4, 30.0))
        while True:
            await asyncio.sleep(period)
            for dep in list(self._deployments.values()):
                if dep.pool is not None:
                    dep.pool.shrink(self.config.pool_idle_s)

    def _retire(self, dep: Deployment) -> None:
        """Lets a replaced or deleted deployment finish its calls, then closes it."""
        dep.retired = True
        if dep.pool is None:
            return
        pool = dep.pool
        self._retiring.add(dep)

        async def retire() -> None:
            try:
                await pool.drain(self.config.max_timeout_s + 1)
                await pool.close(cancel=True)
            finally:
                self._retiring.discard(dep)

        self._spawn(retire())

    # -- lookups ------------------------------------------------------------------------

    def get(self, name: str) -> Deployment | None:
        return self._deployments.get(name)

    def all(self) -> list[Deployment]:
        return [self._deployments[n] for n in sorted(self._deployments)]

    @contextlib.asynccontextmanager
    async def _locked(self, name: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            yield

    # -- deploy and delete --------------------------------------------------------------

    async def deploy(
        self, name: str, spec: FunctionSpec, module: BinaryIO | None
    ) -> tuple[Deployment, bool]:
        """Stores and starts `name` (module None: keep the current module). Returns
        the deployment and whether it is new. Raises ApiError: 400 (limits, no module
        for a new function), 413, 422 (not a usable module, no such entry, wasm), 500."""
        limits = Limits.resolve(spec, self.config)
        async with self._locked(name):
            existing = self.store.get(name)
            blob = await self._blob_for(name, existing, module)
            try:
                factory = make_factory(blob.path, spec, self.config)
                sb = await open_sandbox(factory)
                try:
                    sig = check_entry(sb, spec)
                    now = time.time()
                    record = FunctionRecord(
                        name=name,
                        spec=spec,
                        sha256=blob.sha256,
                        size=blob.size,
                        version=existing.version + 1 if existing else 1,
                        created_at=existing.created_at if existing else now,
                        updated_at=now,
                    )
                    await asyncio.to_thread(self.store.commit, record)
                except BaseException:
                    sb.close()
                    raise
            except StoreError as exc:
                log.error("store failed", extra={"function": name, "error": str(exc)})
                raise ApiError(500, "StoreError", str(exc)) from exc
            finally:
                await asyncio.to_thread(self.store.unpin, blob.sha256)
            pool = new_pool(name, limits, factory)
            pool.adopt(sb)
            dep = Deployment(record, limits, sig, pool)
            old = self._deployments.get(name)
            self._deployments[name] = dep
            if old is not None:
                self._retire(old)
            self._spawn(pool.fill())
        log.info(
            "function deployed",
            extra={"function": name, "version": record.version, "sha256": blob.sha256},
        )
        return dep, existing is None

    async def _blob_for(
        self, name: str, existing: FunctionRecord | None, module: BinaryIO | None
    ) -> Blob:
        if module is None:
            if existing is None:
                raise bad_request(
                    f"function {name!r} does not exist: upload a module to create it",
                    "ModuleRequired",
                )
            return await asyncio.to_thread(self.store.pin, existing.sha256, existing.size)
        try:
            return await asyncio.to_thread(self.store.ingest, module, self.config.max_upload_bytes)
        except StoredTooLarge:
            raise body_too_large(self.config.max_upload_bytes) from None
        except StoreError as exc:
            log.error("store failed", extra={"function": name, "error": str(exc)})
            raise ApiError(500, "StoreError", str(exc)) from exc

    async def delete(self, name: str) -> None:
        """Removes `name` durably; its running calls finish first. Raises ApiError 404."""
        async with self._locked(name):
            try:
                removed = await asyncio.to_thread(self.store.remove, name)
            except StoreError as exc:
                raise ApiError(500, "StoreError", str(exc)) from exc
            if not removed:
                raise not_found(name)
            dep = self._deployments.pop(name, None)
            if dep is not None:
                self._retire(dep)
        log.info("function deleted", extra={"function": name})

    # -- invocation ---------------------------------------------------------------------

    async def call(self, dep: Deployment, args: Sequence[object]) -> CallOutcome:
        """Runs the function's entry with `args` in fresh state. Raises ApiError for
        every failure (see errors.py for the status codes)."""
        for _ in range(3):
            pool = dep.pool
            if pool is None:
                raise ApiError(503, "FunctionUnavailable", dep.problem or "cannot run")
            limits = dep.limits
            try:
                outcome = await pool.call(
                    dep.spec.entry, args, timeout=limits.timeout_s, wait=limits.timeout_s
                )
                break
            except PoolClosed:
                current = self._deployments.get(dep.name)
                if not dep.retired or current is None:
                    raise ApiError(
                        503,
                        "ShuttingDown",
                        "the host is shutting down",
                        headers={"Retry-After": "1"},
                    ) from None
                dep = current  # replaced while we waited: run the new version
            except QueueFull as exc:
                self.metrics.rejected.inc(dep.name)
                self.metrics.invocations.inc(dep.name, "rejected")
                raise ApiError(
                    429, "QueueFull", str(exc), headers={"Retry-After": "1"}, function=dep.name
                ) from None
            except TimeoutError:
                self.metrics.invocations.inc(dep.name, "queue_timeout")
                raise ApiError(
                    503,
                    "QueueTimeout",
                    f"no sandbox of {dep.name!r} became free within {limits.timeout_s} s",
                    headers={"Retry-After": "1"},
                ) from None
            except ApiError:
                raise
            except Exception as exc:  # creating a sandbox failed
                self.metrics.invocations.inc(dep.name, "error")
                raise from_guest_error(exc, dep.name, "") from exc
        else:
            raise ApiError(503, "ShuttingDown", "the function was replaced repeatedly")
        self._account(dep.name, outcome)
        if outcome.error is not None:
            raise from_guest_error(outcome.error, dep.name, outcome.output)
        return outcome

    def _account(self, name: str, outcome: CallOutcome) -> None:
        m = self.metrics
        m.invocation_latency.observe(outcome.duration_s, name)
        err = outcome.error
        if err is None:
            m.invocations.inc(name, "ok")
        elif isinstance(err, sbx.CallTimeout):
            m.invocations.inc(name, "timeout")
            m.timeouts.inc(name)
        elif isinstance(err, sbx.GuestTrap):
            m.invocations.inc(name, "trap")
            m.traps.inc(name, err.kind)
        elif isinstance(err, sbx.GuestAbort):
            m.invocations.inc(name, "abort")
        elif isinstance(err, sbx.ArgumentError):
            m.invocations.inc(name, "bad_args")
        else:
            m.invocations.inc(name, "error")

    # -- metrics ------------------------------------------------------------------------

    def _gauges(self) -> Iterable[Gauge]:
        def pools(attr: str) -> Iterable[tuple[Labels, float]]:
            for dep in self._deployments.values():
                if dep.pool is not None:
                    yield (dep.name,), float(getattr(dep.pool, attr))

        p = "sandbox_host_"
        yield Gauge(
            p + "functions", "deployed functions", (), lambda: [((), len(self._deployments))]
        )
        yield Gauge(
            p + "pool_size", "sandboxes of a function", ("function",), lambda: pools("size")
        )
        yield Gauge(p + "pool_idle", "idle sandboxes", ("function",), lambda: pools("idle"))
        yield Gauge(
            p + "pool_busy", "sandboxes running a call", ("function",), lambda: pools("busy")
        )
        yield Gauge(
            p + "queued", "requests waiting for a sandbox", ("function",), lambda: pools("queued")
        )
