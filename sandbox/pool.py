"""`SandboxPool`: ready micro-VMs of one guest; every call runs in fresh state."""

from __future__ import annotations

import asyncio
import functools
import os
import resource
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

from . import _reaper
from .abi import Value
from .config import SandboxConfig
from .errors import ArgumentError, KvmError, SandboxClosed
from .sandbox import HostFunction, Sandbox
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


class SandboxPool:
    """`size` sandboxes of one guest (or of one snapshot), created up front and reused.

    Every call runs in fresh state: each sandbox restores its starting state before a
    call if it ran one before (reset="per_call"), so a sandbox that trapped or timed out
    is clean again before reuse, and one that cannot be restored is replaced. Safe to use
    from many threads (a call waits for an idle sandbox) and from asyncio (`acall` runs
    the call on the pool's threads without blocking the event loop). `close()` releases
    everything; kernel teardown happens off the caller's path.
    """

    def __init__(
        self,
        guest: str | os.PathLike[str] | None = None,
        *,
        size: int = 4,
        config: SandboxConfig | None = None,
        host_functions: Mapping[str, HostFunction] | None = None,
        snapshot: Snapshot | str | os.PathLike[str] | None = None,
    ) -> None:
        if not isinstance(size, int) or size < 1:
            raise ArgumentError(f"pool size must be a positive int, not {size!r}")
        if isinstance(snapshot, (str, os.PathLike)):
            snapshot = Snapshot.load(snapshot)
        self.size = size
        self._factory: Callable[[], Sandbox]
        if snapshot is not None:
            snap = snapshot
            self._factory = functools.partial(
                Sandbox.from_snapshot, snap, host_functions=host_functions, reset="per_call"
            )
        else:
            self._factory = functools.partial(
                Sandbox, guest, config=config, host_functions=host_functions, reset="per_call"
            )
        ensure_fd_limit(FDS_PER_SANDBOX * size)
        self._idle: list[Sandbox] = []
        self._cond = threading.Condition()
        self._closed = False
        self._executor: ThreadPoolExecutor | None = None
        try:
            for _ in range(size):
                self._idle.append(self._factory())
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def idle(self) -> int:
        """How many sandboxes are idle now."""
        return len(self._idle)

    def _acquire(self) -> Sandbox:
        with self._cond:
            while not self._idle:
                if self._closed:
                    raise SandboxClosed("the pool is closed")
                self._cond.wait()
            if self._closed:
                raise SandboxClosed("the pool is closed")
            return self._idle.pop()

    def _release(self, sb: Sandbox) -> None:
        with self._cond:
            if self._closed:
                sb.close()
                return
            self._idle.append(sb)
            self._cond.notify()

    def call(self, name: str, *args: object, timeout: float | None = None) -> Value:
        """Runs `name(*args)` in a fresh-state sandbox; raises what `Sandbox.call`
        raises (a trap or timeout leaves the pool usable)."""
        sb = self._acquire()
        try:
            if sb.poisoned or sb.closed:
                sb = self._renew(sb)
            return sb.call(name, *args, timeout=timeout)
        finally:
            self._release(sb)

    def _renew(self, sb: Sandbox) -> Sandbox:
        """Restores a poisoned sandbox, or replaces it if that fails."""
        try:
            sb.restore()
            return sb
        except (KvmError, SandboxClosed):
            _reaper.defer(sb.close)
            return self._factory()

    async def acall(self, name: str, *args: object, timeout: float | None = None) -> Value:
        """`call` for asyncio: runs on the pool's threads, the event loop keeps going."""
        if self._executor is None:
            with self._cond:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(
                        max_workers=self.size, thread_name_prefix="sandbox-pool"
                    )
        loop = asyncio.get_running_loop()
        call = functools.partial(self.call, name, *args, timeout=timeout)
        return await loop.run_in_executor(self._executor, call)

    def close(self) -> None:
        """Closes every sandbox (busy ones when their call ends). Idempotent."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._cond.notify_all()
            executor, self._executor = self._executor, None
        for sb in idle:
            sb.close()
        if executor is not None:
            executor.shutdown(wait=False)
