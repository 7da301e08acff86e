"""Idle machines: VMs kept for the next sandbox instead of being torn down.

Creating a VM and its vCPU (and setting its CPUID) costs ~0.4 ms of kernel time, tearing
one down ~0.3 ms or more, and a new VM's first call pays for building KVM's shadow page
tables. A closed sandbox's machine is therefore parked here (on the teardown thread:
pending exit completed, memory reset to its image as a restore does, KVM's mappings
flushed if the host changed page tables), and the next sandbox of the same
memory layout takes it over with `Machine.load` — the same exact reset a restore does, so
nothing of the previous sandbox reaches the next (the promise of restore and of pools).
At most MAX_IDLE machines wait, each at most IDLE_SECONDS (a machine parked when MAX_IDLE
wait replaces the one idle the longest: a full pool of another snapshot's machines must
not make every spare of the snapshot in use be built and thrown away); a machine whose
vCPU shut down or failed in KVM is closed, never parked. `release_idle()` closes them all (tests
that count descriptors, embedders that want the memory back now).

Spares: when a sandbox takes the last idle machine of its memory image, or finds none and
gets a new one, the background thread makes one more machine of the same state and parks
it (at most one in the making per image; none while SPARES is False or MAX_IDLE is 0),
so that a program that keeps its sandboxes open and makes more finds one ready. A new
VM's first call is slow for a reason the VM's creation does not show: KVM builds its
shadow mappings of guest memory page by page as the guest touches it (~19 us a page
under nested KVM; a Python call touches ~400 pages, ~7 ms). A layer whose guest touches
that much registers a `warm` job for its image (`warm_spares_with`): the spare is then
made by a sandbox that runs one call and closes, and the spare's mappings survive the
reset that parks it (a reset copies the written pages back in place). An idle machine
still mapping the image asked for is taken before one that must map another.

A spare is made only while the process is quiet: its thread first waits until no vCPU
run has begun and no sandbox has been made for QUIET_SECONDS (and drops the order if
that takes more than QUIET_WAIT_MAX). Made beside the caller's calls, it competed with
them for the CPU, the GIL and KVM's locks: a Python sandbox's spawn and first call took
~2 ms, or ~6 ms in 15-40 % of spawns, on this project's 2-CPU machines; and a loop that
never pauses has no idle time for a spare to use.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable

from . import _reaper
from ._native import lib
from .cpu import CpuState
from .layout import Layout
from .machine import Machine
from .memory import MemoryImage

MAX_IDLE = 8
IDLE_SECONDS = 30.0
SPARES = True
QUIET_SECONDS = 0.002  # no run begun, no sandbox made for this long: the process is idle
QUIET_WAIT_MAX = 1.0  # a spare waits at most this long for a quiet moment

# image -> the job that makes a warmed spare of it (see warm_spares_with)
_warmers: weakref.WeakKeyDictionary[MemoryImage, Callable[[], None]] = weakref.WeakKeyDictionary()
_ordered: set[int] = set()  # id() of the images a spare is being made of

_idle: dict[Layout, deque[tuple[Machine, float]]] = {}
_count = 0
_spawns = 0  # obtain() calls: with the vCPU runs begun, what "quiet" watches
_pid = os.getpid()
_lock = threading.Lock()


def obtain(image: MemoryImage, cpu: CpuState, layout: Layout) -> Machine:
    """A machine in the state (`image`, `cpu`): an idle one of this layout, loaded, or a
    new one."""
    global _spawns
    _spawns += 1
    while (machine := _take(layout, image)) is not None:
        try:
            machine.load(image, cpu)
            break
        except Exception:  # this VM cannot be reused: try the next, or a new one
            machine.close()
    else:
        machine = Machine(image, cpu, layout)
    _order_spare(image, cpu, layout)
    return machine


def _take(layout: Layout, image: MemoryImage) -> Machine | None:
    """An idle machine of `layout`, one still mapping `image` if there is one."""
    global _count, _pid
    with _lock:
        if _pid != os.getpid():  # forked: the parent's VMs are not ours to use
            for parents in _idle.values():  # this process's copies of their descriptors
                for machine, _ in parents:
                    machine.close()
            _idle.clear()
            _ordered.clear()
            _count, _pid = 0, os.getpid()
            return None
        if not _count:  # nothing idle (hashing the layout costs ~1-2 us of a new VM)
            return None
        waiting = _idle.get(layout)
        if not waiting:
            return None
        for i in range(len(waiting) - 1, -1, -1):
            if waiting[i][0].memory.image is image:
                machine = waiting[i][0]
                del waiting[i]
                break
        else:
            machine = waiting.pop()[0]
        _count -= 1
        return machine


def warm_spares_with(image: MemoryImage, warm: Callable[[], None]) -> None:
    """Spares of `image` are made by `warm` instead of as plain machines: `warm` makes a
    sandbox in the state of `image`, runs a call that touches what calls touch, and
    closes the sandbox (which parks its machine). It runs on the background thread, must
    bound its own time (a call timeout), and its failure only means no spare. Forgotten
    with `image`."""
    _warmers[image] = warm


def _order_spare(image: MemoryImage, cpu: CpuState, layout: Layout) -> None:
    """Orders a spare of `image` unless one is idle or being made."""
    if not SPARES or MAX_IDLE <= 0 or sys.is_finalizing():
        return
    with _lock:
        if id(image) in _ordered or _pid != os.getpid():
            return
        if any(m.memory.image is image for m, _ in _idle.get(layout, ())):
            return
        _ordered.add(id(image))
    _reaper.defer_spare(functools.partial(_make_spare, image, cpu, layout))


def _activity() -> int:
    return int(lib.sbx_vcpu_runs()) + _spawns


def _wait_until_quiet() -> bool:
    """Whether the process went QUIET_SECONDS without beginning a vCPU run or making a
    sandbox within QUIET_WAIT_MAX."""
    give_up = time.monotonic() + QUIET_WAIT_MAX
    seen = _activity()
    while True:
        time.sleep(QUIET_SECONDS)
        now = _activity()
        if now == seen:
            return True
        if time.monotonic() >= give_up:
            return False
        seen = now


def _make_spare(image: MemoryImage, cpu: CpuState, layout: Layout) -> None:
    """Runs on the spares thread: a machine of this state, parked for the next sandbox
    (a sandbox made by a warm job asks for no spare: this image's is ordered)."""
    try:
        if not _wait_until_quiet():
            return
        warm = _warmers.get(image)
        if warm is not None:
            warm()
        else:
            machine = Machine(image, cpu, layout)
            try:
                machine.warm(cpu)
            except BaseException:
                machine.close()
                raise
            park(machine)
    except Exception:  # a spare saves time only: the next sandbox makes its own machine
        pass
    finally:
        with _lock:
            _ordered.discard(id(image))


def park(machine: Machine) -> None:
    """Keeps `machine` for a later sandbox if it can be, or closes it. Runs on the
    teardown thread (sandbox._reaper)."""
    global _count
    kept = False
    if machine.recyclable:
        try:
            machine.park()
        except BaseException:
            machine.close()
            raise
        now = time.monotonic()
        with _lock:
            expired = _expire(now)
            if MAX_IDLE > 0 and _pid == os.getpid():
                if _count >= MAX_IDLE:  # the newest is the likeliest to be asked for
                    expired.append(_evict_oldest())
                _idle.setdefault(machine.layout, deque()).append((machine, now))
                _count += 1
                kept = True
        for old in expired:
            old.close()
    if not kept:
        machine.close()


def _evict_oldest() -> Machine:
    """Removes (for the caller to close) the machine idle the longest; _count > 0."""
    global _count
    waiting = min((w for w in _idle.values() if w), key=lambda w: w[0][1])
    _count -= 1
    return waiting.popleft()[0]


def _expire(now: float) -> list[Machine]:
    """Removes (for the caller to close) the machines idle for IDLE_SECONDS or more."""
    global _count
    expired = []
    for waiting in _idle.values():
        while waiting and now - waiting[0][1] >= IDLE_SECONDS:
            expired.append(waiting.popleft()[0])
    _count -= len(expired)
    return expired


def idle_count() -> int:
    """How many machines wait for a sandbox now (spares included)."""
    with _lock:
        return _count


def release_idle() -> int:
    """Closes every idle machine now, spares in the making included (it waits for the
    background thread, unless called from it); returns how many."""
    global _count
    if not _reaper.on_reaper_thread():
        _reaper.drain()
    with _lock:
        machines = [m for waiting in _idle.values() for m, _ in waiting]
        _idle.clear()
        _count = 0
    for machine in machines:
        machine.close()
    return len(machines)
