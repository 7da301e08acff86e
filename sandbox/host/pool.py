"""`FunctionPool`: the warm sandboxes of one deployed function, for asyncio.

Every call runs in fresh state: the sandboxes are `Sandbox(reset="per_call")`, so each
restores its starting state before a call if it ran one before, and one that trapped or
timed out is restored (or replaced, if that fails) before reuse, as in `SandboxPool`.
What this pool adds for the host (and why it is not a `SandboxPool`):

- it is elastic: it keeps `warm` sandboxes, grows on demand up to `max_size` (the
  function's max_concurrency) and closes the extra ones after they sit idle;
- requests beyond `max_size` wait in an asyncio queue of at most `max_queue` (beyond
  it: QueueFull, a 429), never in threads;
- it returns what the guest printed during the call with the result;
- at shutdown it can cancel the calls still running (`close(cancel=True)`).

Guest calls run on the pool's own threads (at most `max_size`), so the event loop never
blocks. A job reaches a thread through a `SimpleQueue` and its result comes back with
one `call_soon_threadsafe`: no `concurrent.futures` future, condition or done-callback
chain per call, which cost the host ~5 us of its one CPU per invocation. All other
methods must be called from the event loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ..abi import Value
from ..errors import KvmError, SandboxClosed
from ..sandbox import Sandbox
from ..wasm.sandbox import WasmSandbox

SandboxFactory = Callable[[], Sandbox]
T = TypeVar("T")


class QueueFull(Exception):
    """All sandboxes are busy and the queue is full."""


class PoolClosed(Exception):
    """The pool was closed (the host is shutting down)."""


@dataclass(frozen=True)
class CallOutcome:
    value: Value
    error: BaseException | None
    output: str  # what the guest printed during the call (a Wasm program: its stdout)
    duration_s: float  # the guest call, the restore to fresh state included
    stderr: str = ""  # what a Wasm program wrote to its stderr (native guests: nothing)


def _run(
    sb: Sandbox, factory: SandboxFactory, name: str, args: Sequence[object], timeout: float
) -> tuple[Sandbox | None, CallOutcome]:
    """On a pool thread: one call in `sb`. Returns the sandbox to put back (a
    replacement if `sb` could not be restored, None if none could be made)."""
    if sb.poisoned or sb.closed:
        try:
            sb.restore()
        except (KvmError, SandboxClosed):
            sb.close()
            try:
                sb = factory()
            except Exception as exc:
                return None, CallOutcome(None, exc, "", 0.0)
    t0 = time.perf_counter()
    try:
        value: Value = sb.call(name, *args, timeout=timeout)
        error: BaseException | None = None
    except Exception as exc:
        value, error = None, exc
    stderr = sb.last_stderr if isinstance(sb, WasmSandbox) else ""
    outcome = CallOutcome(value, error, sb.last_output, time.perf_counter() - t0, stderr)
    return sb, outcome


class _Job(Generic[T]):
    """`fn(*args)` for a worker thread; its outcome goes to `future` on the event loop,
    or to `orphaned(result, error)` if the future was cancelled in the meantime.
    `ended()` is called on the event loop when the job has run."""

    __slots__ = ("fn", "args", "future", "orphaned", "ended")

    def __init__(
        self,
        fn: Callable[..., T],
        args: tuple[object, ...],
        future: asyncio.Future[T],
        orphaned: Callable[[T | None, BaseException | None], None] | None,
        ended: Callable[[], None],
    ) -> None:
        self.fn, self.args, self.future = fn, args, future
        self.orphaned, self.ended = orphaned, ended

    def run(self, loop: asyncio.AbstractEventLoop) -> None:
        """On a worker thread."""
        try:
            result: T | None = self.fn(*self.args)
            error: BaseException | None = None
        except BaseException as exc:  # handed to the awaiting task
            result, error = None, exc
        try:
            loop.call_soon_threadsafe(self._settle, result, error)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    def _settle(self, result: T | None, error: BaseException | None) -> None:
        """On the event loop's thread."""
        self.ended()
        future = self.future
        if future.cancelled():
            if self.orphaned is not None:
                self.orphaned(result, error)
        elif error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]


def _worker(jobs: queue.SimpleQueue[_Job[Any] | None], loop: asyncio.AbstractEventLoop) -> None:
    while (job := jobs.get()) is not None:
        job.run(loop)
        del job  # do not keep the last job's arguments and result alive while idle


class FunctionPool:
    def __init__(
        self,
        factory: SandboxFactory,
        *,
        max_size: int,
        warm: int,
        max_queue: int,
        label: str = "",
    ) -> None:
        self._factory = factory
        self.max_size = max_size
        self.warm = min(warm, max_size)
        self.max_queue = max_queue
        self._idle: list[tuple[Sandbox, float]] = []  # (sandbox, when released): LIFO
        self._busy: set[Sandbox] = set()
        self._creating = 0
        self._waiters: deque[asyncio.Future[Sandbox]] = deque()
        self._thread_name = f"fn-{label}" if label else "fn"
        self._jobs: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._running = 0  # jobs submitted and not yet settled
        self._closed = False
        self._quiet = asyncio.Event()  # set when nothing is busy or waiting
        self._quiet.set()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- sizes (metrics) ------------------------------------------------------------------

    @property
    def size(self) -> int:
        return len(self._idle) + len(self._busy) + self._creating

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def busy(self) -> int:
        return len(self._busy)

    @property
    def queued(self) -> int:
        return len(self._waiters)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- growing and shrinking ------------------------------------------------------------

    def adopt(self, sb: Sandbox) -> None:
        """Takes `sb` (made by the same factory, e.g. to validate the module) as idle."""
        self._give_back(sb)

    def _submit(
        self,
        fn: Callable[..., T],
        *args: object,
        orphaned: Callable[[T | None, BaseException | None], None] | None = None,
    ) -> asyncio.Future[T]:
        """Runs `fn(*args)` on one of the pool's threads, started as needed: as many as
        jobs have run at once (a call per busy sandbox, plus sandboxes being created),
        so that a job never waits for a thread."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._running += 1
        if len(self._threads) < self._running:
            thread = threading.Thread(
                target=_worker,
                args=(self._jobs, loop),
                name=f"{self._thread_name}_{len(self._threads)}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        self._jobs.put(_Job(fn, args, future, orphaned, self._job_ended))
        return future

    def _job_ended(self) -> None:
        self._running -= 1

    async def _create(self) -> Sandbox:
        self._creating += 1
        try:
            return await self._submit(self._factory)
        finally:
            self._creating -= 1

    async def fill(self) -> None:
        """Creates sandboxes until `warm` exist. Raises what Sandbox() raises."""
        while not self._closed and self.size < self.warm:
            self._give_back(await self._create())

    def shrink(self, idle_for: float) -> int:
        """Closes idle sandboxes above the warm count that have been idle for
        `idle_for` seconds or more; returns how many."""
        cutoff = time.monotonic() - idle_for
        closed = 0
        while len(self._idle) > self.warm and self._idle[0][1] <= cutoff:
            sb, _ = self._idle.pop(0)
            sb.close()
            closed += 1
        return closed

    # -- calls ----------------------------------------------------------------------------

    async def call(
        self, name: str, args: Sequence[object], *, timeout: float, wait: float
    ) -> CallOutcome:
        """Runs `name(*args)` in a fresh-state sandbox, waiting at most `wait` seconds
        for one. Raises QueueFull, PoolClosed, TimeoutError (waited too long), or what
        creating a sandbox raises; guest errors are in the outcome, not raised."""
        if self._idle and not self._closed:  # the usual case, without a coroutine
            sb = self._idle.pop()[0]
            self._busy.add(sb)
            self._quiet.clear()
        else:
            sb = await self._acquire(wait)

        def orphaned(
            result: tuple[Sandbox | None, CallOutcome] | None, error: BaseException | None
        ) -> None:
            """The caller was cancelled; the guest call went on in its thread and has
            ended: the sandbox comes back now."""
            self._busy.discard(sb)
            if error is not None or result is None:
                sb.close()  # interrupted in an unknown state
                self._give_back(None)
            else:
                self._give_back(result[0])

        back, outcome = await self._submit(
            _run, sb, self._factory, name, args, timeout, orphaned=orphaned
        )
        self._busy.discard(sb)
        self._give_back(back)
        return outcome

    async def _acquire(self, wait: float) -> Sandbox:
        if self._closed:
            raise PoolClosed("the function's pool is closed")
        if self._idle:
            sb, _ = self._idle.pop()
        elif self.size < self.max_size:
            sb = await self._create()
            if self._closed:
                sb.close()
                raise PoolClosed("the function's pool is closed")
        else:
            return await self._wait(wait)
        self._busy.add(sb)
        self._quiet.clear()
        return sb

    async def _wait(self, wait: float) -> Sandbox:
        if len(self._waiters) >= self.max_queue:
            raise QueueFull(
                f"all {self.max_size} sandboxes are busy and {self.max_queue} requests wait"
            )
        fut: asyncio.Future[Sandbox] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._quiet.clear()
        try:
            async with asyncio.timeout(wait):
                return await fut
        except BaseException:
            with contextlib.suppress(ValueError):
                self._waiters.remove(fut)
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                sb = fut.result()  # handed over just as we gave up: pass it on
                self._busy.discard(sb)
                self._give_back(sb)
            self._check_quiet()
            raise

    def _give_back(self, sb: Sandbox | None) -> None:
        if sb is None or sb.closed:
            if self._waiters and not self._closed:
                self._spawn(self._replace())
        elif self._closed:
            sb.close()
        else:
            while self._waiters:
                fut = self._waiters.popleft()
                if not fut.done():
                    self._busy.add(sb)
                    fut.set_result(sb)
                    return
            self._idle.append((sb, time.monotonic()))
        self._check_quiet()

    async def _replace(self) -> None:
        """A sandbox was lost while requests wait: make another for them."""
        if self.size >= self.max_size:
            return
        try:
            sb = await self._create()
        except Exception as exc:
            if self._waiters:
                self._waiters.popleft().set_exception(exc)
            self._check_quiet()
            return
        self._give_back(sb)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _check_quiet(self) -> None:
        if not self._busy and not self._waiters:
            self._quiet.set()

    # -- shutdown -------------------------------------------------------------------------

    async def drain(self, timeout: float) -> bool:
        """Waits until nothing is busy or waiting, at most `timeout` s; True if so."""
        try:
            async with asyncio.timeout(timeout):
                await self._quiet.wait()
        except TimeoutError:
            return False
        return True

    async def close(self, *, cancel: bool = False) -> None:
        """Closes the pool: waiting requests get PoolClosed, idle sandboxes are closed,
        busy ones when their call ends (with `cancel`, running calls are cancelled
        first: they end with CallCancelled). Idempotent."""
        self._closed = True
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(PoolClosed("the host is shutting down"))
        idle, self._idle = self._idle, []
        for sb, _ in idle:
            sb.close()
        if cancel and self._busy:
            await asyncio.gather(*(asyncio.to_thread(sb.cancel) for sb in list(self._busy)))
        for task in list(self._tasks):
            task.cancel()
        for _ in self._threads:  # each thread ends after the jobs queued before this
            self._jobs.put(None)
        self._threads.clear()
        self._check_quiet()
