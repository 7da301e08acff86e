"""WasmSandbox: Wasm modules run by the engine guest (guests/wasm/) inside the micro-VM.

The host reads and validates the module (wasmtime, see module.py), copies it into the
engine's heap, and the engine decodes, compiles and instantiates it in the VM. Calls go
through the engine's `wasm_invoke`; Wasm traps come back as replies (WasmTrap), and an
out-of-bounds memory access, which faults on the guard space of its memory window, is
turned into the same kind of reply by the host (it tells the engine with `wasm_fault`).
A Wasm trap does not poison the sandbox: the instance stays usable, as in wasmtime.

Several modules can live in one engine (the spec test runner uses `load`, `instantiate`,
`register`, `invoke` and `get` directly); `Sandbox.from_wasm` makes the common case of one
instance whose exports `call` reaches by name.

`call` is the hot path (docs/wasm.md, "The call path"): a precomputed record per export
(abi.InvokeEncoder), and resets told where pages can be written (windows.pool_reach).
Over 500 lines: one class adapts the engine to the Sandbox interface (lifecycle,
snapshots and resets, the engine's operations, its host calls, the call path), around
one state; splitting it would spread that state over several modules.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, Self, TypeVar

from ..abi import CallEncoder, Signature
from ..arguments import check_config, check_reset, check_timeout
from ..config import MiB, ResetMode, SandboxConfig
from ..errors import (
    ArgumentError,
    FunctionNotFound,
    GuestAbiMismatch,
    GuestProtocolError,
    GuestTrap,
    HostFunctionError,
    SandboxClosed,
    WasmEngineError,
    WasmLinkError,
    WasmTrap,
)
from ..layout import Layout
from ..sandbox import Sandbox
from .abi import (
    ENGINE_ABI_VERSION,
    HOST_GROW,
    HOST_IMPORT,
    MAX_MEMORIES,
    MISS,
    NO_MEMORY,
    WINDOW_BASE,
    WINDOW_STRIDE,
    InvokeEncoder,
    Reply,
    ValType,
    check_ok,
    decode_results,
    decode_values,
    encode_values,
    pack_values,
    parse_reply,
    reply_u32,
    to_python,
)
from .module import Export, FuncType, WasmModule, load
from .state import WASI_MODULE as WASI_MODULE
from .state import EngineState, Instance, WasiImport, WasmSnapshot, bind_imports
from .wasi import WasiContext, WasiExit
from .windows import LinearMemory, Windows, pool_reach

DEFAULT_CONFIG = SandboxConfig(memory_size=256 * MiB, heap_size=64 * MiB)
Imports = Mapping[str, Mapping[str, Callable[..., Any]]]

__all__ = [
    "WasmSandbox",
    "WasmSnapshot",
    "WasmTrap",
    "WasmLinkError",
    "WasmEngineError",
]


def wasm_config(config: SandboxConfig | None) -> SandboxConfig:
    if config is None:
        return DEFAULT_CONFIG
    config = check_config(config)
    if config.heap_size is None:
        # The engine's heap (modules, compiled code, tables, stacks); the memory above
        # it is the pool the linear memories are mapped from.
        heap = max(8 * MiB, config.memory_size // 4) & ~0xFFFFF
        config = config.model_copy(update={"heap_size": heap})
        SandboxConfig.model_validate(config.model_dump())
    return config


# By config and engine guest (None: the interpreter; else a compiled module's guest, see
# sandbox.wasm.aot): a started engine, no module.
_started: dict[tuple[SandboxConfig, tuple[str, int, int] | None], WasmSnapshot] = {}
_started_lock = threading.Lock()

_P = ParamSpec("_P")
_R = TypeVar("_R")


def weak_method(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """`method`, a bound method of an object, called through a weak reference to it.

    What a sandbox owns (its engine sandbox's host functions, its windows) calls back
    into the sandbox through these: a bound method held there would make a reference
    cycle, and a sandbox its caller dropped without close() would keep its VM (the KVM
    descriptors, the guest memory's mapping) until the cyclic garbage collector ran,
    instead of being released at once by reference counting, as a native Sandbox is.
    Called after the object is gone (nothing can: the engine runs only in its calls),
    it raises SandboxClosed."""
    ref = weakref.WeakMethod(method)

    def call(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        bound = ref()
        if bound is None:
            raise SandboxClosed("the sandbox was dropped")
        return bound(*args, **kwargs)

    return call


class WasmSandbox:
    """Wasm modules in the engine guest, in its own micro-VM: a `Sandbox` running the
    engine (held, not inherited: `engine_sandbox`) and the host's side of the engine's
    state. Make one with `Sandbox.from_wasm` (one module, instantiated) or
    `WasmSandbox.engine()` (empty, for several modules). It offers Sandbox's methods
    (call, snapshot, restore, cancel, close, ...) with Wasm semantics, and
    `isinstance(sb, Sandbox)` holds."""

    wasi: WasiContext | None
    # What from_wasm made: the snapshot taken right after instantiation, before any call
    # (what restore() returns to, and what Sandbox.from_snapshot spawns more of).
    instantiated: WasmSnapshot | None = None
    # The state of a new sandbox, as class defaults (a spawn sets only what differs).
    last_output = ""  # what the last call printed (WASI stdout or engine output)
    last_stderr = ""  # what a WASI program wrote to fd 2 in the last call
    _pending: Instance | None = None  # being instantiated
    _initial: WasmSnapshot | None = None
    _ran = False
    _close_pending = False
    _output_truncated = False

    def __init__(
        self,
        *,
        config: SandboxConfig | None = None,
        output: Callable[[str], None] | None = None,
        engine: str | os.PathLike[str] = "wasm",
    ) -> None:
        """A new engine VM with no module, started from scratch (`engine()` is faster).
        `engine` is the engine guest: the bundled one, or a path (the tests use a
        misbehaving one)."""
        self._setup(EngineState(), "none", None)
        self.engine_sandbox = Sandbox(
            engine,
            config=wasm_config(config),
            host_functions=self._engine_host_functions(),
            output=output,
        )
        try:
            self._check_abi()  # the first call also starts the engine's SDK
        except BaseException:
            self.engine_sandbox.close()
            raise
        memory = self.engine_sandbox.memory  # the guest's own start wrote below the pool
        self._attach_windows(pool_reach(self.engine_sandbox.layout, memory.image.read))

    def _check_abi(self) -> None:
        """Raises GuestAbiMismatch unless the engine speaks this host's engine ABI."""
        engine = self.engine_sandbox
        sig = engine.functions.get("wasm_abi_version")
        version = engine.call("wasm_abi_version") if sig is not None and not sig.params else None
        if version != ENGINE_ABI_VERSION:
            raise GuestAbiMismatch(
                f"{engine.guest_path} is not a Wasm engine of ABI version "
                f"{ENGINE_ABI_VERSION} (it reports {version!r})"
            )

    def _setup(
        self,
        state: EngineState,
        reset: ResetMode,
        wasi: WasiContext | None,
        *,
        shared: bool = False,
    ) -> None:
        """`shared`: `state` is a snapshot's, copied before the first change."""
        check_reset(reset)
        self._wasm = state
        self._wasm_shared = shared
        self.wasi = wasi
        self.reset_mode: ResetMode = reset
        # Held from start to end by every public method that runs the engine or reads or
        # changes its state (call, restore, snapshot, load, instantiate, make_main,
        # register, invoke, get): with reset="per_call", nothing from another thread can
        # come between a call's restore and its run (the call ran in the state the other
        # left). Not by close() and cancel(), which must reach a running call.
        # Reentrant: an import that calls back gets the engine's SandboxBusy, as before,
        # instead of waiting for itself.
        self._lock = threading.RLock()

    def _own_state(self) -> EngineState:
        """The engine state, to change: a snapshot's (shared since a restore or spawn) is
        copied first."""
        if self._wasm_shared:
            self._wasm = self._wasm.copy()
            self._wasm_shared = False
        return self._wasm

    def _engine_host_functions(self) -> dict[str, Callable[..., Any]]:
        # Weak: the engine sandbox is this sandbox's own (see weak_method).
        return {
            HOST_GROW: weak_method(self._host_grow),
            HOST_IMPORT: weak_method(self._host_import),
        }

    def _attach_windows(self, scan: list[tuple[int, int]] | None) -> None:
        """The host's side of the windows, and the reset scan's limits for memory equal
        to an image whose pool reaches `scan` (WasmSnapshot.scan_ranges)."""
        engine = self.engine_sandbox
        self._windows = Windows(engine.memory, engine.layout, weak_method(self._reach))
        engine.limit_reset_scan(scan)
        self._scan_target: WasmSnapshot | None = None  # the snapshot whose limits are set
        # The windows' page tables are watched (Sandbox.watch_page_tables) from the first
        # grow after a reset on: until then the host wrote none since the memory was
        # last equal to its image, and a reset needs neither to compare nor to flush.
        self._watching = False

    @classmethod
    def from_wasm_snapshot(
        cls,
        snap: WasmSnapshot,
        *,
        reset: ResetMode = "none",
        output: Callable[[str], None] | None = None,
    ) -> WasmSandbox:
        sb = cls.__new__(cls)
        config = snap.wasm_state.wasi_config
        wasi = WasiContext(config) if config else None
        sb._setup(snap.wasm_state, reset, wasi, shared=True)
        try:
            sb.engine_sandbox = Sandbox.from_snapshot(
                snap.base, host_functions=sb._engine_host_functions(), output=output
            )
        except BaseException:
            if sb.wasi is not None:
                sb.wasi.close()
            raise
        sb._initial = snap
        sb._attach_windows(snap.scan_ranges)
        sb._scan_target = snap
        sb.engine_sandbox.memory.prefault(snap.heap_pages)
        return sb

    # -- the Sandbox interface -----------------------------------------------------------

    @property
    def config(self) -> SandboxConfig:
        return self.engine_sandbox.config

    @property
    def layout(self) -> Layout:
        return self.engine_sandbox.layout

    @property
    def guest_path(self) -> str:
        return self.engine_sandbox.guest_path

    @property
    def functions(self) -> Mapping[str, Signature]:
        """The engine guest's functions (the module's are in `exports`)."""
        return self.engine_sandbox.functions

    @property
    def closed(self) -> bool:
        return self.engine_sandbox.closed

    @property
    def poisoned(self) -> bool:
        return self.engine_sandbox.poisoned

    @property
    def last_output_truncated(self) -> bool:
        """Whether the last call's output (WASI stdout/stderr, or the engine's) was cut
        at its limit."""
        return self._output_truncated or self.engine_sandbox.last_output_truncated

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def cancel(self) -> None:
        """Stops the call running in another thread (see Sandbox.cancel), a WASI sleep
        in it included (that runs on the host, where the vCPU kick does not reach)."""
        if self.wasi is not None:
            self.wasi.interrupt()
        self.engine_sandbox.cancel()

    def close(self) -> None:
        """Releases the VM and the WASI context's host descriptors. Idempotent. From
        inside a call (an import), both are released when the call ends; a call running
        in another thread is cancelled first, a WASI sleep in it included (see cancel:
        the engine's close alone would wait for the sleep to end)."""
        engine = self.engine_sandbox
        if self.wasi is not None and not engine.closed and not engine.calling_here:
            self.wasi.interrupt()  # no call running: the next call's start drops it
        engine.close()
        if not self.engine_sandbox.closed:
            self._close_pending = True  # closed from inside a call: see call()
        elif self.wasi is not None:
            self.wasi.close()

    def snapshot(self) -> WasmSnapshot:
        """Captures the sandbox between calls, with the host's side of the engine state
        (see WasmSnapshot)."""
        with self._lock:
            return WasmSnapshot(self.engine_sandbox.snapshot(), self._wasm.copy(), type(self))

    def restore(self, snapshot: WasmSnapshot | None = None) -> None:
        """Returns the sandbox to `snapshot` (default: the state from_wasm instantiated,
        or the engine's start) and clears poisoning (see Sandbox.restore)."""
        with self._lock:
            self._restore(snapshot)

    def _restore(self, snapshot: WasmSnapshot | None) -> None:
        if snapshot is not None and not isinstance(snapshot, WasmSnapshot):
            raise ArgumentError(
                f"a Wasm sandbox restores a WasmSnapshot, not {type(snapshot).__name__}"
            )
        target = snapshot if snapshot is not None else self._initial
        if target is None:
            self.engine_sandbox.restore()
            self._wasm = EngineState(wasi_config=self._wasm.wasi_config)
            self._wasm_shared = False
            self.engine_sandbox.limit_reset_scan(None)
            self._scan_target = None
        else:
            self.engine_sandbox.restore(target.base)
            self._wasm = target.wasm_state  # copied before the first change
            self._wasm_shared = True
            if self._scan_target is not target:  # another state, or a grow since
                self.engine_sandbox.limit_reset_scan(target.scan_ranges)
                self._scan_target = target
        if self._watching:  # the memory is its image again (flushed if it had to be)
            self.engine_sandbox.watch_page_tables([])
            self._watching = False
        self._ran = False

    @classmethod
    def engine(
        cls,
        *,
        config: SandboxConfig | None = None,
        output: Callable[[str], None] | None = None,
        guest: str | os.PathLike[str] | None = None,
    ) -> WasmSandbox:
        """An engine with no module loaded (see load/instantiate/invoke), made from a
        snapshot of a started engine (taken once per process, config and guest), so that
        it costs a new VM, not the engine's start-up. `guest`: the engine guest, default
        the interpreter; the AOT tier passes a compiled module's guest."""
        config = wasm_config(config)
        file: tuple[str, int, int] | None = None
        if guest is not None:  # a file replaced in place is a new guest (as for templates)
            try:
                st = os.stat(guest)
                file = (os.fspath(guest), st.st_mtime_ns, st.st_size)
            except OSError:  # Sandbox() below raises the error for it
                file = (os.fspath(guest), 0, 0)
        key = (config, file)
        with _started_lock:
            snap = _started.get(key)
            if snap is None:
                first = WasmSandbox(config=config, engine=guest if guest is not None else "wasm")
                try:
                    first._note_rewind()
                    snap = _started[key] = first.snapshot()
                finally:
                    first.close()
        return cls.from_wasm_snapshot(snap, output=output)

    # -- the engine's operations -----------------------------------------------------

    def _engine_call(
        self, what: str, name: str, *args: object, timeout: float | None = None
    ) -> Reply:
        return parse_reply(self._engine_raw(name, *args, timeout=timeout), what)

    def _engine_raw(
        self, name: str | CallEncoder, *args: object, timeout: float | None = None
    ) -> object:
        """What the engine answered (a reply, unchecked), the reply of wasm_fault when
        the operation faulted on a window or (a compiled guest) on its stack guard."""
        try:
            return self.engine_sandbox.call(name, *args, timeout=timeout)
        except GuestTrap as trap:
            return self._fault_reply(trap)

    def _fault_reply(self, trap: GuestTrap) -> object:
        """The engine's reply to a trap of the operation it was running: wasm_fault's if
        it faulted on a window or (a compiled guest) on its stack guard; else re-raised."""
        if not (self._is_window_fault(trap) or self._is_native_stack_overflow(trap)):
            raise trap
        assert self._wasm.rewind is not None
        engine = self.engine_sandbox
        engine.recover(self._wasm.rewind)
        return engine.call("wasm_fault", trap.address or 0)

    def _note_rewind(self) -> None:
        """Keeps the registers of a state between calls, once (to resume after a fault)."""
        if self._wasm.rewind is None:
            self._own_state().rewind = self.engine_sandbox.cpu_state()

    def _is_native_stack_overflow(self, trap: GuestTrap) -> bool:
        """A stack overflow of a compiled module's guest (sandbox.wasm.aot): its Wasm
        calls are native calls, so deep recursion ends on the stack guard, and the guest
        reports it as "call stack exhausted" (the interpreter engine never recurses)."""
        return (
            trap.kind == "stack_overflow"
            and self._wasm.rewind is not None
            and "aot_module_id" in self.engine_sandbox.functions
        )

    def _is_window_fault(self, trap: GuestTrap) -> bool:
        return (
            trap.kind == "page_fault"
            and trap.address is not None
            and WINDOW_BASE <= trap.address < WINDOW_BASE + MAX_MEMORIES * WINDOW_STRIDE
            and self._wasm.rewind is not None
        )

    def load(self, module: WasmModule | bytes | str | os.PathLike[str]) -> tuple[int, WasmModule]:
        """Validates (unless given a WasmModule), copies and compiles a module in the
        engine; returns its handle and the module. Raises WasmModuleError."""
        if not isinstance(module, WasmModule):
            module = load(module)
        with self._lock:
            engine = self.engine_sandbox
            compiled = "aot_module_id" in engine.functions  # a guest of sandbox.wasm.aot
            if compiled and module.sha256 not in str(engine.call("aot_module_id")).split(","):
                raise GuestAbiMismatch(
                    f"{self.guest_path} is the compiled guest of another module (modules loaded "
                    "into one engine are compiled together: sandbox.wasm.aot.compile_modules)"
                )
            size = len(module.data)
            addr = self.engine_sandbox.call("wasm_alloc", size)
            self._note_rewind()
            heap = self.layout.heap_base, self.layout.heap_base + self.layout.heap_size
            if not isinstance(addr, int) or addr == 0:
                raise WasmEngineError(f"the engine has no room for a module of {size} bytes")
            if not heap[0] <= addr <= heap[1] - size:
                raise GuestProtocolError(f"wasm_alloc returned 0x{addr:x}, outside the engine heap")
            self.engine_sandbox.memory.write(addr, module.data)
            reply = self._engine_call("wasm_load", "wasm_load", addr, size)
            check_ok(reply, "wasm_load")
            return reply_u32(reply, "wasm_load"), module

    def instantiate(
        self,
        handle: int,
        module: WasmModule,
        host_imports: Mapping[tuple[str, str], Callable[..., Any]] | None = None,
        *,
        timeout: float | None = None,
    ) -> int:
        """Instantiates a loaded module. Function imports of modules the engine does not
        know (not registered, not "spectest") are bound to `host_imports[(module, name)]`.
        `timeout` bounds the start function (default: the config's). Raises
        WasmLinkError, WasmTrap (from the start function or segment initialisation),
        WasmEngineError, CallTimeout."""
        with self._lock:
            bound = bind_imports(module, self._wasm.registered, self.wasi is not None, host_imports)
            instance = Instance(module, bound)
            self._pending = instance
            try:
                reply = self._engine_call(
                    "wasm_instantiate", "wasm_instantiate", handle, timeout=timeout
                )
            finally:
                self._pending = None
            check_ok(reply, "wasm_instantiate")
            handle = reply_u32(reply, "wasm_instantiate")
            self._own_state().instances[handle] = instance
            return handle

    def make_main(self, instance: int, reset: ResetMode) -> None:
        """Makes `instance` the one `call` reaches, takes the state now as the one
        restore() returns to (`instantiated`), and sets the reset mode (from_wasm)."""
        with self._lock:
            state = self._own_state()
            state.main = instance
            state.wasi_config = self.wasi.config if self.wasi is not None else None
            self._initial = self.instantiated = self.snapshot()
            self.reset_mode = reset
            self._ran = False

    def register(self, instance: int, name: str) -> None:
        """Makes an instance's exports importable under module name `name`."""
        with self._lock:
            check_ok(
                self._engine_call("wasm_register", "wasm_register", instance, name), "wasm_register"
            )
            self._own_state().registered.add(name)

    def invoke(
        self,
        instance: int,
        name: str,
        args: list[tuple[ValType, int]],
        *,
        timeout: float | None = None,
    ) -> list[tuple[ValType, int]]:
        """Calls an export with raw (type, bits) arguments; returns raw results. Like
        `call`, it changes the state a reset="per_call" call starts from, so the next
        call restores first."""
        data = pack_values(args)
        with self._lock:
            self._ran = True
            reply = self._engine_call(name, "wasm_invoke", instance, name, data, timeout=timeout)
            check_ok(reply, name)
            return decode_values(reply.payload, f"results of {name}")

    def get(self, instance: int, name: str) -> tuple[ValType, int]:
        """The value of an exported global."""
        with self._lock:
            reply = self._engine_call(name, "wasm_get", instance, name)
            check_ok(reply, name)
            values = decode_values(reply.payload, f"global {name}")
            if len(values) != 1:
                raise GuestProtocolError(f"global {name}: {len(values)} values")
            return values[0]

    def memory(self, window: int) -> LinearMemory:
        """Host access to the engine's memory number `window`."""
        return LinearMemory(self._windows, window)

    # -- host calls from the engine --------------------------------------------------

    def _reach(self, ranges: list[tuple[int, int]] | None) -> None:
        """Windows.grow is about to write up to `ranges`: the resets search them."""
        self.engine_sandbox.limit_reset_scan(ranges)
        self._scan_target = None

    def _host_grow(self, window: object, pages: object) -> bool:
        if not self._watching:  # before anything is written (see _attach_windows)
            self.engine_sandbox.watch_page_tables(self._windows.watch)
            self._watching = True
        return self._windows.grow(window, pages)

    def _host_import(
        self, instance: object, index: object, args: object, window: object = NO_MEMORY
    ) -> bytes:
        inst = self._wasm.instances.get(instance) if isinstance(instance, int) else None
        if inst is None:
            inst = self._pending
        if inst is None or not isinstance(index, int) or not 0 <= index < len(inst.host_imports):
            raise GuestProtocolError(
                f"host import {index!r} of instance {instance!r} does not exist"
            )
        fn = inst.host_imports[index]
        imp = inst.module.func_imports[index]
        if fn is None or not isinstance(args, bytes):
            raise GuestProtocolError(f"{imp.module}.{imp.name} is not a host import")
        ft = imp.type
        assert isinstance(ft, FuncType)
        values = decode_values(args, f"arguments of {imp.module}.{imp.name}")
        if [t for t, _ in values] != list(ft.params):
            raise GuestProtocolError(f"{imp.module}.{imp.name} called with wrong argument types")
        result: Any
        if isinstance(fn, WasiImport):
            if self.wasi is None:
                raise GuestProtocolError(f"{imp.module}.{imp.name}: the sandbox has no WASI")
            memory = (
                self.memory(window) if isinstance(window, int) and window != NO_MEMORY else None
            )
            result = self.wasi.functions[imp.name].call(
                memory, *[to_python(t, b) for t, b in values]
            )
        else:
            result = fn(*[to_python(t, b) for t, b in values])
        results: tuple[object, ...]
        if len(ft.results) == 0:
            results = ()
        elif len(ft.results) == 1:
            results = (result,)
        else:
            results = tuple(result)
        return encode_values(
            ft.results, results, f"result of host function {imp.module}.{imp.name}"
        )

    # -- one module: from_wasm -------------------------------------------------------

    @property
    def module(self) -> WasmModule:
        """The module made by from_wasm."""
        if self._wasm.main is None:
            raise WasmEngineError("this engine sandbox was not made by from_wasm")
        return self._wasm.instances[self._wasm.main].module

    @property
    def exports(self) -> Mapping[str, Export]:
        """The exports of the module made by from_wasm, by name."""
        if self._wasm.main is None:
            return {}
        return self._wasm.instances[self._wasm.main].module.exports

    def call(self, name: str, *args: object, timeout: float | None = None) -> Any:
        """Calls an exported function of the module: arguments are converted by its
        signature (int for i32/i64, float for f32/f64, None or int for references, an
        unsigned 128-bit int for v128, lane 0 in the low bits);
        returns None, the one result, or a tuple of results. Raises WasmTrap (does not
        poison), FunctionNotFound, ArgumentError, HostFunctionError (an import raised),
        WasiExit (the program called proc_exit), CallTimeout (poisons), SandboxClosed.
        With WASI output captured, `last_output` and `last_stderr` hold what the call
        wrote to fd 1 and fd 2 (`wasi.stdout`/`wasi.stderr` all of it, except that with
        reset="per_call" each call starts with empty captures)."""
        with self._lock:
            return self._call(name, args, timeout)

    def _call(self, name: str, args: tuple[object, ...], timeout: float | None) -> Any:
        handle = self._wasm.main
        if handle is None:  # an engine without a module: the engine's own functions
            return self.engine_sandbox.call(name, *args, timeout=timeout)
        inst = self._wasm.instances[handle]
        encoder = inst.invokers.get(name) or self._invoker(handle, inst, name)
        wasi = self.wasi
        if self.reset_mode == "per_call":
            if self._ran:
                self._restore(None)
            if wasi is not None:
                wasi.clear_output()  # fresh state: the last call's output is gone too
        if wasi is None:
            # No WASI (the common case): no output marks, no deadline for host sleeps.
            engine = self.engine_sandbox
            self._ran = True
            data: object
            try:
                if timeout is None:
                    data = engine.call(encoder, *args)
                else:
                    data = engine.call(encoder, *args, timeout=timeout)
            except GuestTrap as trap:
                data = self._fault_reply(trap)
            finally:
                self.last_output = engine.last_output
                if self._close_pending and engine.closed:
                    self._close_pending = False
        else:
            data = self._call_wasi(wasi, encoder, args, timeout)
        if isinstance(data, bytes):
            value = encoder.result(data)
            if value is not MISS:
                return value
        return decode_results(encoder, data, name)

    def _invoker(self, handle: int, inst: Instance, name: str) -> InvokeEncoder:
        """The call encoder of export `name` of the instance `inst` (made once per export
        and instance; FunctionNotFound if there is no such exported function)."""
        export = inst.module.exports.get(name)
        if export is None or export.kind != "func":
            funcs = sorted(n for n, e in inst.module.exports.items() if e.kind == "func")
            raise FunctionNotFound(
                f"the module exports no function {name!r} (it exports: {', '.join(funcs)})"
            )
        ft = export.type
        assert isinstance(ft, FuncType)
        functions = self.engine_sandbox.functions
        sig = functions.get("wasm_invoke")
        if sig is None:
            raise GuestAbiMismatch(f"{self.guest_path} has no wasm_invoke")
        index = list(functions).index("wasm_invoke")
        encoder = inst.invokers[name] = InvokeEncoder(
            sig, index, handle, name, ft.params, ft.results
        )
        return encoder

    def _call_wasi(
        self,
        wasi: WasiContext,
        encoder: InvokeEncoder,
        args: tuple[object, ...],
        timeout: float | None,
    ) -> object:
        """A call of a module with WASI: the call's output captured, its limit applied to
        WASI sleeps (host code), proc_exit raised as WasiExit."""
        limit = check_timeout(timeout) if timeout is not None else self.config.timeout
        marks = wasi.output_marks()
        # A WASI sleep is host code: the call's limit must end it too.
        wasi.set_deadline(None if limit is None else time.monotonic_ns() + int(limit * 1e9))
        self._ran = True
        try:
            return self._engine_raw(encoder, *args, timeout=timeout)
        except HostFunctionError as exc:
            if isinstance(exc.__cause__, WasiExit):
                raise exc.__cause__ from None
            raise
        finally:
            wasi.set_deadline(None)
            out, err = wasi.output_since(marks)
            self.last_output = out.decode(errors="replace")
            self.last_stderr = err.decode(errors="replace")
            self._output_truncated = any(wasi.output_truncated_since(marks))
            if self._close_pending and self.engine_sandbox.closed:
                self._close_pending = False
                wasi.close()

    def run(self, *, timeout: float | None = None) -> int:
        """Runs a WASI command (its `_start` export) and returns its exit code: 0 when
        `_start` returns, the code given to proc_exit otherwise."""
        try:
            self.call("_start", timeout=timeout)
        except WasiExit as exit:
            return exit.code
        return 0


Sandbox.register(WasmSandbox)
