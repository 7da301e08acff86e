"""Teardown off the caller's path: closing a VM costs ~0.3-0.5 ms of kernel time, so
`Sandbox.close()` hands its resources to one background thread that releases them. The
same thread makes spare machines (machines.py), so that `drain()` waits for both."""

from __future__ import annotations

import os
import queue
import sys
import threading
from collections.abc import Callable

from ._native import block_signals_in_this_thread

_queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
_thread: threading.Thread | None = None
_lock = threading.Lock()


def _worker() -> None:
    block_signals_in_this_thread()
    while True:
        job = _queue.get()
        try:
            if job is not None:
                job()
        except Exception:  # pragma: no cover - closing fds does not raise in practice
            pass
        finally:
            del job  # keep nothing of the last sandbox while waiting for the next
            _queue.task_done()


def defer(job: Callable[[], None]) -> None:
    """Runs `job` on the reaper thread (started on first use), or at once while the
    interpreter shuts down."""
    global _thread
    if sys.is_finalizing():
        job()
        return
    if _thread is None:
        with _lock:
            if _thread is None:
                _thread = threading.Thread(target=_worker, name="sandbox-reaper", daemon=True)
                _thread.start()
    _queue.put(job)


def _forget_in_child() -> None:
    """A forked child has no reaper thread (only the forking thread survives a fork):
    its first deferred job starts its own, on a queue of its own."""
    global _queue, _thread, _lock
    _queue = queue.Queue()
    _thread = None
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)


def on_reaper_thread() -> bool:
    """Whether the caller runs on the reaper thread (where `drain` would wait forever)."""
    return _thread is not None and threading.current_thread() is _thread


def drain() -> None:
    """Waits until every deferred teardown has run (tests, shutdown)."""
    _queue.join()
