"""`SandboxPool`: ready micro-VMs of one guest; every call runs in fresh state.

One pool for threads and for asyncio, used by the runtime's users and by the function
host alike:

- sized by load: `size` members are made up front (or by `fill()`), more on demand up
  to `max_size`, and those above `size` that sat idle are closed by `shrink()`;
- callers beyond `max_size` wait: threads on a condition, asyncio tasks in a queue of at
  most `max_queue` (beyond it: PoolFull; waiting longer than `wait`: PoolTimeout);
- "restore a poisoned member or replace it" is written once, here (`_renew`), and runs
  on the calling thread (sync) or a pool thread (asyncio) before every call;
- `outcome()` / `acall_outcome()` return a call's value or error with what the guest
  printed during that call (per-call output);
- `close(cancel=True)` cancels the calls still running (they end with CallCancelled).

Members are `Sandbox`es, or anything with the `Member` protocol (the function host's
`Function`s wrap a sandbox of one deployed function). Asyncio calls run on the pool's
own daemon threads, at most one per call running at once: a job reaches a thread
through a `SimpleQueue` and its result comes back with one `call_soon_threadsafe`
(no `concurrent.futures` machinery per call, which cost the host ~5 us a call). A call
`budget` sorts a pool's calls into short and long ones: a `Gate` shared by several pools
may bound how many long calls each runs on threads (the host's fair shares), and short
calls may run `inline` on the event loop's own thread, in batches (`_InlineBatch`: no
thread switch, and guest calls back to back).

Over ~500 lines for one concept: the thread and the asyncio paths share one state (idle,
busy, waiters, under one lock) and one renew/release, and the inline batches and the
gate act on that same state; split into modules, it would be reached across them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import queue
import resource
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, overload

from . import _reaper, kinds
from ._native import block_signals_in_this_thread
from .abi import Value
from .arguments import HostFunction
from .config import SandboxConfig
from .errors import (
    ArgumentError,
    CallTimeout,
    PoolFull,
    PoolTimeout,
    SandboxClosed,
    SandboxError,
)
from .sandbox import Sandbox
from .snapshot import Snapshot

# Each sandbox holds two file descriptors: the VM and the vCPU (its mappings are made
# through the extension, which keeps no duplicate descriptors).
FDS_PER_SANDBOX = 2


def ensure_fd_limit(needed: int) -> None:
    """Raises this process's soft RLIMIT_NOFILE towards the hard limit so that `needed`
    more descriptors fit (1,000 sandboxes need ~2,000)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    want = in_use + needed + 64
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


class Member(Protocol):
    """What a pool holds: a `Sandbox`, or a wrapper of one (the host's functions)."""

    @property
    def poisoned(self) -> bool: ...

    @property
    def closed(self) -> bool: ...

    def call(self, name: str, *args: Any, timeout: float | None = None) -> Any: ...

    def restore(self) -> None: ...

    def cancel(self) -> None: ...

    def close(self) -> None: ...


M = TypeVar("M", bound=Member)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """One call's result or error, with what the guest printed during it."""

    value: Any
    error: Exception | None
    output: str  # what the guest printed (a WASI program: its stdout)
    stderr: str  # what a WASI program wrote to fd 2 (native guests: "")
    truncated: bool  # the output was cut at the sandbox's output limit
    duration_s: float  # the call, the restore to fresh state included


def outcome(
    member: Member, name: str, args: tuple[object, ...], timeout: float | None
) -> CallOutcome:
    """Runs `member.call(name, *args)`; its value or the exception it raised, and its
    output (`last_output`, `last_stderr`, `last_output_truncated` where the member has
    them)."""
    t0 = time.perf_counter()
    try:
        value = member.call(name, *args, timeout=timeout)
        error: Exception | None = None
    except Exception as exc:
        value, error = None, exc
    return CallOutcome(
        value,
        error,
        getattr(member, "last_output", ""),
        getattr(member, "last_stderr", ""),
        bool(getattr(member, "last_output_truncated", False)),
        time.perf_counter() - t0,
    )


class Gate(Protocol):
    """Admission of calls to pool threads, shared by several pools (the function
    host's fair shares: host/shares.py). A pool enters before a long call goes to one
    of its threads and leaves when that call has ended (its caller may have left
    before); `touch` tells it that the pool runs a short call, which does not enter
    (it counts as activity all the same). Event loop thread only."""

    async def enter(self, pool: object) -> None:
        """Waits until `pool` may run one more call on a thread."""
        ...

    def leave(self, pool: object) -> None: ...

    def touch(self, pool: object) -> None: ...


_QUEUE = object()  # an inline job's verdict: run the call the ordinary way (a pool thread)


class _Inline:
    """A call waiting in an `_InlineBatch`."""

    __slots__ = ("pool", "name", "args", "budget", "future")

    def __init__(
        self,
        pool: SandboxPool[Any],
        name: str,
        args: tuple[object, ...],
        budget: float,
        future: asyncio.Future[Any],
    ) -> None:
        self.pool, self.name, self.args, self.budget = pool, name, args, budget
        self.future = future


class _InlineBatch:
    """A pool's inline calls on one event loop. The first call queued schedules
    `run` with call_soon, so the tasks that are ready now (the other requests that
    arrived in the same loop iteration) queue theirs first; `run` then makes the calls
    back to back, each on the member the last one gave back (one warm sandbox instead of
    the loop's work and the guests' taking turns in the CPU's caches: ~15% of a
    fresh-state call on the development machine)."""

    __slots__ = ("loop", "jobs")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.jobs: list[_Inline] = []

    def add(self, job: _Inline) -> None:
        if not self.jobs:
            self.loop.call_soon(self.run)
        self.jobs.append(job)

    def run(self) -> None:
        jobs, self.jobs = self.jobs, []
        for job in jobs:
            job.pool._run_inline(job)


class _Job:
    """`fn(member)` for a pool thread (member None: make one with the factory first).
    Its outcome is settled on `loop`."""

    __slots__ = ("pool", "fn", "member", "future", "loop", "gated")

    def __init__(
        self,
        pool: SandboxPool[Any],
        fn: Callable[[Any], Any] | None,
        member: Member | None,
        future: asyncio.Future[Any],
        loop: asyncio.AbstractEventLoop,
        gated: bool,
    ) -> None:
        self.pool, self.fn, self.member, self.future, self.loop = pool, fn, member, future, loop
        self.gated = gated  # entered the pool's gate: leave it when settled

    def run(self) -> None:
        """On a pool thread."""
        pool = self.pool
        member = self.member
        result: Any = None
        error: BaseException | None = None
        try:
            member = pool._renew(member)
            self.member = member
            if self.fn is not None:
                try:
                    result = self.fn(member)
                finally:
                    pool._refresh(member)
        except BaseException as exc:  # handed to the awaiting task
            error = exc
        try:
            self.loop.call_soon_threadsafe(self._settle, result, error)
        except RuntimeError:  # the loop is closed: nobody waits any more
            if self.member is not None:
                self.member.close()

    def _settle(self, result: Any, error: BaseException | None) -> None:
        """On the event loop's thread: the member goes back first, then the caller
        (or nobody, if the caller was cancelled) gets the result."""
        pool, future = self.pool, self.future
        pool._running -= 1
        if self.gated and pool._gate is not None:
            pool._gate.leave(pool)
        if self.fn is not None or error is not None:  # a call (or a failed creation)
            pool._release(self.member)
        if future.cancelled():
            if self.fn is None and error is None:  # a member made for a cancelled caller
                pool._release(self.member)
        elif error is not None:
            future.set_exception(error)
        else:
            future.set_result(result if self.fn is not None else self.member)


def _worker(jobs: queue.SimpleQueue[_Job | None]) -> None:
    block_signals_in_this_thread()
    while (job := jobs.get()) is not None:
        job.run()
        del job  # do not keep the last job's arguments and result alive while idle


class SandboxPool(Generic[M]):
    """`size` members of one guest (or one snapshot, or made by `factory`), created up
    front (`create=False`: by `fill()`) and reused; at most `max_size` (default `size`).

    Every call runs in fresh state: members are `Sandbox(reset="per_call")` (each
    restores its starting state before a call if it ran one before), and one that
    trapped or timed out is restored before reuse, or replaced if that fails. Safe to use
    from many threads (`call`, `use`: a call waits for an idle member) and from asyncio
    (`acall`, `run`: on the pool's threads, the event loop keeps going; async callers
    wait in a queue of at most `max_queue`). `close()` releases everything; kernel
    teardown happens off the caller's path. `tier`: passed on to a guest kind that
    has tiers (`SandboxPool("python", tier="aot")`: docs/python.md).
    """

    @overload
    def __init__(
        self: SandboxPool[Sandbox],
        guest: str | os.PathLike[str] | None = None,
        *,
        size: int = 4,
        config: SandboxConfig | None = None,
        host_functions: Mapping[str, HostFunction] | None = None,
        snapshot: Snapshot | str | os.PathLike[str] | None = None,
        max_size: int | None = None,
        max_queue: int | None = None,
        create: bool = True,
        tier: str | None = None,
    ) -> None: ...

    @overload
    def __init__(
        self,
        *,
        factory: Callable[[], M],
        size: int = 4,
        max_size: int | None = None,
        max_queue: int | None = None,
        create: bool = True,
        label: str = "",
        gate: Gate | None = None,
    ) -> None: ...

    def __init__(
        self,
        guest: str | os.PathLike[str] | None = None,
        *,
        size: int = 4,
        config: SandboxConfig | None = None,
        host_functions: Mapping[str, HostFunction] | None = None,
        snapshot: Snapshot | str | os.PathLike[str] | None = None,
        factory: Callable[[], Any] | None = None,
        max_size: int | None = None,
        max_queue: int | None = None,
        create: bool = True,
        label: str = "",
        gate: Gate | None = None,
        tier: str | None = None,
    ) -> None:
        if tier is not None and not (isinstance(guest, str) and kinds.is_kind(guest)):
            raise ArgumentError('tier= is for a guest kind that has tiers ("python")')
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ArgumentError(f"pool size must be a non-negative int, not {size!r}")
        if max_size is None:
            max_size = size
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
            raise ArgumentError(f"max_size must be a positive int, not {max_size!r}")
        if size > max_size or (size == 0 and factory is None):
            raise ArgumentError(f"pool size must be 1 to max_size ({max_size}), not {size}")
        if max_queue is not None and (not isinstance(max_queue, int) or max_queue < 0):
            raise ArgumentError(f"max_queue must be a non-negative int, not {max_queue!r}")
        if factory is None:
            if isinstance(snapshot, (str, os.PathLike)):
                snapshot = Snapshot.load(snapshot)
            if snapshot is not None:
                factory = functools.partial(
                    Sandbox.from_snapshot,
                    snapshot,
                    host_functions=host_functions,
                    reset="per_call",
                )
            else:
                factory = functools.partial(
                    Sandbox, guest, config=config, host_functions=host_functions, reset="per_call"
                )
                if tier is not None:  # a guest kind: Sandbox("python", tier=...)
                    assert isinstance(guest, str)
                    factory = functools.partial(
                        kinds.factory(guest),
                        config=config,
                        host_functions=host_functions,
                        reset="per_call",
                        tier=tier,
                    )
        self.size = size
        self.max_size = max_size
        self.max_queue = max_queue
        self._factory: Callable[[], M] = factory  # type: ignore[assignment]
        self._label = label or "sandbox-pool"
        ensure_fd_limit(FDS_PER_SANDBOX * max_size)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._idle: list[tuple[M, float]] = []  # (member, when released): LIFO
        self._busy: set[M] = set()
        self._creating = 0
        self._sync_waiting = 0
        self._waiters: deque[asyncio.Future[M]] = deque()
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._running = 0  # async jobs submitted and not yet settled (event loop only)
        self._gate = gate
        self._gate_waiting = 0  # callers waiting at the gate (event loop only)
        self._batch: _InlineBatch | None = None
        self._inline_pending = 0  # calls waiting in the inline batch (event loop only)
        self._long_left = 0  # calls still taken as long (see acall_outcome)
        self._penalty = 0  # what the next long call sets _long_left to (doubling)
        self._probing = False  # a short call runs while _penalty > 0: the others wait
        self._closed = False
        if create:
            try:
                for _ in range(size):
                    self._idle.append((self._factory(), time.monotonic()))
            except BaseException:
                self.close()
                raise

    def __enter__(self) -> SandboxPool[M]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sizes ------------------------------------------------------------------------

    @property
    def idle(self) -> int:
        """How many members are idle now."""
        return len(self._idle)

    @property
    def busy(self) -> int:
        """How many members are running a call now."""
        return len(self._busy)

    @property
    def queued(self) -> int:
        """How many callers wait for a member (or, with a gate, for a thread)."""
        return len(self._waiters) + self._sync_waiting + self._gate_waiting

    @property
    def members(self) -> int:
        """How many members exist (idle, busy or being made)."""
        return len(self._idle) + len(self._busy) + self._creating

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def threads(self) -> int:
        """How many pool threads run asyncio calls (one per call running at once)."""
        return len(self._threads)

    # -- fresh state: restore or replace, once ----------------------------------------

    def _renew(self, member: M | None) -> M:
        """A member ready for a call: `member` itself, restored if it is poisoned, or a
        new one if there is none or it cannot be restored (that one is closed; its
        kernel teardown runs off this path). A replacement takes the old one's place
        among the busy. Raises what the factory raises (the old member is then lost), or
        SandboxClosed for a member closed with the pool (not replaced then)."""
        if member is not None and member.poisoned:
            self._refresh(member)
        if member is not None and not member.closed:
            return member
        if member is not None and self._closed:  # closed by close(cancel=True)
            raise SandboxClosed("the pool is closed")
        new = self._factory()
        if member is not None:
            with self._lock:
                if member in self._busy:
                    self._busy.discard(member)
                    self._busy.add(new)
        return new

    @staticmethod
    def _refresh(member: M) -> None:
        """Returns a member to its fresh state right after a call, before it is idle
        again: the caller's data does not linger in it, and the guest memory the call
        used beyond a small working set goes back to the host (Machine.load), so an idle
        pool stays near its baseline. The next call then finds nothing to restore (a
        member that trapped is restored here too)."""
        if not member.closed:
            try:
                member.restore()
            except SandboxError:
                member.close()

    # -- threads: call, use -----------------------------------------------------------

    def _acquire(self) -> M | None:
        """An idle member, or None when the caller should make one (counted)."""
        with self._cond:
            while True:
                if self._closed:
                    raise SandboxClosed("the pool is closed")
                if self._idle:
                    member = self._idle.pop()[0]
                    self._busy.add(member)
                    return member
                if self.members < self.max_size:
                    self._creating += 1
                    return None
                self._sync_waiting += 1
                try:
                    self._cond.wait()
                finally:
                    self._sync_waiting -= 1

    def use(self, fn: Callable[[M], T]) -> T:
        """Runs `fn(member)` with a fresh-state member, on this thread."""
        member = self._checkout()
        try:
            return fn(member)
        finally:
            self._refresh(member)
            self._release(member)

    def call(self, name: str, *args: object, timeout: float | None = None) -> Value:
        """Runs `name(*args)` in a fresh-state sandbox; raises what `Sandbox.call`
        raises (a trap or timeout leaves the pool usable)."""
        # `use` without its frames, and an idle healthy member taken at once: the hot path.
        member: M | None = None
        with self._cond:
            if self._idle and not self._closed:
                member = self._idle.pop()[0]
                self._busy.add(member)
        if member is None or member.poisoned or member.closed:
            if member is not None:
                self._release(member)
            member = self._checkout()
        try:
            result: Value = member.call(name, *args, timeout=timeout)
            return result
        finally:
            self._refresh(member)
            self._release(member)

    def _checkout(self) -> M:
        """A fresh-state member for a call on this thread (made if none is idle)."""
        member = self._acquire()
        if member is None:
            try:
                member = self._factory()
            finally:
                with self._lock:
                    self._creating -= 1
            with self._lock:
                self._busy.add(member)
        try:
            return self._renew(member)
        except BaseException:
            self._release(None)
            raise

    # -- asyncio: run, acall ----------------------------------------------------------

    def _submit(
        self, fn: Callable[[M], Any] | None, member: M | None, gated: bool = False
    ) -> asyncio.Future[Any]:
        """Runs the job on a pool thread, started as needed: as many as jobs run at once,
        so that a job never waits for a thread. `gated`: it entered the gate."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._running += 1
        if len(self._threads) < self._running:
            thread = threading.Thread(
                target=_worker,
                args=(self._jobs,),
                name=f"{self._label}_{len(self._threads)}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        self._jobs.put(_Job(self, fn, member, future, loop, gated))
        return future

    async def run(self, fn: Callable[[M], T], *, wait: float | None = None) -> T:
        """Runs `fn(member)` with a fresh-state member on a pool thread. Waits at most
        `wait` seconds for a member (PoolTimeout); PoolFull if `max_queue` callers wait
        already; SandboxClosed once closed. A caller cancelled while `fn` runs does not
        stop it: the member comes back to the pool when it ends. With a gate, the call
        first waits for the gate (within the same `wait`; it counts in `max_queue`)."""
        return await self._run(fn, wait, gated=True)

    async def _run(self, fn: Callable[[M], T], wait: float | None, *, gated: bool) -> T:
        gate = self._gate if gated else None
        if gate is not None:
            start = time.monotonic()
            await self._enter_gate(gate, wait)
            if wait is not None:
                wait = max(0.0, wait - (time.monotonic() - start))
        try:
            with self._lock:
                member = self._idle.pop()[0] if self._idle and not self._closed else None
                if member is not None:
                    self._busy.add(member)
            if member is None:
                member = await self._acquire_async(wait)
        except BaseException:
            if gate is not None:
                gate.leave(self)
            raise
        result: T = await self._submit(fn, member, gate is not None)
        return result

    async def _enter_gate(self, gate: Gate, wait: float | None) -> None:
        """Waits for the gate, counted among the queued (PoolFull beyond max_queue,
        PoolTimeout after `wait`)."""
        if self._closed:
            raise SandboxClosed("the pool is closed")
        if self.max_queue is not None and self._gate_waiting + len(self._waiters) >= (
            self.max_queue
        ):
            raise PoolFull(f"{self.max_queue} requests wait for this pool's share of workers")
        self._gate_waiting += 1
        try:
            if wait is None:
                await gate.enter(self)
            else:
                async with asyncio.timeout(wait):
                    await gate.enter(self)
        except TimeoutError:
            raise PoolTimeout(f"no worker became free within {wait} s") from None
        finally:
            self._gate_waiting -= 1

    async def acall(self, name: str, *args: object, timeout: float | None = None) -> Value:
        """`call` for asyncio: runs on the pool's threads, the event loop keeps going."""
        result: Value = await self.run(lambda m: m.call(name, *args, timeout=timeout))
        return result

    async def acall_outcome(
        self,
        name: str,
        *args: object,
        timeout: float | None = None,
        wait: float | None = None,
        budget: float | None = None,
        inline: bool = False,
    ) -> CallOutcome:
        """`acall` that returns the value or the guest's error with the call's output
        (see `outcome`); raises only what `run` raises about the pool itself.

        `budget` (seconds) sorts the pool's calls into short and long ones. A call that
        takes longer (CPU time on a pool thread; wall time inline) makes the next 16,
        32, ... 4096 calls long (doubling with each such call; then one call at a time
        checks that they are short again). Long calls pass the pool's gate (the host's
        fair shares); short ones do not, and with `inline` they run on the calling
        thread, the event loop's, instead of being handed to a pool thread and back
        (two thread switches): calls queued in the same loop iteration run back to
        back (`_InlineBatch`). An inline call that reaches the budget is stopped and
        made again inline (the loop's thread may have been preempted: the budget is
        wall time); if that reaches it too, it is made from fresh state on a pool thread
        with its full `timeout`. So the event loop is blocked at most 2 x `budget` by a
        call, and rarely by a pool whose calls are long. Inline calls are only for
        members whose calls have no effect outside the sandbox (the function host's:
        fresh state, no files, no network): an attempt cut short is made again. Without
        `budget`, every call is long."""
        fn: Callable[[M], CallOutcome] = functools.partial(
            outcome, name=name, args=args, timeout=timeout
        )
        if budget is None:
            return await self._run(fn, wait, gated=True)
        if timeout is not None and timeout <= budget:  # short by its own limit
            return await self._run(fn, wait, gated=False)
        gate = self._gate
        if self._long_left or (self._penalty and self._probing):
            if self._long_left:
                self._long_left -= 1
            timed = functools.partial(self._timed, fn, budget, False)
            return await self._run(timed, wait, gated=True)
        if gate is not None:
            gate.touch(self)
        if not inline or not self._idle or self._closed:
            probe = self._penalty > 0
            self._probing = self._probing or probe
            timed = functools.partial(self._timed, fn, budget, probe)
            return await self._run(timed, wait, gated=False)
        loop = asyncio.get_running_loop()
        batch = self._batch
        if batch is None or batch.loop is not loop:
            batch = self._batch = _InlineBatch(loop)
        job = _Inline(self, name, args, budget, loop.create_future())
        self._inline_pending += 1
        batch.add(job)
        verdict = await job.future
        if verdict is _QUEUE:
            return await self._run(fn, wait, gated=True)
        result: CallOutcome = verdict
        return result

    def _run_inline(self, job: _Inline) -> None:
        """Makes one call of the inline batch (on the event loop's thread) and settles
        its future: the outcome, or _QUEUE when the caller should go to a pool thread
        (no idle member now, calls became long meanwhile, or the budget ran out)."""
        self._inline_pending -= 1
        future = job.future
        if future.cancelled():
            return
        with self._lock:
            member = None
            if self._idle and not self._closed and not self._long_left:
                member = self._idle.pop()[0]
                self._busy.add(member)
        if member is None:
            future.set_result(_QUEUE)
            return
        try:
            result = outcome(member, job.name, job.args, job.budget)
            self._refresh(member)
            if isinstance(result.error, CallTimeout):
                # Once more: the loop's thread may have been preempted (the budget is
                # wall time), e.g. by a thread spinning in another function's call.
                result = outcome(member, job.name, job.args, job.budget)
                self._refresh(member)
        except BaseException as exc:  # not the guest's error (outcome keeps those)
            self._refresh(member)
            self._release(member)
            future.set_exception(exc)
            return
        self._release(member)
        if isinstance(result.error, CallTimeout):
            # The budget ran out twice, not the call's time limit: on a pool thread.
            self._overrun()
            future.set_result(_QUEUE)
            return
        if self._penalty:
            self._penalty -= 1
        future.set_result(result)

    def _overrun(self) -> None:
        """A call took longer than the budget: the next calls are long (ints stored
        from any thread: a lost update only shifts the count)."""
        if not self._long_left:
            self._penalty = min(max(16, self._penalty * 2), 4096)
        self._long_left = max(self._long_left, self._penalty)

    def _timed(
        self, fn: Callable[[M], CallOutcome], budget: float, probe: bool, member: M
    ) -> CallOutcome:
        """`fn(member)` on a pool thread, timed in CPU time (not wall time, which
        threads sharing a CPU stretch): one over the budget makes the next calls long;
        a short probe counts towards short calls again."""
        start = time.thread_time()
        try:
            result = fn(member)
        finally:
            if probe:
                self._probing = False
        if time.thread_time() - start > budget:
            self._overrun()
        elif probe and self._penalty:
            self._penalty -= 1
        return result

    async def _acquire_async(self, wait: float | None) -> M:
        with self._lock:
            if self._closed:
                raise SandboxClosed("the pool is closed")
            if self._idle:
                member = self._idle.pop()[0]
                self._busy.add(member)
                return member
            create = self.members < self.max_size
            if create:
                self._creating += 1
            elif self.max_queue is not None and len(self._waiters) >= self.max_queue:
                raise PoolFull(
                    f"all {self.max_size} sandboxes are busy and {self.max_queue} requests wait"
                )
            else:
                fut: asyncio.Future[M] = asyncio.get_running_loop().create_future()
                self._waiters.append(fut)
        if create:
            return await self._create()
        try:
            if wait is None:
                return await fut
            async with asyncio.timeout(wait):
                return await fut
        except BaseException as exc:
            with self._lock, contextlib.suppress(ValueError):
                self._waiters.remove(fut)
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._release(fut.result())  # handed over just as we gave up
            if isinstance(exc, TimeoutError):
                raise PoolTimeout(f"no sandbox became free within {wait} s") from None
            raise

    async def _create(self) -> M:
        """A new member made on a pool thread (`_creating` counted by the caller). If
        the caller is cancelled, the member goes to the pool when it is made."""
        future = self._submit(None, None)
        try:
            member: M = await future
        finally:
            with self._lock:
                self._creating -= 1
        with self._lock:
            self._busy.add(member)
        return member

    async def fill(self) -> None:
        """Makes members (on pool threads) until `size` exist. Raises what the factory
        raises."""
        while not self._closed and self.members < self.size:
            with self._lock:
                self._creating += 1
            member = await self._create()
            self._release(member)

    # -- giving back ------------------------------------------------------------------

    def adopt(self, member: M) -> None:
        """Takes `member` (made like the factory's, e.g. to validate a module) as idle
        (or hands it to a waiter)."""
        self._release(member)

    def _release(self, member: M | None) -> None:
        """A member back from a call (None or closed: it was lost). Hands it to the
        first asyncio waiter, else keeps it idle (and wakes a waiting thread). Any
        thread."""
        hand: asyncio.Future[M] | None = None
        replace: asyncio.Future[M] | None = None
        with self._cond:
            if member is None or member.closed:
                self._busy.discard(member)
                if not self._closed:
                    replace = next((f for f in self._waiters if not f.done()), None)
                self._cond.notify()
            elif self._closed:
                self._busy.discard(member)
                _reaper.defer(member.close)
            else:
                while self._waiters:
                    fut = self._waiters.popleft()
                    if not fut.done():
                        hand = fut  # stays busy: it goes straight to the waiter
                        break
                else:
                    self._busy.discard(member)
                    self._idle.append((member, time.monotonic()))
                    if self._sync_waiting:
                        self._cond.notify()
                    return
        if hand is not None and member is not None:
            loop = hand.get_loop()
            if _running_loop() is loop:
                self._hand(hand, member)
            else:
                loop.call_soon_threadsafe(self._hand, hand, member)
        elif replace is not None:
            # A member was lost while asyncio callers wait: make another for them.
            replace.get_loop().call_soon_threadsafe(self._replace_lost)

    def _hand(self, fut: asyncio.Future[M], member: M) -> None:
        """On the waiter's loop: gives it `member` (or back to the pool if it left)."""
        if fut.done():
            with self._lock:
                self._busy.discard(member)
            self._release(member)
        else:
            fut.set_result(member)

    def _replace_lost(self) -> None:
        with self._lock:
            if self._closed or not self._waiters or self.members >= self.max_size:
                return
            self._creating += 1
        task = asyncio.get_running_loop().create_task(self._create())
        task.add_done_callback(self._replaced)

    def _replaced(self, task: asyncio.Task[M]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            self._release(task.result())
            return
        with self._lock:
            waiter = self._waiters.popleft() if self._waiters else None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def shrink(self, idle_for: float) -> int:
        """Closes idle members above `size` that have been idle for `idle_for` seconds
        or more; returns how many."""
        cutoff = time.monotonic() - idle_for
        closing = []
        with self._lock:
            while len(self._idle) > self.size and self._idle[0][1] <= cutoff:
                closing.append(self._idle.pop(0)[0])
        for member in closing:
            member.close()
        return len(closing)

    # -- shutdown ---------------------------------------------------------------------

    async def drain(self, timeout: float) -> bool:
        """Waits until no call runs or waits, at most `timeout` s; True if so."""
        deadline = time.monotonic() + timeout
        while (
            self._busy
            or self._waiters
            or self._sync_waiting
            or self._inline_pending
            or self._gate_waiting
        ):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def close(self, *, cancel: bool = False) -> None:
        """Closes the pool: waiting callers get SandboxClosed, idle members are closed,
        busy ones when their call ends (with `cancel`, running calls are cancelled
        first: they end with CallCancelled, and busy members are closed at once, so
        that a call made on one later, by `use` or `run` code, gets SandboxClosed).
        Idempotent."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            waiters, self._waiters = list(self._waiters), deque()
            busy = list(self._busy)
            self._cond.notify_all()
            threads, self._threads = self._threads, []
        for fut in waiters:
            if not fut.done():
                fut.get_loop().call_soon_threadsafe(_fail_closed, fut)
        for member, _ in idle:
            member.close()
        if cancel and busy:
            for member in busy:
                member.cancel()
            # And closed (on a thread: close waits for the call to end, a host function
            # included): a call that had not begun when cancel() came (`use`, `run`:
            # the caller's code between checkout and its call) is refused, not run.
            closer = threading.Thread(
                target=_close_all, args=(busy,), name=f"{self._label}-close", daemon=True
            )
            try:
                closer.start()
            except RuntimeError:  # interpreter shutdown: no new threads; wait here
                for member in busy:
                    member.close()
        for _ in threads:  # each thread ends after the jobs queued before this
            self._jobs.put(None)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _close_all(members: list[Any]) -> None:
    block_signals_in_this_thread()
    for member in members:
        member.close()


def _fail_closed(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(SandboxClosed("the pool is closed"))
