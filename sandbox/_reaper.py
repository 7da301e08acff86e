"""Work off the caller's path, on two background threads.

Teardown: closing a VM costs ~0.3-0.5 ms of kernel time, so `Sandbox.close()` hands its
resources to a thread that releases them (`defer`). Spares: making a spare machine
(machines.py) takes a VM's creation and, for some guests, calls that warm it, so it has a
thread of its own (`defer_spare`): a spare waiting for a quiet moment must not hold up
the teardown that parks a closed sandbox's machine for the next one. `drain()` waits for
both."""

from __future__ import annotations

import os
import queue
import sys
import threading
from collections.abc import Callable

from ._native import block_signals_in_this_thread


class _Worker:
    """One daemon thread running the jobs of its queue in order (started on first use;
    a forked child starts its own: only the forking thread survives a fork)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._forget()

    def _forget(self) -> None:
        self.queue: queue.Queue[Callable[[], None]] = queue.Queue()
        self.thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _run(self) -> None:
        block_signals_in_this_thread()
        while True:
            job = self.queue.get()
            try:
                job()
            except Exception:  # pragma: no cover - a job's failure only loses that job
                pass
            finally:
                del job  # keep nothing of the last sandbox while waiting for the next
                self.queue.task_done()

    def put(self, job: Callable[[], None]) -> None:
        if self.thread is None:
            with self._lock:
                if self.thread is None:
                    self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                    self.thread.start()
        self.queue.put(job)


_teardown = _Worker("sandbox-reaper")
_spares = _Worker("sandbox-spares")


def defer(job: Callable[[], None]) -> None:
    """Runs `job` on the teardown thread, or at once while the interpreter shuts down."""
    if sys.is_finalizing():
        job()
        return
    _teardown.put(job)


def defer_spare(job: Callable[[], None]) -> None:
    """Runs `job` on the spares thread; nothing while the interpreter shuts down."""
    if not sys.is_finalizing():
        _spares.put(job)


def _forget_in_child() -> None:
    _teardown._forget()
    _spares._forget()


os.register_at_fork(after_in_child=_forget_in_child)


def on_reaper_thread() -> bool:
    """Whether the caller runs on one of these threads (where `drain` would wait
    forever)."""
    current = threading.current_thread()
    return current is _teardown.thread or current is _spares.thread


def drain() -> None:
    """Waits until every deferred teardown and spare has run (tests, shutdown): a spare
    parks its machine through the teardown thread, so that one is waited for again."""
    _teardown.queue.join()
    _spares.queue.join()
    _teardown.queue.join()
