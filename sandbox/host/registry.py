"""`Registry`: the deployed functions of a running host. It keeps the store (disk) and
the deployments (versions and their pools) in step, and runs invocations.

Every change of a function (deploy, PATCH, rollback, delete) holds that function's lock
and may name the version it expects (If-Match: 412 if another change came first). A
change makes a new version (deployment.py: invocations on the old one run to their end).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import Any, BinaryIO

from pydantic import ValidationError

from ..abi import Signature
from ..elf import load_guest
from ..pool import CallOutcome
from ..wasm.module import load as load_wasm
from .config import HostConfig
from .deployment import LOG_TAIL, Deployment, Limits, in_daemon_thread, new_pool
from .errors import (
    ApiError,
    api_error,
    bad_request,
    body_too_large,
    hide_path,
    not_found,
    row_of,
    scrub,
    unavailable,
)
from .functions import Function, FunctionKind, native_entry
from .kinds import kind_for
from .manifest import FunctionRecord, FunctionSpec, Revision
from .metrics import Metrics
from .python_functions import python_entry
from .shares import WorkerShares, inline_calls
from .store import Blob, FunctionStore, Loaded, StoredTooLarge, StoreError
from .wasm_functions import Startups, wasm_entry

log = logging.getLogger("sandbox.host")
DEPLOY_GRACE_S = 5.0  # beyond a start-up's time limit, before the deploy stops waiting


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch: objects merge member by member, null removes a
    member, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def spec_from(doc: object) -> FunctionSpec:
    """Raises ApiError 400 for a manifest that is not a FunctionSpec (strict)."""
    try:
        if isinstance(doc, str | bytes | bytearray):
            return FunctionSpec.model_validate_json(doc)
        return FunctionSpec.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "manifest"
        raise bad_request(f"invalid manifest: {where}: {first['msg']}", "InvalidManifest") from None


class Registry:
    def __init__(self, config: HostConfig, metrics: Metrics) -> None:
        self.config = config
        self.store = FunctionStore(config.data_dir)
        hide_path(str(config.data_dir.resolve()), "<data dir>")
        hide_path(str(config.data_dir), "<data dir>")
        self.metrics = metrics
        self._deployments: dict[str, Deployment] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._retiring: set[Deployment] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.started = False
        self.closing = False
        self.inline = inline_calls(config)
        self.budget = config.long_call_ms / 1e3
        self.startups = Startups()
        self.shares = WorkerShares.for_config(config)
        metrics.watch(self)

    # -- start and stop -----------------------------------------------------------------

    async def start(self) -> None:
        """Opens the store and loads every stored function (warming its pool if
        configured). Raises StoreError if the data directory is unusable."""
        loaded, warnings = await asyncio.to_thread(self.store.open)
        for warning in warnings:
            log.warning(scrub(warning))
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
            elif record.spec.kind == "python":
                sig = await asyncio.to_thread(python_entry, blob, record.spec)
            else:
                image = await asyncio.to_thread(load_guest, blob)
                sig = native_entry(image.functions, record.spec)
        except ApiError as exc:
            return Deployment(record, limits, problem=exc.message)
        except Exception as exc:
            return Deployment(record, limits, problem=f"module does not load: {scrub(str(exc))}")
        kind = kind_for(
            record.name, blob, record.spec, self.config, limits.timeout_s, self.startups
        )
        pool = new_pool(
            record.name, limits, kind, self.metrics.created_counter(record.name), self.shares
        )
        dep = Deployment(record, limits, sig, pool, logs=self._log_ring(), kind=kind)
        if self.config.warm_on_start:
            try:
                await pool.fill()
            except Exception as exc:
                pool.close()
                problem = f"cannot start sandboxes: {scrub(str(exc))}"
                return Deployment(record, limits, problem=problem)
        return dep

    def cancel_startups(self) -> None:
        """Stops the Wasm start-ups of deploys in progress (they answer 503) and refuses
        new ones, on a thread of its own (it may wait for a start function to stop)."""
        if not self.startups.cancelled:
            threading.Thread(
                target=self.startups.cancel_all, name="cancel-startups", daemon=True
            ).start()

    async def close(self) -> None:
        """Closes every pool, cancelling calls still running. Idempotent."""
        self.closing = True
        await asyncio.to_thread(self.startups.cancel_all)
        for task in list(self._tasks):
            task.cancel()
        deps = [*self._deployments.values(), *self._retiring]
        pools = [d.pool for d in deps if d.pool is not None]
        await asyncio.gather(*(asyncio.to_thread(p.close, cancel=True) for p in pools))
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

    def _fill(self, dep: Deployment) -> None:
        pool = dep.pool
        if pool is None:
            return

        async def fill() -> None:
            try:
                await pool.fill()
            except Exception as exc:  # the next invocations retry (and answer the error)
                log.warning(
                    "cannot warm the pool",
                    extra={"function": dep.name, "error": scrub(str(exc))},
                )

        self._spawn(fill())

    def _install(self, dep: Deployment) -> None:
        old = self._deployments.get(dep.name)
        self._deployments[dep.name] = dep
        if old is not None:
            self._retire(old)

    def _retire(self, dep: Deployment) -> None:
        """A replaced or deleted version: its pool closes when its last invocation ends."""
        dep.retired = True
        if dep.pool is not None:
            if dep.active == 0:
                dep.pool.close()
            else:
                self._retiring.add(dep)

    def _log_ring(self) -> deque[dict[str, Any]]:
        return deque(maxlen=self.config.log_entries)

    # -- lookups ------------------------------------------------------------------------

    def get(self, name: str) -> Deployment | None:
        return self._deployments.get(name)

    def all(self) -> list[Deployment]:
        return [self._deployments[n] for n in sorted(self._deployments)]

    def busy(self) -> int:
        """Invocations running or waiting, on every version."""
        return sum(d.active for d in self._deployments.values()) + sum(
            d.active for d in self._retiring
        )

    @contextlib.asynccontextmanager
    async def _locked(self, name: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            yield

    def _check_version(
        self, name: str, record: FunctionRecord | None, if_match: str | None
    ) -> None:
        """Raises ApiError 412 unless If-Match names the current version (or is *)."""
        if if_match is None:
            return
        tags = {t.strip() for t in if_match.split(",")}
        if record is None:
            raise ApiError(412, "PreconditionFailed", f"function {name!r} does not exist")
        if "*" not in tags and record.etag not in tags and f"W/{record.etag}" not in tags:
            raise ApiError(
                412,
                "PreconditionFailed",
                f"function {name!r} is at version {record.version} (ETag {record.etag}), "
                f"not {if_match}",
                version=record.version,
            )

    # -- deploy, patch, rollback, delete --------------------------------------------------

    async def deploy(
        self,
        name: str,
        spec: FunctionSpec,
        module: BinaryIO | None,
        *,
        if_match: str | None = None,
    ) -> tuple[Deployment, bool]:
        """Stores and starts `name` (module None: keep the current module). Returns
        the deployment and whether it is new. Raises ApiError: 400 (limits, no module
        for a new function), 412, 413, 422 (not a usable module, no such entry), 500."""
        Limits.resolve(spec, self.config)  # 400 before anything is read or stored
        async with self._locked(name):
            existing = self.store.get(name)
            self._check_version(name, existing, if_match)
            blob = await self._blob_for(name, existing, module)
            return await self._commit(name, spec, blob, existing), existing is None

    async def patch(self, name: str, patch: object, *, if_match: str | None = None) -> Deployment:
        """Applies a JSON merge patch to the manifest (RFC 7396); keeps the module."""
        if not isinstance(patch, dict):
            raise bad_request("a PATCH body is a JSON object (a merge patch of the manifest)")
        async with self._locked(name):
            existing = self.store.get(name)
            if existing is None:
                raise not_found(name)
            self._check_version(name, existing, if_match)
            current = existing.spec.model_dump()
            spec = spec_from(merge_patch(current, patch))
            Limits.resolve(spec, self.config)
            blob = await asyncio.to_thread(self.store.pin, existing.sha256, existing.size)
            return await self._commit(name, spec, blob, existing)

    async def rollback(
        self, name: str, version: int | None, *, if_match: str | None = None
    ) -> Deployment:
        """Makes a kept earlier version (default: the one before the current) current
        again, as a new version (like a Knative revision). Raises ApiError 404, 412."""
        async with self._locked(name):
            existing = self.store.get(name)
            if existing is None:
                raise not_found(name)
            self._check_version(name, existing, if_match)
            revs = existing.previous
            rev = revs[0] if version is None and revs else None
            if version is not None:
                rev = next((r for r in revs if r.version == version), None)
            if rev is None:
                kept = ", ".join(str(r.version) for r in revs) or "none"
                raise ApiError(
                    404,
                    "VersionNotFound",
                    f"function {name!r} keeps no version {version if version else 'before '}"
                    f"{'' if version else str(existing.version)} (kept: {kept})",
                    function=name,
                )
            Limits.resolve(rev.spec, self.config)
            blob = await asyncio.to_thread(self.store.pin, rev.sha256, rev.size)
            return await self._commit(name, rev.spec, blob, existing, dropped=rev)

    async def _commit(
        self,
        name: str,
        spec: FunctionSpec,
        blob: Blob,
        existing: FunctionRecord | None,
        *,
        dropped: Revision | None = None,
    ) -> Deployment:
        """With the lock held and `blob` pinned: validates the module by making its first
        sandbox (under the function's time limit), stores the record (the commit
        point), and installs the new version."""
        limits = Limits.resolve(spec, self.config)
        try:
            kind = kind_for(name, blob.path, spec, self.config, limits.timeout_s, self.startups)
            fn = await self._first(name, kind, limits.timeout_s)
            try:
                now = time.time()
                previous: list[Revision] = []
                if existing is not None:
                    older = [r for r in existing.previous if r is not dropped]
                    previous = [existing.revision(), *older][: self.config.keep_versions]
                record = FunctionRecord(
                    name=name,
                    spec=spec,
                    sha256=blob.sha256,
                    size=blob.size,
                    version=existing.version + 1 if existing else 1,
                    created_at=existing.created_at if existing else now,
                    updated_at=now,
                    previous=previous,
                )
                await asyncio.to_thread(self.store.commit, record)
            except BaseException:
                fn[0].close()
                raise
        except StoreError as exc:
            log.error("store failed", extra={"function": name, "error": scrub(str(exc))})
            raise ApiError(500, "StoreError", scrub(str(exc))) from exc
        finally:
            await asyncio.to_thread(self.store.unpin, blob.sha256)
        first, sig = fn
        pool = new_pool(name, limits, kind, self.metrics.created_counter(name), self.shares)
        self.metrics.created_counter(name)()
        pool.adopt(first)
        dep = Deployment(record, limits, sig, pool, logs=self._log_ring(), kind=kind)
        self._install(dep)
        self._fill(dep)
        log.info(
            "function deployed",
            extra={"function": name, "version": record.version, "sha256": blob.sha256},
        )
        return dep

    async def _first(
        self, name: str, kind: FunctionKind, limit: float
    ) -> tuple[Function, Signature]:
        """The module's first sandbox, on a daemon thread, within its time limit."""
        try:
            async with asyncio.timeout(limit + DEPLOY_GRACE_S):
                return await in_daemon_thread(kind.first, lambda made: made[0].close())
        except ApiError:
            raise
        except TimeoutError as exc:
            raise ApiError(
                422,
                "InvalidModule",
                f"the module's start-up did not end within the function's time limit ({limit} s)",
                function=name,
            ) from exc
        except Exception as exc:
            error = api_error(exc, function=name, deploy=True)
            if error.status >= 500:
                log.error("deploy failed", extra={"function": name, "error": error.message})
            raise error from exc

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
            log.error("store failed", extra={"function": name, "error": scrub(str(exc))})
            raise ApiError(500, "StoreError", scrub(str(exc))) from exc

    async def delete(self, name: str, *, if_match: str | None = None) -> None:
        """Removes `name` durably; its running calls finish first. Raises ApiError 404,
        412."""
        async with self._locked(name):
            self._check_version(name, self.store.get(name), if_match)
            try:
                removed = await asyncio.to_thread(self.store.remove, name)
            except StoreError as exc:
                raise ApiError(500, "StoreError", scrub(str(exc))) from exc
            if not removed:
                raise not_found(name)
            dep = self._deployments.pop(name, None)
            if dep is not None:
                self._retire(dep)
        log.info("function deleted", extra={"function": name})

    # -- invocation ---------------------------------------------------------------------

    async def call(self, dep: Deployment, args: Sequence[object]) -> CallOutcome:
        """Runs the function's entry with `args` in fresh state, on this version to the
        end. Raises ApiError for every failure (errors.TABLE)."""
        if dep.retired and (dep.pool is None or dep.pool.closed):
            # Replaced or deleted (and its last call done) while this request's body
            # arrived: the function as it is now answers it.
            current = self._deployments.get(dep.name)
            if current is None:
                raise not_found(dep.name)
            dep = current
        pool = dep.pool
        if pool is None:
            raise unavailable("FunctionUnavailable", dep.problem or "the function cannot run")
        limits = dep.limits
        dep.active += 1
        try:
            outcome = await pool.acall_outcome(
                dep.spec.entry,
                *args,
                timeout=limits.timeout_s,
                wait=limits.timeout_s,
                budget=self.budget,
                inline=self.inline,
            )
        except Exception as exc:  # about the pool: full, waited too long, closed, no sandbox
            self.metrics.invocation(dep.name, row_of(exc).outcome, None)
            refusal = api_error(exc, function=dep.name)
            self.metrics.response(dep.name, dep.version, refusal.status)
            raise refusal from None
        finally:
            dep.active -= 1
            if dep.retired and dep.active == 0 and dep.pool is not None:
                self._retiring.discard(dep)
                dep.pool.close()
        error = outcome.error
        label = "ok" if error is None else row_of(error).outcome
        trap = getattr(error, "kind", None)
        self.metrics.invocation(dep.name, label, outcome.duration_s, trap=trap)
        if error is not None or outcome.output or outcome.stderr:
            dep.log(
                {
                    "ts": time.time(),
                    "version": dep.version,
                    "outcome": label,
                    "error": None if error is None else scrub(str(error))[:LOG_TAIL],
                    "stdout": outcome.output[-LOG_TAIL:],
                    "stderr": outcome.stderr[-LOG_TAIL:],
                }
            )
        if error is not None:
            failure = api_error(error, function=dep.name, output=self.cut(outcome.output))
            self.metrics.response(dep.name, dep.version, failure.status)
            raise failure
        self.metrics.response(dep.name, dep.version, getattr(outcome.value, "status", 200))
        return outcome

    def cut(self, output: str) -> str:
        """At most max_output_bytes of a call's output go into a reply."""
        limit = self.config.max_output_bytes
        if len(output) <= limit // 4:  # surely under the limit in UTF-8
            return output
        data = output.encode("utf-8", "surrogatepass")
        if len(data) <= limit:
            return output
        return data[:limit].decode("utf-8", "ignore")
