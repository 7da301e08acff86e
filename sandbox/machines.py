"""Idle machines: VMs kept for the next sandbox instead of being torn down.

Creating a VM and its vCPU (and setting its CPUID) costs ~0.4 ms of kernel time, tearing
one down ~0.3 ms or more, and a new VM's first call pays for building KVM's shadow page
tables. A closed sandbox's machine is therefore parked here (on the teardown thread:
pending exit completed, memory reset to its image as a restore does, KVM's mappings
flushed if the host changed page tables), and the next sandbox of the same
memory layout takes it over with `Machine.load` — the same exact reset a restore does, so
nothing of the previous sandbox reaches the next (the promise of restore and of pools).
At most MAX_IDLE machines wait, each at most IDLE_SECONDS; a machine whose vCPU shut
down or failed in KVM is closed, never parked. `release_idle()` closes them all (tests
that count descriptors, embedders that want the memory back now).
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque

from .cpu import CpuState
from .layout import Layout
from .machine import Machine
from .memory import MemoryImage

MAX_IDLE = 8
IDLE_SECONDS = 30.0

_idle: dict[Layout, deque[tuple[Machine, float]]] = {}
_count = 0
_pid = os.getpid()
_lock = threading.Lock()


def obtain(image: MemoryImage, cpu: CpuState, layout: Layout) -> Machine:
    """A machine in the state (`image`, `cpu`): an idle one of this layout, loaded, or a
    new one."""
    while (machine := _take(layout)) is not None:
        try:
            machine.load(image, cpu)
            return machine
        except Exception:  # this VM cannot be reused: try the next, or a new one
            machine.close()
    return Machine(image, cpu, layout)


def _take(layout: Layout) -> Machine | None:
    global _count, _pid
    with _lock:
        if _pid != os.getpid():  # forked: the parent's VMs are not ours to use
            _idle.clear()
            _count, _pid = 0, os.getpid()
            return None
        waiting = _idle.get(layout)
        if not waiting:
            return None
        machine, _ = waiting.pop()
        _count -= 1
        return machine


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
            if _count < MAX_IDLE and _pid == os.getpid():
                _idle.setdefault(machine.layout, deque()).append((machine, now))
                _count += 1
                kept = True
        for old in expired:
            old.close()
    if not kept:
        machine.close()


def _expire(now: float) -> list[Machine]:
    """Removes (for the caller to close) the machines idle for IDLE_SECONDS or more."""
    global _count
    expired = []
    for waiting in _idle.values():
        while waiting and now - waiting[0][1] >= IDLE_SECONDS:
            expired.append(waiting.popleft()[0])
    _count -= len(expired)
    return expired


def release_idle() -> int:
    """Closes every idle machine now; returns how many."""
    global _count
    with _lock:
        machines = [m for waiting in _idle.values() for m, _ in waiting]
        _idle.clear()
        _count = 0
    for machine in machines:
        machine.close()
    return len(machines)
