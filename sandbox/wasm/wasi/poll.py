"""WASI functions: poll_oneoff, the process (proc_exit, proc_raise, sched_yield) and the
socket calls, which no descriptor can answer (no descriptor is ever a socket).

poll_oneoff: clock subscriptions (relative or absolute, realtime or monotonic) sleep;
fd_read/fd_write subscriptions are reported ready at once (regular files and stdio never
block). A CPU-time clock in a subscription gives its event EINVAL."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import NoReturn

from .memory import GuardedMemory
from .state import WasiState
from .types import (
    ADDRESS_SPACE,
    CLOCK_MONOTONIC,
    CLOCK_REALTIME,
    EVENT,
    EVENTTYPE_CLOCK,
    EVENTTYPE_FD_READ,
    EVENTTYPE_FD_WRITE,
    MAX_SUBSCRIPTIONS,
    SUBCLOCKFLAGS_ABSTIME,
    SUBSCRIPTION,
    SUBSCRIPTION_CLOCK,
    Errno,
    Fail,
    Rights,
    WasiExit,
)


def poll_oneoff(
    s: WasiState, mem: GuardedMemory, in_ptr: int, out_ptr: int, count: int, n_ptr: int
) -> int:
    if count == 0 or count > MAX_SUBSCRIPTIONS:
        raise Fail(Errno.INVAL)
    raw = mem.read(in_ptr, count * SUBSCRIPTION.size)
    if out_ptr + count * EVENT.size > ADDRESS_SPACE:
        raise Fail(Errno.FAULT)
    mem.read(n_ptr, 4)
    events: list[bytes] = []
    timers: list[tuple[int, int]] = []  # (delay ns, userdata)
    for userdata, tag, body in SUBSCRIPTION.iter_unpack(raw):
        if tag == EVENTTYPE_CLOCK:
            clock, timeout, _precision, flags = SUBSCRIPTION_CLOCK.unpack_from(body)
            if clock not in (CLOCK_REALTIME, CLOCK_MONOTONIC):
                events.append(EVENT.pack(userdata, Errno.INVAL, tag, 0, 0))
                continue
            delay = timeout - s.clock.now(clock) if flags & SUBCLOCKFLAGS_ABSTIME else timeout
            timers.append((max(delay, 0), userdata))
        elif tag in (EVENTTYPE_FD_READ, EVENTTYPE_FD_WRITE):
            (number,) = struct.unpack_from("<I", body)
            events.append(_fd_event(s, userdata, tag, number))
        else:
            raise Fail(Errno.INVAL)
    if not events and timers:
        wait = min(d for d, _ in timers)
        s.clock.sleep(wait)
        events += [EVENT.pack(u, 0, EVENTTYPE_CLOCK, 0, 0) for d, u in timers if d <= wait]
    else:
        events += [EVENT.pack(u, 0, EVENTTYPE_CLOCK, 0, 0) for d, u in timers if d == 0]
    mem.write(out_ptr, b"".join(events))
    mem.put_u32(n_ptr, len(events))
    return 0


def _fd_event(s: WasiState, userdata: int, tag: int, number: int) -> bytes:
    e = s.fds.lookup(number)
    if e is None:
        return EVENT.pack(userdata, Errno.BADF, tag, 0, 0)
    if not e.base & Rights.POLL_FD_READWRITE:
        return EVENT.pack(userdata, Errno.NOTCAPABLE, tag, 0, 0)
    available = 0
    if tag == EVENTTYPE_FD_READ:
        if e.kind == "stdin":
            available = s.stdin.available()
        elif e.kind == "file":
            try:
                st = os.fstat(e.host_fd)
                available = max(st.st_size - os.lseek(e.host_fd, 0, os.SEEK_CUR), 0)
            except OSError:
                available = 0
    return EVENT.pack(userdata, 0, tag, available, 0)


def sched_yield(s: WasiState, mem: GuardedMemory) -> int:
    return 0


def proc_exit(s: WasiState, mem: GuardedMemory, code: int) -> NoReturn:
    s.exit_code = code
    raise WasiExit(code)


def proc_raise(s: WasiState, mem: GuardedMemory, signal: int) -> int:
    return Errno.NOSYS


def sock_accept(s: WasiState, mem: GuardedMemory, fd: int, flags: int, fd_ptr: int) -> int:
    s.fds.get(fd)
    return Errno.NOTSOCK


def sock_recv(
    s: WasiState,
    mem: GuardedMemory,
    fd: int,
    ri: int,
    ri_len: int,
    flags: int,
    n_ptr: int,
    fl_ptr: int,
) -> int:
    s.fds.get(fd)
    return Errno.NOTSOCK


def sock_send(
    s: WasiState, mem: GuardedMemory, fd: int, si: int, si_len: int, flags: int, n_ptr: int
) -> int:
    s.fds.get(fd)
    return Errno.NOTSOCK


def sock_shutdown(s: WasiState, mem: GuardedMemory, fd: int, how: int) -> int:
    s.fds.get(fd)
    return Errno.NOTSOCK


FUNCTIONS: dict[str, Callable[..., int]] = {
    "poll_oneoff": poll_oneoff,
    "proc_exit": proc_exit,
    "proc_raise": proc_raise,
    "sched_yield": sched_yield,
    "sock_accept": sock_accept,
    "sock_recv": sock_recv,
    "sock_send": sock_send,
    "sock_shutdown": sock_shutdown,
}
