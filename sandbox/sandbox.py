"""`Sandbox`: one micro-VM running one guest; `call()` runs a guest function in it.

The sandbox is the policy over a `Machine` (machine.py): its lifecycle state (ready,
poisoned, closed), the lock that serializes calls, the exit loop of a call, host-function
dispatch, the guest's output, the reset mode, poisoning and cancellation. The machine
does everything that touches KVM.

Other guest kinds (Wasm modules, sandbox/wasm/; Python functions, sandbox/python/) are
built on top of it by composition and reached through `kinds`: `Sandbox.from_wasm`,
`Sandbox("python")` and `Sandbox.from_snapshot` of their snapshots return their
sandboxes, which `isinstance(x, Sandbox)` recognises (they are registered as virtual
subclasses) and which offer the same methods.

Over ~500 lines for one concept: the lifecycle, the call loop, restores and host calls
all read and write one state under one lock (the state, the caller, the poisoning, the
views of the call buffers); split into modules, each would reach into the others.
"""

from __future__ import annotations

import abc
import functools
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NoReturn, Self

from . import _reaper, kinds, machines
from .abi import (
    CallEncoder,
    Signature,
    Status,
    Value,
    decode_call,
    decode_result,
    decode_return,
    encode_result,
)
from .arguments import (
    HostFunction,
    check_config,
    check_host_functions,
    check_path,
    check_reset,
    check_timeout,
    describe,
)
from .config import ResetMode, SandboxConfig
from .cpu import CpuState
from .errors import (
    ArgumentError,
    CallCancelled,
    CallTimeout,
    FunctionNotFound,
    GuestAbort,
    GuestProtocolError,
    HostFunctionError,
    KvmError,
    SandboxBusy,
    SandboxClosed,
    SandboxError,
    SandboxPoisoned,
)
from .exits import Exit, ExitKind
from .layout import Layout
from .memory import GuestMemory
from .output import OutputCapture
from .snapshot import Snapshot, SpawnsSandbox
from .template import prepare
from .traps import decode_trap

if TYPE_CHECKING:
    from .wasm.sandbox import WasmSandbox
    from .wasm.wasi import WasiConfig

HOST_ERROR_MESSAGE_MAX = 1000  # bytes of a host exception's text passed to the guest
SHARED_ENCODERS_MAX = 1024  # call encoders a snapshot keeps for its sandboxes

_READY, _POISONED, _CLOSED = "ready", "poisoned", "closed"
_get_ident = threading.get_ident
_RETURN = ExitKind.RETURN
_OK = int(Status.OK)


# An ABC with no abstract methods: only so that other guest kinds register as virtual
# subclasses (kinds.py).
class Sandbox(metaclass=abc.ABCMeta):  # noqa: B024
    """A guest running in its own KVM micro-VM.

    `guest` is the path of a guest ELF or the name of a bundled guest (None: the demo
    guest). `host_functions` maps names to Python callables the guest may call; their
    arguments arrive as Python values and their return value (int, float, bool, str,
    bytes or None) goes back to the guest. `output` receives the guest's printed text
    as it is flushed; the text printed during the last call is also in `last_output`
    (both at most `config.output_limit` bytes per call; `last_output_truncated` says
    whether the guest printed more). `reset="per_call"` starts every call from the
    state the sandbox started in.

    Raises KvmUnavailable if /dev/kvm cannot be used, GuestNotFound, GuestAbiMismatch
    for a file that is not a guest of this ABI, ConfigError if the guest does not fit the
    config, KvmError if a KVM ioctl fails. Use as a context manager or call `close()`.
    """

    def __new__(cls, guest: object = None, *args: Any, **kwargs: Any) -> Any:
        # Sandbox("python"): the name of a guest kind registered as a constructor
        # (kinds.py) makes a sandbox of that kind, which is not a Sandbox by inheritance,
        # so Python does not call __init__ on it. (Sandbox("wasm") is the bundled Wasm
        # engine guest itself; Wasm modules go through Sandbox.from_wasm.)
        if cls is Sandbox and isinstance(guest, str) and kinds.is_kind(guest):
            return kinds.factory(guest)(*args, **kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        guest: str | os.PathLike[str] | None = None,
        *,
        config: SandboxConfig | None = None,
        host_functions: Mapping[str, HostFunction] | None = None,
        output: Callable[[str], None] | None = None,
        reset: ResetMode = "none",
    ) -> None:
        self._state = _CLOSED  # until fully built, so __del__/close are no-ops
        config = check_config(config)
        check_path("guest", guest)
        functions = check_host_functions(host_functions)  # before any KVM work
        check_reset(reset)
        initial = prepare(guest, config).initial
        self._start(initial, functions, output, reset)

    def _start(
        self,
        initial: Snapshot,
        host_functions: dict[str, HostFunction],
        output: Callable[[str], None] | None,
        reset: ResetMode,
    ) -> None:
        self.config = initial.config
        self.layout: Layout = initial.layout
        self.functions: Mapping[str, Signature] = initial.functions
        self.guest_path = initial.guest_path
        self.reset_mode: ResetMode = reset
        self._initial = initial
        self._host_functions = host_functions
        self._lock = threading.Lock()
        self._caller: int | None = None  # threading.get_ident() of the thread in call()
        self._cancel_requested = False
        self._poison_reason = ""
        self._ran = False  # the guest ran since the last (re)start
        self._in_call = False  # the guest is inside a call (between entry and RETURN)
        self._close_requested = False
        self._capture = OutputCapture(self.config.output_limit, output)
        # The encoders of calls by name or by a layer's own CallEncoder: the snapshot's,
        # shared by its sandboxes (Snapshot.call_encoders, bounded), and this sandbox's
        # own past that bound.
        self._encoders = initial.call_encoders
        self._own_encoders: dict[str | CallEncoder, CallEncoder] = {}
        self._default_timeout = self.config.timeout
        self._machine = machines.obtain(initial.image, initial.cpu, initial.layout)
        self._run_vcpu = self._machine.run
        self._map_views()
        self._state = _READY

    @classmethod
    def from_snapshot(
        cls,
        snapshot: Snapshot | SpawnsSandbox | str | os.PathLike[str],
        *,
        host_functions: Mapping[str, HostFunction] | None = None,
        output: Callable[[str], None] | None = None,
        reset: ResetMode = "none",
    ) -> Sandbox:
        """A new sandbox in the state of `snapshot` (a Snapshot, the path of a saved
        one, or another guest kind's snapshot, which makes its own kind of sandbox),
        without re-running the guest's initialization. Its memory maps the snapshot's
        copy-on-write. Raises SnapshotError for an unusable file, plus what Sandbox()
        raises."""
        if type(snapshot) is not Snapshot:  # the common case first (PathLike is an ABC)
            # A SpawnsSandbox (another guest kind's snapshot): the structural check that
            # isinstance() would make on the runtime-checkable Protocol, which costs ~10
            # us a call there.
            spawn = getattr(snapshot, "spawn", None)
            if callable(spawn) and not isinstance(snapshot, (str, Snapshot)):
                sb: Sandbox = spawn(host_functions=host_functions, output=output, reset=reset)
                return sb
            if isinstance(snapshot, (str, os.PathLike)):
                snapshot = Snapshot.load(snapshot)
            elif not isinstance(snapshot, Snapshot):
                raise ArgumentError(
                    f"from_snapshot takes a Snapshot or a path, not {type(snapshot).__name__}"
                )
        check_reset(reset)
        functions = check_host_functions(host_functions)
        new: Sandbox = object.__new__(cls)
        new._state = _CLOSED
        new._start(snapshot, functions, output, reset)
        return new

    @classmethod
    def from_wasm(
        cls,
        module: bytes | str | os.PathLike[str],
        *,
        imports: Mapping[str, Mapping[str, Callable[..., Any]]] | None = None,
        wasi: WasiConfig | None = None,
        config: SandboxConfig | None = None,
        reset: ResetMode = "none",
        output: Callable[[str], None] | None = None,
        tier: str = "interp",
    ) -> WasmSandbox:
        """A sandbox running the Wasm module `module` (bytes or a path) in the Wasm engine
        guest, instantiated, with `call` reaching its exported functions by name.
        `imports` binds function imports to Python callables ({"module": {"name": fn}});
        WASI preview1 imports are served by a WasiContext made from `wasi` (default:
        no arguments, no environment, no directories, output captured; a module that
        imports nothing from WASI has no context, and `wasi` is unused). The module is
        validated on the host (wasmtime) first. Raises WasmModuleError, WasmLinkError,
        WasmTrap (a trap while instantiating), plus what Sandbox() raises. See
        sandbox.wasm. `tier`: "interp" (the engine interprets the module), "aot" (the
        module compiled to native code, cached on disk; AotCompileError if it cannot
        be) or "auto" (native code once a background compile has finished; see
        docs/aot.md); anything else raises ArgumentError."""
        factory = kinds.factory("wasm")
        sb: WasmSandbox = factory(
            module,
            imports=imports,
            wasi=wasi,
            config=config,
            reset=reset,
            output=output,
            tier=tier,
        )
        return sb

    # -- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # The fallback for a sandbox nobody closed: release at once, on this thread (a
        # finalizer may run at interpreter exit, when no thread can be started).
        if getattr(self, "_state", _CLOSED) != _CLOSED:
            self._release(deferred=False)

    @property
    def closed(self) -> bool:
        return self._state == _CLOSED

    @property
    def poisoned(self) -> bool:
        return self._state == _POISONED

    @property
    def calling_here(self) -> bool:
        """Whether the calling thread is inside one of this sandbox's calls (a host
        function, the output callback): for layers that must not act on their own call
        as they would on one running elsewhere (WasmSandbox.close)."""
        return self._caller == threading.get_ident()

    @property
    def memory(self) -> GuestMemory:
        """The guest's memory (host access by guest address, bounds-checked), for hosts
        of guests that exchange data through it (the Wasm engine)."""
        return self._machine.memory

    @property
    def last_output(self) -> str:
        """What the guest printed during the last call (at most config.output_limit
        bytes of it)."""
        return self._capture.text

    @property
    def last_output_truncated(self) -> bool:
        """Whether the guest printed more than config.output_limit bytes in the last
        call (the rest was dropped)."""
        return self._capture.truncated

    def close(self) -> None:
        """Releases the VM. Idempotent. A call running in another thread is cancelled
        first, and a call or restore that has not taken the sandbox yet gets
        SandboxClosed; called from inside a call (a host function, the output callback),
        the sandbox closes when that call ends. The kernel teardown runs on a background
        thread."""
        if self._state == _CLOSED:
            return
        if self._machine.forked:  # the parent's call and lock holder are not in this child
            self._release(deferred=True)
            return
        # Seen by every call and restore that takes the lock from now on: they refuse.
        self._close_requested = True
        if self._caller == threading.get_ident():
            return  # the call holds the lock: it closes the sandbox when it ends
        # Cancels the call running now, and one that took the lock before it could see
        # the request (one cancel each: a call in a host function ends when that returns).
        lock = self._lock
        while True:
            if self._caller is not None and not self._cancel_requested:
                self.cancel()
            if lock.acquire(timeout=0.01):
                break
        try:
            self._release(deferred=True)
        finally:
            lock.release()

    def _release(self, *, deferred: bool) -> None:
        if self._state == _CLOSED:
            return
        self._state = _CLOSED
        machine = self._machine
        if deferred:
            _reaper.defer(functools.partial(machines.park, machine))
        else:
            machine.close()

    def cancel(self) -> None:
        """Stops the running call (it raises CallCancelled); the sandbox is poisoned.
        From inside the call (a host function), the call ends when that returns. Does
        nothing if no call is running (nor on a closed sandbox)."""
        self._cancel_requested = True
        if self._caller == threading.get_ident() or self._machine.forked:
            return  # from inside: ends when that returns; forked: the call is the parent's
        deadline = time.monotonic() + 1.0
        machine = self._machine  # closed meanwhile (a call ended, then close): no kick
        # A kick that lands just before KVM_RUN starts is absorbed by immediate_exit,
        # but one that lands before the run loop is entered is lost: kick until out.
        # Only this call: the next one (a restore and a call take less than the sleep
        # below) starts with the request cleared, and a kick that still reaches it is
        # stale (call() goes on after it).
        while self._caller is not None and self._cancel_requested:
            if time.monotonic() >= deadline:
                break
            machine.kick()
            time.sleep(0.001)

    # -- snapshot and restore --------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """Captures the sandbox between calls: memory (into a new sealed memfd, copying
        only the pages in use) and vCPU state. Raises SandboxPoisoned, SandboxClosed,
        SandboxBusy (from inside one of its own calls)."""
        with self._between_calls():
            self._check_ready()
            self._check_process()
            machine = self._machine
            return Snapshot(
                image=machine.snapshot_image(),
                cpu=machine.save_cpu(),
                layout=self.layout,
                functions=dict(self.functions),
                functions_table=self._initial.functions_table,
                config=self.config,
                guest_path=self.guest_path,
            )

    def cpu_state(self) -> CpuState:
        """The vCPU's registers between calls (for `recover`). Raises what snapshot()
        raises."""
        with self._between_calls():
            self._check_ready()
            self._check_process()
            return self._machine.save_cpu()

    def restore(self, snapshot: Snapshot | None = None) -> None:
        """Returns the sandbox to the state of `snapshot` (default: the state it started
        in) and clears poisoning. Restoring the snapshot the sandbox was made or last
        restored from copies back only the pages written since, so it costs in proportion
        to them; another snapshot is mapped afresh. The guest gets a new random seed.
        Raises ArgumentError for a snapshot of another guest layout, SandboxClosed,
        SandboxBusy (from inside one of its own calls)."""
        with self._between_calls():
            if self._close_requested or self._state == _CLOSED:
                self._check_open()  # raises
            self._restore(snapshot)

    def _restore(self, snapshot: Snapshot | None) -> None:
        if snapshot is not None and not isinstance(snapshot, Snapshot):
            raise ArgumentError(f"restore() takes a Snapshot, not {type(snapshot).__name__}")
        target = snapshot if snapshot is not None else self._initial
        if target.layout is not self.layout and target.layout != self.layout:
            raise ArgumentError("the snapshot is of another guest or memory layout")
        # Poisoned until the restore completes: a failure half-way leaves no usable state.
        self._state = _POISONED
        self._poison_reason = "failed restore"
        if self._machine.load(target.image, target.cpu):
            self._map_views()
        if target.functions is not self.functions:
            self.functions = target.functions
            self._encoders = target.call_encoders
            self._own_encoders = {}
        self._ran = False
        self._state = _READY

    def recover(self, cpu: CpuState) -> None:
        """Clears a trap's poisoning by loading `cpu` (registers from `cpu_state()`),
        keeping memory as it is: for hosts of guests that handle their own faults once
        told of them (the Wasm engine's out-of-bounds accesses). Raises SandboxClosed,
        SandboxBusy."""
        with self._between_calls():
            self._check_open()
            self._machine.load_cpu(cpu)
            self._state = _READY

    def watch_page_tables(self, ranges: list[tuple[int, int]]) -> None:
        """Names guest ranges through which the host maps memory for the guest: a reset
        that changes them flushes KVM's shadow MMU (see Machine.watch_page_tables)."""
        self._machine.watch_page_tables(ranges)

    def limit_reset_scan(self, ranges: list[tuple[int, int]] | None) -> None:
        """Names the only guest ranges in which a reset looks for written pages (None:
        all of the memory, the default): for hosts of guests that know where nothing can
        be written (the Wasm engine's pool of linear memory, reachable only through the
        windows the host maps). The caller promises that every page written since the
        memory was last equal to its image, and until the next call of this method, lies
        in them; a reset that maps another snapshot's memory forgets them."""
        self._machine.limit_reset_scan(ranges)

    def _between_calls(self) -> threading.Lock:
        """The call lock, refused at once (SandboxBusy) to a thread inside one of this
        sandbox's calls: it would wait for itself."""
        if self._caller == threading.get_ident():
            raise SandboxBusy(
                "the sandbox is in a call on this thread (a host function, output callback "
                "or import called back into its own sandbox)"
            )
        return self._lock

    def _check_open(self) -> None:
        """Raises SandboxClosed if the sandbox is closed, or closing: a close() from
        another thread waits for the lock the caller holds (the machine is released
        here, so that close finds it done). Under the lock."""
        if self._close_requested:
            self._release(deferred=True)
        if self._state == _CLOSED:
            raise SandboxClosed("the sandbox is closed")

    def _check_process(self) -> None:
        """Raises SandboxClosed (and closes the sandbox) in a forked child of the
        process that made it: KVM serves a VM only to the process that created it.
        Under the lock; on the paths where KVM failed or that are not hot (getpid is a
        system call: ~0.3 us)."""
        if self._machine.forked:
            self._release(deferred=True)  # the child's copies of its descriptors
            raise SandboxClosed(
                "the sandbox was made by the parent of this forked process, whose VM KVM "
                "refuses to run here; make a new sandbox in this process"
            )

    def _check_ready(self) -> None:
        self._check_open()
        if self._state != _READY:
            raise SandboxPoisoned(
                f"the sandbox is poisoned by an earlier {self._poison_reason}; "
                "restore it or create a new one"
            )

    # -- calls -----------------------------------------------------------------------

    def call(self, name: str | CallEncoder, *args: object, timeout: float | None = None) -> Value:
        """Calls the guest function `name` with `args` and returns its result. `name`
        may also be a CallEncoder made for one of the guest's functions: a layer that
        calls one function in fixed ways precomputes its records (the Wasm engine's
        per-export encoders, sandbox/wasm/abi.py); the guest still checks the record.

        Arguments are converted by the function's declared parameter types (int for
        i32/u32/i64/u64, float for f32/f64, bool, str, bytes). `timeout` (seconds,
        finite, at most a day) overrides the config's default limit.

        Raises FunctionNotFound, ArgumentError (wrong count, type or range; also a
        TypeError/ValueError), GuestAbort (the guest reported an error), GuestTrap (a CPU
        exception or malformed record; poisons), CallTimeout (poisons), CallCancelled
        (poisons), HostFunctionError (a host function raised), SandboxPoisoned,
        SandboxClosed, SandboxBusy (a call from inside one of its own calls).
        """
        # The hot path of the runtime: every line here is paid on every call.
        limit = check_timeout(timeout) if timeout is not None else self._default_timeout
        encoder = self._encoders.get(name) or self._encoder(name)
        me = _get_ident()
        if self._caller == me:
            self._between_calls()  # raises SandboxBusy
        with self._lock:
            if (
                self._state is not _READY
                or self._close_requested
                or (self._ran and self.reset_mode == "per_call")
            ):
                self._check_open()
                if self.reset_mode == "per_call" and self._ran:
                    self._restore(None)
                self._check_ready()
            encoder.encode(self._in_view, args)
            self._caller = me
            self._cancel_requested = False
            capture = self._capture
            if capture.used:
                capture.clear()
            self._in_call = True
            try:
                # The common case inline (one run, one RETURN, an OK result of the
                # declared type); _finish_call does everything else.
                if limit is None:
                    deadline, exit = None, self._run_vcpu(0)
                else:
                    deadline = time.monotonic() + limit
                    exit = self._run_vcpu(max(1, int(limit * 1e9)))
                self._ran = True
                if exit.kind is _RETURN:
                    self._in_call = False  # the guest is back in its loop
                    status, tag, value, output = decode_return(
                        self._out_view, exit.value, encoder.what
                    )
                    if output or capture.size:
                        capture.add(output, final=True)
                    if status == _OK and tag == encoder.ret:
                        return value
                    return self._result_error(encoder.sig, status, tag, value, None)
                return self._finish_call(encoder, limit, deadline, exit)
            except BaseException as exc:
                # A trap, a timeout, or anything that left the guest mid-call (an
                # exception from the output callback, Ctrl-C...): the guest cannot go on.
                if self._in_call or (isinstance(exc, SandboxError) and exc.poisons):
                    self._state = _POISONED
                    self._poison_reason = type(exc).__name__
                if isinstance(exc, KvmError):
                    self._check_process()
                raise
            finally:
                self._in_call = False
                self._caller = None
                if self._close_requested:
                    self._release(deferred=True)

    def _encoder(self, name: str | CallEncoder) -> CallEncoder:
        """The record encoder of function `name` (made once per snapshot and function),
        or `name` itself if it is an encoder of one of this guest's functions (checked
        once per snapshot). Kept in the snapshot's shared table while it has room
        (SHARED_ENCODERS_MAX: what callers pass cannot grow it without bound), else in
        this sandbox's own."""
        encoder = self._own_encoders.get(name)
        if encoder is not None:
            return encoder
        if isinstance(name, CallEncoder):
            sig = self.functions.get(name.sig.name)
            if sig is not name.sig and sig != name.sig:
                raise FunctionNotFound(f"the guest has no function {name.sig}")
            encoder = name
        else:
            sig = self.functions.get(name)
            if sig is None:
                if self._state == _CLOSED:
                    raise SandboxClosed("the sandbox is closed")
                raise FunctionNotFound(
                    f"the guest has no function {name!r} "
                    f"(it exports: {', '.join(sorted(self.functions))})"
                )
            index = list(self.functions).index(name)  # the guest's table order (elf.py)
            encoder = CallEncoder(sig, index)
        if len(self._encoders) < SHARED_ENCODERS_MAX:
            self._encoders[name] = encoder
        else:
            self._own_encoders[name] = encoder
        return encoder

    def _map_views(self) -> None:
        """The views of the call buffers, again after the memory was mapped anew."""
        memory, layout = self._machine.memory, self.layout
        self._in_view = memory.region(layout.in_buf, layout.in_size)
        self._out_view = memory.region(layout.out_buf, layout.out_size)
        self._reply_view = memory.region(layout.reply_buf, layout.reply_size)

    def _finish_call(
        self, encoder: CallEncoder, limit: float | None, deadline: float | None, exit: Exit
    ) -> Value:
        """The rest of a call whose first exit was not its result: host calls, output
        flushes, signals, the time limit, traps."""
        sig = encoder.sig
        out = self._out_view
        host_error: BaseException | None = None
        while True:
            kind = exit.kind
            if kind is _RETURN:
                self._in_call = False  # the guest is back in its loop
                status, tag, value, output = decode_return(out, exit.value, encoder.what)
                if output or self._capture.size:
                    self._capture.add(output, final=True)
                if status == _OK and tag == sig.ret and host_error is None:
                    return value
                return self._result_error(sig, status, tag, value, host_error)
            if kind is ExitKind.HOST_CALL or kind is ExitKind.PRINT:
                if kind is ExitKind.HOST_CALL:
                    host_error = self._host_call(out, exit.value) or host_error
                else:
                    self._capture.add(decode_result(out, exit.value, "print flush").output)
                if self._cancel_requested:  # by a host function or the output callback
                    raise CallCancelled(f"{encoder.label} was cancelled")
            elif kind is ExitKind.KICKED:
                if self._cancel_requested:
                    raise CallCancelled(f"{encoder.label} was cancelled")
                if deadline is not None and time.monotonic() >= deadline:
                    raise CallTimeout(f"{encoder.label} did not finish within {limit} s")
                # Neither: a kick meant for the call before this one (a cancel that
                # raced its end); the guest goes on where it stopped.
            elif kind is not ExitKind.INTERRUPTED:  # signals: Python's handlers ran
                raise decode_trap(exit, self.layout)
            timeout_ns = 0
            if deadline is not None:
                timeout_ns = max(1, int((deadline - time.monotonic()) * 1e9))
            exit = self._run_vcpu(timeout_ns)

    @staticmethod
    def _result_error(
        sig: Signature, status: int, tag: int, value: Value, host_error: BaseException | None
    ) -> NoReturn:
        """Raises what a result other than an OK value of the declared type means."""
        if host_error is not None and status in (Status.OK, Status.HOST_ERROR):
            raise HostFunctionError(
                f"a host function called by {sig.name} raised: {describe(host_error)}"
            ) from host_error
        if status == Status.OK:
            raise GuestProtocolError(f"{sig.name} returned tag {tag}, declared {sig}")
        if status == Status.ABORT:
            raise GuestAbort(str(value))
        if status == Status.NOT_FOUND:
            raise FunctionNotFound(f"the guest did not find its function {sig.name!r}")
        if status == Status.BAD_ARGS:
            raise ArgumentError(f"the guest rejected the arguments of {sig}")
        raise GuestProtocolError(f"{sig.name}: the guest answered with status {status}")

    def _host_call(self, out: memoryview, offset: int) -> BaseException | None:
        """Runs the host function the guest asked for and writes the reply. Returns the
        exception it raised (the guest is told to unwind), or None."""
        call = decode_call(out, offset)
        if call.output:
            self._capture.add(call.output)
        fn = self._host_functions.get(call.name)
        reply = self._reply_view
        try:
            if fn is None:
                raise LookupError(
                    f"the guest called host function {call.name!r}, which was not registered "
                    f"(registered: {', '.join(sorted(self._host_functions)) or 'none'})"
                )
            encode_result(reply, Status.OK, fn(*call.args))
            return None
        except Exception as exc:
            message = describe(exc).encode()[:HOST_ERROR_MESSAGE_MAX]
            encode_result(reply, Status.HOST_ERROR, message.decode(errors="ignore"))
            return exc
