"""The one place that imports the compiled extension (sandbox._sbx_native).

Everything else reaches C through the names exported here: `ffi`, `lib`, and thin typed
wrappers. C returns 0 or a negative errno; the wording of errors happens in Python.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # signal.getsignal without the enum conversion
import errno as errno_mod
import fcntl
import os
import signal
import threading
import time
from typing import Any

from ._version import __version__
from .errors import KvmError

try:
    from ._sbx_native import ffi, lib
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "sandbox's native extension is not built: install the package with "
        "`pip install .` (or `make install`), which compiles it with cffi"
    ) from exc

_NATIVE_VERSION = ffi.string(lib.sbx_native_version()).decode()
if __version__ != _NATIVE_VERSION:
    raise ImportError(
        f"sandbox's native extension was built for version {_NATIVE_VERSION}, the package "
        f"is {__version__}: reinstall the package to rebuild it"
    )

__all__ = [
    "ffi",
    "lib",
    "check",
    "ioctl",
    "KICK_SIGNAL",
    "init_kick_signal",
    "kick_thread",
    "watch_signals",
    "block_signals_in_this_thread",
    "Mapping",
]

# The real-time signal used to kick vCPU threads out of KVM_RUN (Python itself uses no
# real-time signals).
KICK_SIGNAL = signal.SIGRTMIN + 3

_signal_ready = False


def ioctl(fd: int, name: str, arg: Any = 0) -> int:
    """Runs the KVM ioctl called `name` (a constant of <linux/kvm.h>). `arg` is an int or
    a cffi pointer to the ioctl's struct, which the kernel may read and write in place.
    Raises KvmError naming the ioctl."""
    request = getattr(lib, name)
    try:
        if isinstance(arg, int):
            return int(fcntl.ioctl(fd, request, arg))
        return int(fcntl.ioctl(fd, request, ffi.buffer(arg), True))
    except OSError as exc:
        err = exc.errno or errno_mod.EIO
        raise KvmError(name, err, f"{name} failed: {os.strerror(err)} (errno {err})") from None


def check(rc: int, operation: str) -> int:
    """Raises KvmError for a negative errno return from C; returns `rc` otherwise."""
    if rc < 0:
        err = -rc
        raise KvmError(operation, err, f"{operation} failed: {os.strerror(err)} (errno {err})")
    return rc


def init_kick_signal() -> None:
    """Installs the vCPU kick handler once per process, and watches the signals Python
    handles (watch_signals)."""
    global _signal_ready
    if not _signal_ready:
        check(lib.sbx_signal_init(KICK_SIGNAL), "sigaction(kick signal)")
        _signal_ready = True
    watch_signals()


WATCH_INTERVAL = 1.0  # seconds between two scans of the signal handlers
_next_watch = 0.0


def watch_signals() -> None:
    """Makes every signal with a Python handler (SIGINT's KeyboardInterrupt first) stop
    a call running on the main thread, whichever thread the kernel delivers it to and
    whenever it lands (native/sbx_signal.h). Called when a sandbox is made, at most once
    a second (a scan costs ~7 us: `_signal.getsignal` of every signal); the run loop
    itself re-watches SIGINT within 10 ms when signal.signal() has put Python's handler
    back (as asyncio.run does). Only the main thread installs handlers."""
    global _next_watch
    if threading.get_ident() != _MAIN_THREAD or time.monotonic() < _next_watch:
        return
    _next_watch = time.monotonic() + WATCH_INTERVAL
    for signo in _PYTHON_SIGNALS:
        if callable(_signal.getsignal(signo)) and not lib.sbx_signal_watched(signo):
            lib.sbx_signal_watch(signo)  # -EINVAL for a C handler that is not Python's


def block_signals_in_this_thread() -> None:
    """Blocks, in the calling thread, the signals Python turns into exceptions: for the
    runtime's own threads (teardown, pool workers), so that the kernel delivers a
    process-directed Ctrl-C to a thread that can act on it. The kick signal stays open."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _PYTHON_SIGNALS)


_MAIN_THREAD = threading.main_thread().ident

# The catchable signals a Python handler may be installed for (the kick signal and the
# synchronous faults Python never handles are left out).
_PYTHON_SIGNALS = tuple(
    int(s)
    for s in sorted(signal.valid_signals())
    if s
    not in (
        signal.SIGKILL,
        signal.SIGSTOP,
        signal.SIGSEGV,
        signal.SIGBUS,
        signal.SIGFPE,
        signal.SIGILL,
        KICK_SIGNAL,
    )
)


def kick_thread(native_thread_id: int) -> None:
    """Kicks the given thread of this process out of KVM_RUN; nothing if it has exited
    (its run ended with it; in a forked child, the parent's threads are not there)."""
    rc = lib.sbx_kick_thread(native_thread_id)
    if rc != -errno_mod.ESRCH:
        check(rc, "tgkill")


class Mapping:
    """A memory mapping of a file descriptor, owned by this object (mmap(2) through the
    extension: unlike Python's mmap module it keeps no duplicate of the descriptor).
    `view` is a memoryview of it; `close()` releases the view and unmaps. Contract: no
    other view of the memory may outlive close() (the owners keep theirs private)."""

    def __init__(self, fd: int, length: int, *, private: bool, writable: bool = True) -> None:
        self._init(lib.sbx_map(fd, length, int(private), int(writable)), length, writable)

    @classmethod
    def of_image(cls, fd: int, length: int, extents: Any, count: int) -> Mapping:
        """A sandbox's memory: `length` bytes of private anonymous memory with the
        `count` (offset, length) extents of `fd` (a uint64_t array of pairs) mapped
        private over it (see memory.py)."""
        mapping = cls.__new__(cls)
        mapping._init(lib.sbx_memory_map(fd, length, extents, count), length, True)
        return mapping

    @classmethod
    def adopt(cls, ptr: Any, length: int) -> Mapping:
        """Takes over a writable mapping of `length` bytes that C code made (its owner from
        now on: sbx_machine_boot's guest memory and kvm_run)."""
        mapping = cls.__new__(cls)
        mapping._init(ptr, length, True)
        return mapping

    def _init(self, ptr: Any, length: int, writable: bool) -> None:
        if ptr == ffi.NULL:
            err = ffi.errno
            raise OSError(err, f"mmap of {length} bytes failed: {os.strerror(err)}")
        self.length = length
        self._ptr = ffi.cast("char *", ptr)
        self.address = int(ffi.cast("uintptr_t", ptr))
        # Safe: the buffer covers exactly the mapping, and is released before munmap.
        self.view = memoryview(ffi.buffer(self._ptr, length))
        if not writable:
            self.view = self.view.toreadonly()

    @property
    def ptr(self) -> Any:
        return self._ptr

    def madvise(self, advice: int, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.length:
            raise ValueError("madvise range outside the mapping")
        check(lib.sbx_madvise(self._ptr + offset, length, advice), "madvise")

    def close(self) -> None:
        if self._ptr is not None:
            self.view.release()
            check(lib.sbx_unmap(self._ptr, self.length), "munmap")
            self._ptr = None
