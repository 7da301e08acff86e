"""The lifecycle under concurrency, attacker-minded: close() and cancel() racing calls,
restores and each other from other threads, for the three guest kinds and the pool;
deadline timers and cancel kicks of one thread's call never reaching another's; members
that time out over and over; a forked child holding its parent's sandboxes; Ctrl-C
arriving while a worker thread's call runs.

Nothing may hang: every call runs on a thread joined with a time limit (LIMIT), and a
call that must not run has a generous time limit of its own (SAFETY) so that a
regression fails the test instead of wedging the run.

Found here (each test named so failed before its fix):
- close() waited for a call that took the lock after it (a caller queued behind the
  call close() cancelled): with reset="per_call" that call restored the poisoned
  sandbox and ran, so close() hung for as long as it ran; now such a call (and a
  restore) gets SandboxClosed.
- close() of a Wasm or Python sandbox from another thread waited for a WASI sleep in the
  running call to end (the engine's cancel kicks only the vCPU).
- pool.close(cancel=True) cancelled only calls already running: a `use`/`run` callback
  that called its member after that ran its call in full.
- a forked child's call on its parent's sandbox raised KvmError("KVM_RUN failed: EIO").
- a Wasm or Python sandbox dropped without close() kept its VM until the cyclic garbage
  collector ran (reference cycles through its engine's host functions, its windows'
  callback, its WASI wrappers).
- WasmSandbox.invoke (and load, instantiate, register, get) ran without the lock of
  call and restore: an invoke from another thread came between a per_call call's
  restore and its run.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import pytest
from support import ROOT, drain, fd_count, run_python, spin_reference
from support import WASI_SLEEPER as SLEEPER

from sandbox import (
    CallCancelled,
    CallTimeout,
    Sandbox,
    SandboxClosed,
    SandboxPoisoned,
    SandboxPool,
    _reaper,
    machines,
)

pytestmark = pytest.mark.requires_kvm

LIMIT = 3.0  # seconds a close, cancel or refused call may take before it counts as a hang
SAFETY = 20.0  # the time limit of calls that must not run to it


def maps_count() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


class Run:
    """fn() on a daemon thread; its result or exception."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._target, args=(fn,), daemon=True)
        self.thread.start()

    def _target(self, fn: Callable[[], Any]) -> None:
        try:
            self.result = fn()
        except BaseException as exc:  # noqa: BLE001 - checked by the test
            self.error = exc

    def join(self, limit: float = LIMIT) -> bool:
        """Whether it ended within `limit` seconds."""
        self.thread.join(limit)
        return not self.thread.is_alive()


# -- the three kinds: a call that waits in the host, a call that never ends --------------

WASM_KIND = """
(module
  (import "host" "block" (func $block))
  (func (export "wait") (call $block))
  (func (export "forever") (loop $l (br $l))))
"""


def python_wait() -> int:
    from sandbox_guest import host  # type: ignore[import-not-found]

    host.block()
    return 1


def python_forever() -> None:
    while True:
        pass


class Kind:
    """A sandbox of one kind whose `wait` call blocks in a host function until
    `release` is set, and whose `forever` call never returns."""

    def __init__(self, kind: str, reset: str) -> None:
        self.release = threading.Event()

        def block(*_: object) -> None:
            self.release.wait(SAFETY)

        self.sb: Any
        if kind == "native":
            self.sb = Sandbox(host_functions={"block": block}, reset=reset)  # type: ignore[arg-type]
            self.wait: Callable[[], Any] = lambda: self.sb.call("call_host", "block", "")
            self.forever: Callable[[], Any] = lambda: self.sb.call(
                "fault", "spin_forever", timeout=SAFETY
            )
        elif kind == "wasm":
            wasmtime = pytest.importorskip("wasmtime")
            module = bytes(wasmtime.wat2wasm(WASM_KIND))
            self.sb = Sandbox.from_wasm(module, imports={"host": {"block": block}}, reset=reset)  # type: ignore[arg-type]
            self.wait = lambda: self.sb.call("wait")
            self.forever = lambda: self.sb.call("forever", timeout=SAFETY)
        else:
            self.sb = Sandbox("python", host_functions={"block": block}, reset=reset)
            self.wait = lambda: self.sb.call(python_wait)
            self.forever = lambda: self.sb.call(python_forever, timeout=SAFETY)

    def abandon(self) -> None:
        """Ends whatever still runs (after a failed assertion)."""
        self.release.set()
        self.sb.cancel()


KINDS = ["native", "wasm", "python"]


@pytest.mark.parametrize("reset", ["none", "per_call"])
@pytest.mark.parametrize("kind", KINDS)
def test_close_refuses_a_call_queued_behind_the_call_it_cancels(kind: str, reset: str) -> None:
    """A waits in a host function, B waits for the sandbox with a call that never ends,
    and close() comes from a third thread: A ends with CallCancelled when its host
    function returns, B gets SandboxClosed, close() returns. (Before: with
    reset="per_call", B restored the poisoned sandbox and ran, and close() waited for it;
    with "none", B got SandboxPoisoned.)"""
    k = Kind(kind, reset)
    try:
        if kind == "python":  # its first call compiles the function: not under test
            with pytest.raises(CallTimeout):
                k.sb.call(python_forever, timeout=0.2)
            k.sb.restore()
        a = Run(k.wait)
        time.sleep(0.1)
        b = Run(k.forever)
        time.sleep(0.1)
        closing = Run(k.sb.close)
        time.sleep(0.1)
        k.release.set()
        assert closing.join(), "close() waited for a call that began after it"
        assert a.join() and b.join()
        assert isinstance(a.error, CallCancelled), a.error
        assert isinstance(b.error, SandboxClosed), b.error
        assert k.sb.closed
        with pytest.raises(SandboxClosed):
            k.sb.restore()
    finally:
        k.abandon()
        k.sb.close()


@pytest.mark.parametrize("kind", ["wasm", "python"])
def test_close_ends_a_wasi_sleep_of_a_call_in_another_thread(kind: str) -> None:
    """A WASI sleep runs on the host, where the vCPU kick of close()'s cancel does not
    reach: close() interrupts it as cancel() does (before: close waited for the sleep,
    here 10 s)."""
    if kind == "wasm":
        wasmtime = pytest.importorskip("wasmtime")
        sb: Any = Sandbox.from_wasm(bytes(wasmtime.wat2wasm(SLEEPER)))
        call = Run(lambda: sb.call("nap", timeout=SAFETY))
        label = "nap"
    else:
        sb = Sandbox("python")

        def napper() -> int:
            import time

            time.sleep(10)
            return 1

        call = Run(lambda: sb.call(napper, timeout=SAFETY))
        label = "napper"
    try:
        time.sleep(0.5)  # in the sleep (the python kind compiles napper first)
        t0 = time.monotonic()
        closing = Run(sb.close)
        assert closing.join(), "close() waited for the WASI sleep"
        assert time.monotonic() - t0 < LIMIT
        assert call.join()
        assert isinstance(call.error, CallCancelled), call.error
        assert str(call.error) == f"{label} was cancelled"
        assert sb.closed
    finally:
        sb.cancel()
        sb.close()


def test_close_racing_calls_restores_and_closes_never_hangs() -> None:
    """Threads call and restore one sandbox in loops while two others close it at a
    random moment: every operation ends with its result or with CallCancelled,
    SandboxPoisoned or SandboxClosed; nothing hangs; nothing leaks."""
    drain()
    fds = fd_count()
    rng = random.Random(1)
    allowed = (CallCancelled, SandboxPoisoned, SandboxClosed)
    for _ in range(10):
        sb = Sandbox(reset=rng.choice(["none", "per_call"]))  # type: ignore[arg-type]
        stop = threading.Event()
        bad: list[object] = []

        def caller(sb: Sandbox = sb, stop: threading.Event = stop, bad: list[object] = bad) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    if n % 3 == 0:
                        sb.restore()
                    elif sb.call("spin", 20_000, timeout=SAFETY) != spin_reference(20_000):
                        bad.append("wrong result")
                except SandboxClosed:
                    return
                except allowed:
                    pass
                except BaseException as exc:  # noqa: BLE001 - reported by the test
                    bad.append(exc)
                    return

        callers = [Run(caller) for _ in range(3)]
        time.sleep(rng.uniform(0.0, 0.03))
        closers = [Run(sb.close) for _ in range(2)]
        assert all(c.join() for c in closers), "close() hung"
        stop.set()
        assert all(c.join() for c in callers), "a call or restore hung after close()"
        assert not bad, bad
        assert sb.closed
    drain()
    assert fd_count() == fds


def test_a_cancel_of_one_sandbox_never_stops_another_on_the_same_thread() -> None:
    """One thread alternates calls of sandbox A and B (B's without a time limit) while
    another cancels A without pause: a cancel's kick that comes late lands in B's call,
    which goes on (a stale kick); B never fails."""
    a, b = Sandbox(), Sandbox()
    stop = threading.Event()
    n = 100_000
    expected = spin_reference(n)

    def worker() -> list[object]:
        seen: list[object] = []
        for _ in range(150):
            try:
                a.call("spin", 5_000, timeout=SAFETY)
            except CallCancelled:
                a.restore()
            result = b.call("spin", n)
            if result != expected:
                seen.append(result)
        return seen

    def canceller() -> None:
        while not stop.is_set():
            a.cancel()

    try:
        kicks = Run(canceller)
        work = Run(worker)
        assert work.join(30), "the worker hung"
        stop.set()
        assert kicks.join()
        assert work.error is None, work.error
        assert work.result == []
        assert not b.poisoned
    finally:
        stop.set()
        a.close()
        b.close()


def test_deadline_timers_stay_on_their_own_thread() -> None:
    """Threads with their own sandboxes: half run calls that time out after 2 ms, over
    and over, the other half long calls without a time limit; no call of the second
    half is stopped (a thread's deadline timer signals only that thread), and each
    timed-out sandbox is usable after restore."""
    n = 300_000
    expected = spin_reference(n)

    def timed() -> int:
        with Sandbox() as sb:
            for _ in range(30):
                with pytest.raises(CallTimeout):
                    sb.call("fault", "spin_forever", timeout=0.002)
                sb.restore()
                assert sb.call("add", 1, 2) == 3
        return 0

    def untimed() -> int:
        with Sandbox() as sb:
            for _ in range(6):
                assert sb.call("spin", n) == expected
        return 0

    runs = [Run(timed if i % 2 else untimed) for i in range(6)]
    for r in runs:
        assert r.join(30)
        assert r.error is None and r.result == 0, r.error


def test_a_timeout_as_the_guest_returns_is_one_or_the_other(sb: Sandbox) -> None:
    """Calls whose time limit ends about when the guest returns: each either returns
    its exact result (the sandbox stays healthy, and the disarmed timer stops nothing
    later) or raises CallTimeout (poisoned; restore makes it usable). Nothing else."""
    n = 20_000
    t0 = time.perf_counter()
    for _ in range(5):
        sb.call("spin", n)
    took = (time.perf_counter() - t0) / 5
    expected = spin_reference(n)
    outcomes = set()
    for i in range(60):
        limit = took * (0.5 + (i % 12) / 8)
        try:
            assert sb.call("spin", n, timeout=limit) == expected
            outcomes.add("returned")
            assert not sb.poisoned
        except CallTimeout:
            outcomes.add("timed out")
            assert sb.poisoned
            sb.restore()
        assert sb.call("spin", 3 * n) == spin_reference(3 * n)  # no stray kick
    assert outcomes  # which ones depends on the machine's speed


# -- the pool --------------------------------------------------------------------------


def test_pool_close_with_cancel_refuses_a_call_not_yet_begun() -> None:
    """A `use` callback holds its member and calls it only after close(cancel=True):
    that call gets SandboxClosed (before: it ran, here until its time limit)."""
    pool: SandboxPool[Sandbox] = SandboxPool(size=1)
    go = threading.Event()
    held: list[Sandbox] = []

    def fn(member: Sandbox) -> object:
        held.append(member)
        go.wait(LIMIT)
        return member.call("fault", "spin_forever", timeout=SAFETY)

    user = Run(lambda: pool.use(fn))
    try:
        time.sleep(0.1)
        t0 = time.monotonic()
        pool.close(cancel=True)
        assert time.monotonic() - t0 < LIMIT
        go.set()
        assert user.join(), "a call begun after close(cancel=True) ran"
        assert isinstance(user.error, SandboxClosed), user.error
    finally:
        go.set()
        for member in held:
            member.cancel()
        user.join()


def test_pool_close_with_cancel_ends_calls_of_threads_and_tasks() -> None:
    """Calls that never end, from threads and from asyncio tasks, and more callers
    waiting: close(cancel=True) ends all of them at once (CallCancelled, or
    SandboxClosed for the waiting), and every VM is released."""
    drain()
    fds, maps = fd_count(), maps_count()

    async def main() -> None:
        pool: SandboxPool[Sandbox] = SandboxPool(size=4)
        threads = [
            Run(lambda: pool.call("fault", "spin_forever", timeout=SAFETY)) for _ in range(2)
        ]
        tasks = [
            asyncio.create_task(pool.acall("fault", "spin_forever", timeout=SAFETY))
            for _ in range(2)
        ]
        waiting = [asyncio.create_task(pool.acall("add", 1, 2)) for _ in range(2)]
        await asyncio.sleep(0.2)
        assert pool.busy == 4
        t0 = time.monotonic()
        await asyncio.to_thread(pool.close, cancel=True)
        results = await asyncio.wait_for(
            asyncio.gather(*tasks, *waiting, return_exceptions=True), LIMIT
        )
        for t in threads:
            assert await asyncio.to_thread(t.join)
        assert time.monotonic() - t0 < LIMIT
        assert [type(r) for r in results] == [CallCancelled] * 2 + [SandboxClosed] * 2
        assert [type(t.error) for t in threads] == [CallCancelled] * 2

    asyncio.run(main())
    drain()
    assert fd_count() == fds
    assert maps_count() <= maps + 8  # the pool's threads' stacks may stay cached


def test_pool_members_that_time_out_over_and_over_leak_nothing() -> None:
    """Four threads share a pool of two whose calls time out every other time: the pool
    keeps its size, every call after a timeout runs in fresh state, and rounds of it
    leave descriptors and mappings as they were."""
    with SandboxPool(size=2) as pool:

        def hammer() -> None:
            for _ in range(15):
                with pytest.raises(CallTimeout):
                    pool.call("fault", "spin_forever", timeout=0.003)
                assert pool.call("counter") == 1

        def round_() -> None:
            runs = [Run(hammer) for _ in range(4)]
            for r in runs:
                assert r.join(30)
                assert r.error is None, r.error
            assert pool.members == 2 and pool.idle == 2

        round_()  # warm up: threads' stacks, allocator arenas
        drain()
        fds, maps = fd_count(), maps_count()
        for _ in range(2):
            round_()
        drain()
        assert (fd_count(), maps_count()) == (fds, maps)


# -- process and signals -----------------------------------------------------------------


def test_a_forked_child_refuses_the_parents_sandbox() -> None:
    """KVM refuses a VM to any process but its creator: in a forked child, a call on the
    parent's sandbox raises SandboxClosed saying why (before: KvmError "KVM_RUN failed:
    Input/output error") and closes it there; a new sandbox works in the child; the
    child's copies of the parent's VMs, its idle ones included, are closed (before:
    the idle ones were forgotten, open); the child's cancel() and close() of a sandbox
    that was in a call on another thread at the fork do not hang on the lock that
    thread held nor raise (before: KvmError "tgkill failed: No such process"); the
    parent's sandbox is untouched."""
    code = textwrap.dedent(
        """
        import os, sys, threading, time, warnings
        from sandbox import Sandbox, SandboxClosed, _reaper, machines
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads
        def settled_fds():
            _reaper.drain()
            machines.release_idle()
            return len(os.listdir("/proc/self/fd"))
        Sandbox().close()
        base = settled_fds()
        sb = Sandbox()
        assert sb.call("add", 1, 2) == 3
        Sandbox().close()
        _reaper.drain()
        assert machines.idle_count() >= 1  # the child inherits an idle machine too
        busy = Sandbox()  # in a call on another thread at the fork
        spin = threading.Thread(target=lambda: busy.call("fault", "spin_forever", timeout=20))
        spin.start()
        time.sleep(0.2)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            lines = []
            try:
                sb.call("add", 1, 2)
                lines.append("call ran")
            except SandboxClosed as exc:
                lines.append("closed: " + str(exc))
            lines.append("closed" if sb.closed else "open")
            try:
                sb.snapshot()
            except SandboxClosed:
                lines.append("snapshot refused")
            busy.cancel()  # its call and its thread are the parent's
            busy.close()
            lines.append("busy: " + ("closed" if busy.closed else "open"))
            with Sandbox() as new:
                lines.append("new: %d" % new.call("add", 2, 3))
            lines.append("fds: %d" % (settled_fds() - base - 2))  # less the pipe
            os.write(w, "\\n".join(lines).encode())
            os._exit(0)
        os.close(w)
        _, status = os.waitpid(pid, 0)
        print(os.read(r, 4096).decode())
        print("parent:", sb.call("add", 3, 4), sb.poisoned)
        busy.cancel()
        spin.join()
        """
    )
    out = run_python(code, timeout=30)
    assert out is not None, "the forked child hung"
    lines = out.splitlines()
    assert lines[0].startswith("closed: the sandbox was made by the parent"), lines
    assert "forked" in lines[0]
    assert lines[1:] == [
        "closed",
        "snapshot refused",
        "busy: closed",
        "new: 5",
        "fds: 0",
        "parent: 7 False",
    ]


def test_sigint_during_a_worker_threads_call() -> None:
    """SIGINT delivered to a worker thread that is in a call: the worker's call goes on
    and returns its exact result; the main thread, itself in a call of another sandbox
    that never ends, gets KeyboardInterrupt (only it runs Python's handlers); a call
    running nowhere else is disturbed."""
    code = textwrap.dedent(
        """
        import signal, threading, time
        from sandbox import Sandbox
        worker_sb, main_sb = Sandbox(), Sandbox()
        out = {}
        started = threading.Event()
        def work():
            started.set()
            out["r"] = worker_sb.call("spin", 2_000_000, timeout=20)
            out["poisoned"] = worker_sb.poisoned
        t = threading.Thread(target=work)
        t.start()
        started.wait()
        time.sleep(0.05)
        def send():
            time.sleep(0.05)
            signal.pthread_kill(t.ident, signal.SIGINT)
        threading.Thread(target=send).start()
        try:
            main_sb.call("fault", "spin_forever", timeout=20)
            print("main: returned")
        except KeyboardInterrupt:
            print("main: interrupted", main_sb.poisoned)
        t.join(20)
        print("worker:", out.get("r"), out.get("poisoned"))
        """
    )
    out = run_python(code, timeout=40)
    assert out is not None, "hung"
    assert out.splitlines() == [
        "main: interrupted True",
        f"worker: {spin_reference(2_000_000)} False",
    ]


def test_pool_close_with_cancel_as_calls_reach_their_threads() -> None:
    """Asyncio calls that never end, closed with cancel=True just as they were handed to
    the pool's threads (some have begun, some not yet): each ends at once with
    CallCancelled or SandboxClosed (a call that had not begun is refused, not run on
    its member or on a replacement made after the close)."""

    async def main() -> None:
        for _ in range(10):
            pool: SandboxPool[Sandbox] = SandboxPool(size=3)
            tasks = [
                asyncio.create_task(pool.acall("fault", "spin_forever", timeout=SAFETY))
                for _ in range(3)
            ]
            await asyncio.sleep(0)  # the tasks take their members and submit their jobs
            pool.close(cancel=True)
            results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), LIMIT)
            assert all(isinstance(r, (CallCancelled, SandboxClosed)) for r in results), results

    asyncio.run(main())


class HeldMember:
    """A pool member (a real sandbox) whose first `poisoned` check, the pool's first
    look at it before a call, waits for `go`: holds a call between the member's checkout
    and its start."""

    def __init__(self, go: threading.Event, reached: threading.Event) -> None:
        self.sb = Sandbox(reset="per_call")
        self.go, self.reached = go, reached
        self.held = False

    @property
    def poisoned(self) -> bool:
        if not self.held:
            self.held = True
            self.reached.set()
            self.go.wait(LIMIT)
        return self.sb.poisoned

    @property
    def closed(self) -> bool:
        return self.sb.closed

    def call(self, name: str, *args: Any, timeout: float | None = None) -> Any:
        return self.sb.call(name, *args, timeout=timeout)

    def restore(self) -> None:
        self.sb.restore()

    def cancel(self) -> None:
        self.sb.cancel()

    def close(self) -> None:
        self.sb.close()


def test_pool_close_with_cancel_makes_no_member_for_a_call_not_begun() -> None:
    """A call held between its member's checkout and its start (on a pool thread) when
    the pool is closed with cancel=True: its member is closed, and the call gets
    SandboxClosed; no new member is made for it after the close (before the fix it
    was, and the call ran on it)."""
    go, reached = threading.Event(), threading.Event()
    made: list[HeldMember] = []

    def factory() -> HeldMember:
        made.append(HeldMember(go, reached))
        return made[-1]

    async def main() -> None:
        pool: SandboxPool[HeldMember] = SandboxPool(factory=factory, size=1)
        task = asyncio.create_task(pool.acall("fault", "spin_forever", timeout=SAFETY))
        assert await asyncio.to_thread(reached.wait, LIMIT)
        pool.close(cancel=True)
        deadline = time.monotonic() + LIMIT
        while not made[0].closed and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        go.set()
        results = await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), LIMIT)
        assert isinstance(results[0], SandboxClosed), results
        assert len(made) == 1

    try:
        asyncio.run(main())
    finally:
        go.set()
        for member in made:
            member.cancel()
            member.close()


@pytest.mark.parametrize("kind", KINDS)
def test_cancel_of_a_closed_sandbox_does_nothing(kind: str) -> None:
    """cancel() after close(), once the VM is torn down, does nothing (before: it raised
    AssertionError "the machine is closed")."""
    k = Kind(kind, "none")
    k.sb.close()
    drain()  # the machine is closed, not only parked
    k.sb.cancel()
    assert k.sb.closed


def test_pool_close_with_cancel_survives_a_member_closed_by_its_user() -> None:
    """A `use` callback closes its member and waits; pool.close(cancel=True) cancels it
    like any busy member (before: AssertionError out of close(), which then left the
    pool's threads running)."""
    pool: SandboxPool[Sandbox] = SandboxPool(size=2)
    go = threading.Event()

    def fn(member: Sandbox) -> None:
        member.close()
        go.wait(LIMIT)

    user = Run(lambda: pool.use(fn))
    try:
        time.sleep(0.1)
        drain()
        pool.close(cancel=True)
        assert pool.closed
    finally:
        go.set()
        assert user.join()
    assert user.error is None, user.error


COUNTER = """(module (global $g (mut i32) (i32.const 0))
  (func (export "inc") (result i32)
    (global.set $g (i32.add (global.get $g) (i32.const 1))) (global.get $g)))"""


def test_a_wasm_sandbox_shared_by_threads_starts_every_call_fresh() -> None:
    """reset="per_call" on one Wasm sandbox called from three threads at once: every
    call starts from the instantiated state (a counter global reads 1), as the native
    and Python kinds' do. (Before: a call could run between another's restore and its
    run, and see its state: 2 or 3.)"""
    wasmtime = pytest.importorskip("wasmtime")
    with Sandbox.from_wasm(bytes(wasmtime.wat2wasm(COUNTER)), reset="per_call") as sb:
        seen: set[int] = set()

        def worker() -> None:
            for _ in range(1000):
                seen.add(sb.call("inc"))

        runs = [Run(worker) for _ in range(3)]
        for r in runs:
            assert r.join(30)
            assert r.error is None, r.error
        assert seen == {1}


# -- sandboxes dropped without close() ---------------------------------------------------


def kvm_fds() -> int:
    """The process's open KVM VM and vCPU descriptors."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the listing's own descriptor, or one closed meanwhile
            continue
        if target.startswith(("anon_inode:kvm-vm", "anon_inode:kvm-vcpu")):
            count += 1
    return count


def settle_without_gc() -> int:
    """KVM descriptors once deferred teardowns and spares are done and the idle machines
    are closed: only live sandboxes' remain (no gc.collect: that is what is tested)."""
    _reaper.drain()
    machines.release_idle()
    return kvm_fds()


WASI_ADD = """(module
  (import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))
  (memory (export "memory") 1)
  (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))"""


def _dropped(kind: str) -> Callable[[], Any]:
    """A maker of sandboxes of `kind` that have run a call."""
    if kind == "native":
        return lambda: Sandbox()
    if kind == "python":
        return lambda: Sandbox("python")
    wasmtime = pytest.importorskip("wasmtime")
    module = bytes(wasmtime.wat2wasm(WASI_ADD if kind == "wasi" else ADD))
    return lambda: Sandbox.from_wasm(
        module, imports={"host": {"unused": lambda: None}}, reset="per_call"
    )


ADD = """(module (import "host" "unused" (func))
  (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))"""


@pytest.mark.parametrize("kind", ["native", "wasm", "wasi", "python"])
def test_a_dropped_sandbox_releases_its_vm_at_once(kind: str) -> None:
    """A sandbox its caller drops without close() gives its VM back as soon as the last
    reference goes, by reference counting, with the cyclic garbage collector off: for
    every kind, as for a native one. (Before: a Wasm sandbox's engine sandbox held bound
    methods of it as host functions and its windows one as a callback, and a Python
    sandbox's WASI context its wrappers of fd_seek/fd_write, closures over it: reference
    cycles that kept each dropped sandbox's VM, its KVM descriptors and its guest
    memory's mapping, until a collection.)"""
    make = _dropped(kind)

    def use() -> Any:
        sb = make()
        if kind == "python":
            assert sb.run("1 + 2") == 3
        else:
            assert sb.call("add", 1, 2) == 3
        return sb

    use().close()  # warm: templates, snapshots, the reaper's threads
    enabled = gc.isenabled()
    gc.disable()
    try:
        before = settle_without_gc()
        maps = maps_count()
        for _ in range(8):
            sb = use()
            alive = weakref.ref(sb)
            del sb
            assert alive() is None, "a dropped sandbox is still referenced"
        assert settle_without_gc() == before, "dropped sandboxes kept their VMs"
        assert maps_count() <= maps + 4, "dropped sandboxes kept their memory mapped"
    finally:
        if enabled:
            gc.enable()


def test_sandboxes_left_open_at_exit_say_nothing() -> None:
    """Sandboxes of every kind left open when the interpreter exits (one dropped, the
    others still referenced by globals), with warnings as errors and the development
    mode's checks: no ResourceWarning, no exception from a finalizer, exit status 0."""
    pytest.importorskip("wasmtime")
    code = textwrap.dedent(
        f"""
        import wasmtime
        from sandbox import Sandbox
        ADD = bytes(wasmtime.wat2wasm({WASI_ADD!r}))
        w = Sandbox.from_wasm(ADD)
        assert w.call("add", 1, 2) == 3
        p = Sandbox("python")
        assert p.run("1 + 2") == 3
        n = Sandbox()
        assert n.call("add", 1, 2) == 3
        Sandbox.from_wasm(ADD, reset="per_call").call("add", 1, 2)
        print("done")
        """
    )
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "done\n"
    assert proc.stderr == ""


# -- the engine's other entry points under the per_call lock -----------------------------

SETTER = """(module (global $g (mut i32) (i32.const 0))
  (func (export "set") (param i32) (global.set $g (local.get 0)))
  (func (export "get") (result i32) (global.get $g)))"""


def test_an_invoke_never_comes_between_a_per_call_restore_and_its_call() -> None:
    """One thread invokes an export that writes a global (WasmSandbox.invoke, the
    engine's low-level entry point), another calls an export that reads it with
    reset="per_call": every call starts from the instantiated state and reads 0.
    (Before: invoke, load, instantiate, register and get did not take the lock that
    call and restore hold, so an invoke ran between a call's restore and its run, and
    the call read the other thread's write; and an invoke did not count as a run, so
    the next call did not restore.)"""
    wasmtime = pytest.importorskip("wasmtime")
    from sandbox.wasm import ValType, WasmSandbox

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # many thread switches: many chances to come between
    sb = WasmSandbox.engine()
    try:
        handle, module = sb.load(bytes(wasmtime.wat2wasm(SETTER)))
        main = sb.instantiate(handle, module)
        sb.make_main(main, "per_call")
        stop = threading.Event()
        seen: list[int] = []

        def writer() -> None:
            while not stop.is_set():
                sb.invoke(main, "set", [(ValType.I32, 7)])

        w = Run(writer)
        end = time.monotonic() + 3.0
        calls = 0
        while time.monotonic() < end:
            seen.append(sb.call("get"))
            calls += 1
        stop.set()
        assert w.join(SAFETY)
        assert w.error is None, w.error
        assert calls > 100
        assert set(seen) == {0}, f"{seen.count(7)} of {calls} calls saw the other thread's write"
    finally:
        sys.setswitchinterval(old)
        sb.close()
