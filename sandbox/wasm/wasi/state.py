"""The mutable state of one WASI program besides its descriptors: stdin, the output
captures, the clocks (real or virtual, with the sleep that poll_oneoff does), the random
source, the encoded argv and environment, and the exit code. `WasiState` bundles it with
the descriptor table; every WASI function takes it as its first argument."""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass

from .config import WasiConfig, encode_env
from .fdtable import DescriptorTable, stdio_terminals
from .types import (
    CLOCK_MONOTONIC,
    CLOCK_PROCESS_CPUTIME,
    CLOCK_REALTIME,
    CLOCK_THREAD_CPUTIME,
    U64,
    Errno,
    Fail,
)


class Stdin:
    """What fd 0 reads: the configured bytes (or a request body given later), or the host
    process's stdin."""

    def __init__(self, config: WasiConfig) -> None:
        self.inherit = config.stdin == "inherit"
        self._data = b"" if config.stdin == "inherit" else config.stdin
        self._pos = 0

    def set(self, data: bytes) -> None:
        self._data, self._pos, self.inherit = bytes(data), 0, False

    def read(self, n: int) -> bytes:
        if self.inherit:
            return os.read(0, n)
        data = self._data[self._pos : self._pos + n]
        self._pos += len(data)
        return data

    def available(self) -> int:
        """Bytes left to read (0 when inherited: unknown)."""
        return 0 if self.inherit else len(self._data) - self._pos


class Capture:
    """A captured output stream (fd 1 or 2). Keeps the first `limit` bytes the program
    writes; the rest is counted and dropped, and the capture is then `truncated`. Bytes
    are appended in place, so a flood costs time linear in what is written and memory
    bounded by the limit. Marks are offsets in everything written since the last clear
    (kept or dropped), so they stay meaningful past the limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._kept = bytearray()
        self._written = 0  # bytes written since the last clear, kept or dropped

    @property
    def room(self) -> int:
        """How many more bytes would be kept."""
        return max(self.limit - len(self._kept), 0)

    def append(self, head: bytes, size: int) -> None:
        """Records a write of `size` bytes whose first bytes are `head` (the caller reads
        at most `room` of them from the program's memory; the rest is only counted)."""
        self._kept += head[: self.room]
        self._written += size

    @property
    def data(self) -> bytes:
        return bytes(self._kept)

    @property
    def truncated(self) -> bool:
        """Whether output was dropped since the last clear."""
        return self._written > len(self._kept)

    def mark(self) -> int:
        return self._written

    def since(self, mark: int) -> bytes:
        """What was kept of the output written after `mark`."""
        return bytes(self._kept[min(mark, len(self._kept)) :])

    def truncated_since(self, mark: int) -> bool:
        """Whether some of the output written after `mark` was dropped."""
        kept_since = len(self._kept) - min(mark, len(self._kept))
        return self._written - mark > kept_since

    def clear(self) -> None:
        self._kept.clear()
        self._written = 0


# WASI clock id -> the host clock that serves it. Both CPU-time clocks read the CPU time
# of the host thread running the call (which includes the vCPU's guest time).
_CLOCKS = {
    CLOCK_REALTIME: time.CLOCK_REALTIME,
    CLOCK_MONOTONIC: time.CLOCK_MONOTONIC,
    CLOCK_PROCESS_CPUTIME: time.CLOCK_THREAD_CPUTIME_ID,
    CLOCK_THREAD_CPUTIME: time.CLOCK_THREAD_CPUTIME_ID,
}


class Clock:
    """The program's clocks. A virtual clock starts at the configured epoch (realtime) and
    0 (the others) and advances only by the sleeps of poll_oneoff, which return at once. A
    real sleep ends early (EINTR) at the call's deadline or when interrupted."""

    def __init__(self, config: WasiConfig) -> None:
        self.virtual = config.clock == "virtual"
        self._epoch = config.virtual_epoch_ns
        self._virtual_ns = 0
        self._interrupt = threading.Event()
        self.deadline_ns: int | None = None  # time.monotonic_ns() at which sleeps end

    @staticmethod
    def check(clock: int) -> None:
        if clock not in _CLOCKS:
            raise Fail(Errno.INVAL)

    def now(self, clock: int) -> int:
        self.check(clock)
        if self.virtual:
            epoch = self._epoch if clock == CLOCK_REALTIME else 0
            return (epoch + self._virtual_ns) & U64
        return time.clock_gettime_ns(_CLOCKS[clock])

    def resolution(self, clock: int) -> int:
        self.check(clock)
        if self.virtual:
            return 1
        return max(1, round(time.clock_getres(_CLOCKS[clock]) * 1e9))

    def interrupt(self) -> None:
        self._interrupt.set()

    def set_deadline(self, deadline_ns: int | None) -> None:
        """The deadline of the call that starts or ends now; a pending interrupt is
        dropped."""
        self.deadline_ns = deadline_ns
        self._interrupt.clear()

    def sleep(self, ns: int) -> None:
        """Sleeps `ns` (a virtual clock just advances); EINTR when cut short."""
        if self.virtual:
            self._virtual_ns += ns
            return
        deadline = time.monotonic_ns() + ns
        limit = self.deadline_ns
        cut = limit is not None and limit < deadline
        if limit is not None and cut:
            deadline = limit
        while (left := deadline - time.monotonic_ns()) > 0:
            # In slices: Event.wait refuses timeouts of centuries, which a guest may ask.
            if self._interrupt.wait(min(left, 3600 * 10**9) / 1e9):
                self._interrupt.clear()
                raise Fail(Errno.INTR)
        if cut:
            raise Fail(Errno.INTR)  # the call's time limit ended the sleep


@dataclass(eq=False)
class WasiState:
    """Everything a WASI function may read or change."""

    config: WasiConfig
    fds: DescriptorTable
    stdin: Stdin
    stdout: Capture
    stderr: Capture
    clock: Clock
    rng: random.Random | None  # None: os.urandom
    args: list[bytes]  # NUL-terminated
    environ: list[bytes]  # "KEY=VALUE", NUL-terminated
    exit_code: int | None = None

    @classmethod
    def create(cls, config: WasiConfig) -> WasiState:
        """Opens the preopened directories (ConfigError when one cannot be opened)."""
        return cls(
            config=config,
            fds=DescriptorTable(
                config.preopens,
                config.max_open_files,
                stdio_terminals(
                    config.stdin == "inherit",
                    config.stdout == "inherit",
                    config.stderr == "inherit",
                ),
            ),
            stdin=Stdin(config),
            stdout=Capture(config.output_limit),
            stderr=Capture(config.output_limit),
            clock=Clock(config),
            rng=random.Random(config.random_seed) if config.random_seed is not None else None,
            args=[a.encode() + b"\0" for a in config.args],
            environ=encode_env(config.env),
        )
