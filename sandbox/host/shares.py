"""`WorkerShares`: fair shares of the host's worker threads among its functions.

Every function's long calls pass this gate (`sandbox.pool.Gate`): those of a function
whose calls lately took longer than `long_call_ms` (spinning, flooding output, long
computations; see SandboxPool.acall_outcome's `budget`). Short calls do not wait here:
they end soon anyway, in arrival order. At most `workers` such calls run at
once in the whole host (plus one for each active function that runs none: a function
is never kept waiting only because others hold every worker), and while `n` functions
are active (a call running or waiting here, or an inline call within the last
`LINGER_S`), each may run at most `max(1, workers // n)` of them. A function whose calls
spin until their time limit thus holds its share of the workers, not all of them, and
its neighbours keep the CPU time that their own calls (or, inline, the event loop's
thread) need: the kernel divides the CPU among runnable threads, so fewer spinning
threads means more CPU for the rest. Waiting calls are admitted in arrival order,
skipping those whose function is at its share. Event loop thread only.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque

from .config import HostConfig

LINGER_S = 0.5  # a function that ran a call this recently still counts as active
_RECOUNT_S = 0.05  # how often the functions that are active only by recent calls are counted


def inline_calls(config: HostConfig) -> bool:
    """Whether short guest calls run on the event loop's thread
    (SandboxPool.acall_outcome). With one CPU a pool thread cannot run beside the event
    loop, so handing a call to it only adds two thread switches (which cost most when
    other processes compete for the CPU); with more, pool threads run calls in parallel
    and the event loop stays free for HTTP."""
    mode = config.inline_calls
    if mode == "auto":
        return len(os.sched_getaffinity(0)) == 1
    return mode == "on"


class WorkerShares:
    @classmethod
    def for_config(cls, config: HostConfig) -> WorkerShares:
        """`workers` from the config; unset: the CPUs this process may use, at least 2."""
        return cls(config.workers or max(2, len(os.sched_getaffinity(0))))

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        self.workers = workers
        self.total = 0  # calls on threads now, host-wide
        self._running: dict[object, int] = {}  # per pool
        self._waiting: deque[tuple[object, asyncio.Future[None]]] = deque()
        self._waiting_for: dict[object, int] = {}  # per pool
        self._seen: dict[object, float] = {}  # last call (inline or threaded) ended
        self._recent = 0  # pools active only by a recent call, counted at _counted_at
        self._counted_at = 0.0

    # -- the Gate protocol ---------------------------------------------------------------

    async def enter(self, pool: object) -> None:
        """Waits until `pool` may run one more call on a thread (see the module
        docstring). A caller cancelled while waiting takes nothing."""
        if not self._waiting and self._fits(pool, self.share()):
            self._take(pool)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((pool, future))
        self._waiting_for[pool] = self._waiting_for.get(pool, 0) + 1
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                self.leave(pool)  # admitted just as the caller left
            else:
                self._forget(pool, future)
            raise

    def leave(self, pool: object) -> None:
        """A call of `pool` that entered has ended on its thread."""
        left = self._running.get(pool, 0) - 1
        if left > 0:
            self._running[pool] = left
        else:
            self._running.pop(pool, None)
        self.total -= 1
        self._seen[pool] = time.monotonic()
        self._admit()

    def touch(self, pool: object) -> None:
        """`pool` runs a call inline (on the event loop's thread): it is active."""
        self._seen[pool] = time.monotonic()

    # -- shares --------------------------------------------------------------------------

    def running(self, pool: object) -> int:
        """How many calls of `pool` run on threads now."""
        return self._running.get(pool, 0)

    def active(self) -> int:
        """How many functions are active now (see the module docstring)."""
        now = time.monotonic()
        if now - self._counted_at > _RECOUNT_S:
            cutoff = now - LINGER_S
            for pool in [p for p, t in self._seen.items() if t < cutoff]:
                del self._seen[pool]
            self._recent = sum(
                1 for p in self._seen if p not in self._running and p not in self._waiting_for
            )
            self._counted_at = now
        busy = len(self._running) + sum(1 for p in self._waiting_for if p not in self._running)
        return busy + self._recent

    def share(self) -> int:
        """The most calls on threads one function may run now."""
        return max(1, self.workers // max(1, self.active()))

    def _fits(self, pool: object, share: int) -> bool:
        """Below its share, and below `workers` in all unless it runs nothing: a
        function that became active while others hold every worker (their calls may
        run until their time limits) gets its first one at once."""
        running = self._running.get(pool, 0)
        return running < share and (self.total < self.workers or running == 0)

    def _take(self, pool: object) -> None:
        self._running[pool] = self._running.get(pool, 0) + 1
        self.total += 1

    def _forget(self, pool: object, future: asyncio.Future[None]) -> None:
        try:
            self._waiting.remove((pool, future))
        except ValueError:
            return
        self._count_waiting(pool, -1)

    def _count_waiting(self, pool: object, delta: int) -> None:
        left = self._waiting_for.get(pool, 0) + delta
        if left > 0:
            self._waiting_for[pool] = left
        else:
            self._waiting_for.pop(pool, None)

    def _admit(self) -> None:
        """Admits waiting calls in arrival order, skipping functions at their share."""
        if not self._waiting:
            return
        share = self.share()
        kept: deque[tuple[object, asyncio.Future[None]]] = deque()
        while self._waiting:
            pool, future = self._waiting.popleft()
            if future.done():  # cancelled: its caller forgets it
                self._count_waiting(pool, -1)
                continue
            if self._fits(pool, share):
                self._count_waiting(pool, -1)
                self._take(pool)
                future.set_result(None)
            else:
                kept.append((pool, future))
        self._waiting = kept
