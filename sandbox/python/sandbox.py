"""`PythonSandbox`: Python functions run by CPython for WASI in the Wasm engine guest,
inside the micro-VM. `PythonSnapshot` makes more of them.

A PythonSandbox holds a `WasmSandbox` spawned from the snapshot of an initialised
interpreter (interpreter.py) and uses only its public API: it writes a request into the
guest runtime's mailbox in linear memory, makes one engine call (the module's appended
`call`, which runs the runtime's `_serve`), and reads the reply from the same place.
Host functions reach the host through one intercepted WASI call (fd_seek of stdin to a
reserved offset) with their data in the mailbox, and output streams out
through fd_write when the guest flushes it (the rest comes with the reply).

Errors: what guest code raises is a PythonError (not poisoning); a Wasm trap inside the
interpreter, os._exit, a protocol violation are a PythonCrash/PythonExit that poison;
time limits and cancels are the core's CallTimeout/CallCancelled (poisoning). A poisoned
sandbox is restored by `restore()`, and by itself before the next call with
reset="per_call".

Over ~500 lines for one concept: the request path, its error mapping, output capture and
host calls all read and write one call's state (the mailbox, the host error, the
outputs, the poisoning), which split into modules would be reached across them.
"""

from __future__ import annotations

import codecs
import functools
import os
import struct
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Self

from .. import machines
from ..arguments import check_host_functions, check_reset, check_timeout, describe
from ..config import ResetMode, SandboxConfig
from ..errors import (
    ArgumentError,
    CallCancelled,
    CallTimeout,
    FunctionNotFound,
    GuestAbort,
    GuestProtocolError,
    GuestTrap,
    HostFunctionError,
    PythonCrash,
    PythonError,
    PythonExit,
    SandboxBusy,
    SandboxClosed,
    SandboxPoisoned,
    SnapshotError,
    WasmEngineError,
    WasmTrap,
)
from ..sandbox import Sandbox
from ..wasm import ValType, WasiExit, WasmSandbox
from ..wasm.aot import Tier, check_tier
from ..wasm.state import WasmSnapshot
from ..wasm.wasi import Errno, Preopen, WasiFunction
from . import codec, saved
from .build import CALL_EXPORT
from .interpreter import (
    HOST_SEEK,
    Addresses,
    Template,
    python_config,
    template,
    wasi_config,
)
from .packages import PACKAGES_GUEST_PATH, resolve

if TYPE_CHECKING:
    from .shipping import Shipped

_LENGTH = struct.Struct("<I")
HOST_ERROR_MAX = 2000  # characters of a host function's error passed to the guest
SPARE_WARMUP_TIMEOUT = 0.5  # seconds: a call that warms a spare machine (machines.py)
SPARE_WARMUP_CALLS = 3  # each from the snapshot, each with its own random seed
LOAD_PROBE_TIMEOUT = 10.0  # seconds: load_snapshot's request to the state it read
MAX_BASES = 8  # per snapshot: states with a function compiled (reset="per_call", _fresh)
# (id(template), the caller's directories) -> the template's own state as a
# PythonSnapshot whose sandboxes get those directories, so that the sandboxes made with
# them share `bases`; the most recently used MAX_INITIALS (the templates are kept for
# the process, and an initial state holds its template).
_initials: OrderedDict[tuple[int, tuple[Preopen, ...]], PythonSnapshot] = OrderedDict()
_initials_lock = threading.Lock()
MAX_INITIALS = 64


class PythonSnapshot:
    """A Python sandbox between calls: the engine's WasmSnapshot (`wasm`) and what the
    host knows of the interpreter. `spawn` (and `Sandbox.from_snapshot`) makes new
    sandboxes in this state; `save` writes it to a file that `load_snapshot` reads in
    another process."""

    def __init__(self, wasm: WasmSnapshot, tmpl: Template, known: frozenset[str]) -> None:
        self.wasm = wasm
        self.template = tmpl
        self.known = known  # keys of the shipped functions defined in this state
        # Function key -> this state with that function compiled (reset="per_call":
        # PythonSandbox._fresh), at most MAX_BASES. Per snapshot: a state derived from
        # another snapshot must never be where a call of this one starts.
        self.bases: dict[str, PythonSnapshot] = {}
        warm = functools.partial(_warm_spare, weakref.ref(wasm), weakref.ref(tmpl), known)
        machines.warm_spares_with(wasm.base.image, warm)

    @property
    def config(self) -> SandboxConfig:
        return self.wasm.config

    def spawn(
        self,
        *,
        host_functions: Mapping[str, Callable[..., Any]] | None = None,
        output: Callable[[str], None] | None = None,
        reset: ResetMode = "none",
    ) -> PythonSandbox:
        """A new PythonSandbox in this state (a new VM mapping it copy-on-write)."""
        return PythonSandbox._spawn(self, host_functions, output, reset)

    def save(self, path: str | os.PathLike[str], *, key: bytes | str | None = None) -> None:
        """Writes this state to `path` (atomic, checksummed; authenticated with `key` or
        $SANDBOX_SNAPSHOT_KEY, as Snapshot.save): the interpreter with everything calls
        left in it (imports, globals, the functions it was sent), for
        `sandbox.python.load_snapshot` in any process (sandbox/python/saved.py). Host
        functions and output callbacks are not part of it: `spawn` takes them."""
        self.wasm.save(path, key=key, labels=saved.labels(self.template, self.known))


class PythonSandbox:
    """Python code in its own micro-VM. Make one with `Sandbox("python", ...)`.

    `config`: the VM (default 256 MiB, 64 MiB of it the engine heap; the rest bounds the
    interpreter's memory: MemoryError beyond it; `timeout` the default time limit).
    `host_functions`: callables guest code reaches as `sandbox_guest.host.NAME(...)`.
    `packages`: pure-Python wheels (paths) or requirement strings, installed on the host
    and imported into the interpreter's snapshot. `preopens`: host directories the guest
    may use (`Preopen(host_path, guest_path, read_only=True)`; none by default).
    `reset="per_call"`: every call starts from the state the sandbox started in.
    `output`: receives what guest code prints (stdout and stderr) as it comes.
    `tier`: what runs the interpreter (docs/python.md "Tiers"): "interp" (the default)
    the Wasm engine; "aot" CPython compiled to native code (sandbox.wasm.aot; the first
    use on a machine compiles it: minutes, then cached on disk); "auto" the compiled
    guest if it is cached, else the engine now and a compile in the background for the
    sandboxes made after it. `tier` (the property) says which one this sandbox got.
    """

    def __init__(
        self,
        *,
        config: SandboxConfig | None = None,
        host_functions: Mapping[str, Callable[..., Any]] | None = None,
        packages: Sequence[object] | None = None,
        reset: ResetMode = "none",
        output: Callable[[str], None] | None = None,
        preopens: Sequence[Preopen] | None = None,
        tier: Tier = "interp",
    ) -> None:
        self._wasm: WasmSandbox | None = None
        config = python_config(config)
        check_reset(reset)
        functions = check_host_functions(host_functions)
        opens = _check_preopens(preopens)
        tmpl = template(config, resolve(packages), opens, check_tier(tier))
        self._setup(_initial(tmpl, opens), functions, output, reset)

    @classmethod
    def _spawn(
        cls,
        snap: PythonSnapshot,
        host_functions: Mapping[str, Callable[..., Any]] | None,
        output: Callable[[str], None] | None,
        reset: ResetMode,
    ) -> PythonSandbox:
        check_reset(reset)
        functions = check_host_functions(host_functions)
        sb = cls.__new__(cls)
        sb._wasm = None
        sb._setup(snap, functions, output, reset)
        return sb

    def _setup(
        self,
        initial: PythonSnapshot,
        host_functions: dict[str, Callable[..., Any]],
        output: Callable[[str], None] | None,
        reset: ResetMode,
    ) -> None:
        tmpl = initial.template
        self._initial = initial
        self._addr: Addresses = tmpl.addresses
        self._packages = frozenset(tmpl.packages.modules if tmpl.packages else ())
        self._host_functions = host_functions
        self._output = output
        self.reset_mode: ResetMode = reset
        self._known: set[str] = set(initial.known)
        self._base = initial  # the snapshot the sandbox was last restored to
        self._broken = ""  # why the interpreter is unusable until a restore
        self._ran = False
        self._lock = threading.Lock()
        self._caller: int | None = None
        self._host_error: BaseException | None = None
        self._decoders = [codecs.getincrementaldecoder("utf-8")("replace") for _ in range(2)]
        self.last_output = ""
        self.last_stderr = ""
        self.last_output_truncated = False
        wasm = initial.wasm.spawn()
        self._wasm = wasm
        self._memory = wasm.memory(0)
        self._default_timeout = wasm.config.timeout
        a = self._addr
        self._call_args = [(ValType.I32, x) for x in (a.call, a.serve, a.empty_tuple, 0)]
        self._hook_wasi()

    def _hook_wasi(self) -> None:
        """Serves the runtime's host calls and streams output: the WASI context's fd_seek
        and fd_write, wrapped (the rest of WASI is untouched). The wrappers reach this
        sandbox through a weak reference and hold nothing of the context: the context
        is the sandbox's own (through the engine sandbox), and either would make a
        cycle that keeps a sandbox dropped without close(), and its VM, alive until the
        cyclic garbage collector runs."""
        wasi = self._engine.wasi
        assert wasi is not None
        table = dict(wasi.functions)
        seek, write = table["fd_seek"], table["fd_write"]
        me = weakref.ref(self)

        def fd_seek(memory: Any, fd: int, offset: int, whence: int, result: int) -> int:
            if fd & 0xFFFFFFFF != 0 or offset & 0xFFFFFFFFFFFFFFFF != HOST_SEEK:
                return seek.call(memory, fd, offset, whence, result)
            sb = me()
            if sb is None:  # nothing runs the guest once the sandbox is gone
                raise SandboxClosed("the sandbox was dropped")
            sb._serve_host_call()
            return write_u64(memory, result, 0)

        def fd_write(memory: Any, fd: int, iovs: int, count: int, nwritten: int) -> int:
            sb = me()
            if sb is None or sb._output is None or fd & 0xFFFFFFFF not in (1, 2):
                return write.call(memory, fd, iovs, count, nwritten)
            context = sb._engine.wasi  # not `wasi`: the context holds this function
            assert context is not None
            marks = context.output_marks()
            errno = write.call(memory, fd, iovs, count, nwritten)
            out, err = context.output_since(marks)
            sb._stream(out, 0)
            sb._stream(err, 1)
            return errno

        table["fd_seek"] = WasiFunction(seek.params, seek.results, fd_seek)
        table["fd_write"] = WasiFunction(write.params, write.results, fd_write)
        wasi.functions = table

    # -- the Sandbox interface -----------------------------------------------------------

    @property
    def _engine(self) -> WasmSandbox:
        if self._wasm is None:
            raise SandboxClosed("the sandbox is closed")
        return self._wasm

    @property
    def config(self) -> SandboxConfig:
        return self._engine.config

    @property
    def wasm_sandbox(self) -> WasmSandbox:
        """The engine sandbox running the interpreter."""
        return self._engine

    @property
    def tier(self) -> Literal["interp", "aot"]:
        """What runs the interpreter: "interp" (the Wasm engine) or "aot" (compiled)."""
        return self._initial.template.tier

    @property
    def python_version(self) -> str:
        """The guest interpreter's version ("3.12.0")."""
        return self._initial.template.build.version

    @property
    def closed(self) -> bool:
        return self._wasm is None or self._wasm.closed

    @property
    def poisoned(self) -> bool:
        return bool(self._broken) or (self._wasm is not None and self._wasm.poisoned)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Releases the VM (see Sandbox.close). Idempotent."""
        if self._wasm is not None:
            self._wasm.close()

    def cancel(self) -> None:
        """Stops the call running in another thread (CallCancelled; poisons)."""
        if self._wasm is not None:
            self._wasm.cancel()

    def snapshot(self) -> PythonSnapshot:
        """The sandbox's state between calls (its interpreter, its globals, the functions
        it was sent), for `restore` or `spawn`."""
        if self._caller == threading.get_ident():
            raise SandboxBusy("snapshot() from inside one of this sandbox's calls")
        with self._lock:
            self._check_usable()
            return PythonSnapshot(
                self._engine.snapshot(), self._initial.template, frozenset(self._known)
            )

    def restore(self, snapshot: PythonSnapshot | None = None) -> None:
        """Returns to `snapshot` (default: the state the sandbox started in) and clears
        poisoning. Costs in proportion to the pages written since."""
        if snapshot is not None and not isinstance(snapshot, PythonSnapshot):
            raise ArgumentError(f"restore() takes a PythonSnapshot, not {type(snapshot).__name__}")
        if self._caller == threading.get_ident():
            raise SandboxBusy("restore() from inside one of this sandbox's calls")
        with self._lock:
            self._restore(
                snapshot or (self._base if self.reset_mode == "per_call" else self._initial)
            )

    def _restore(self, snap: PythonSnapshot) -> None:
        tmpl = self._initial.template
        theirs = snap.template
        if (
            theirs.addresses != self._addr
            or theirs.tier != tmpl.tier
            or theirs.settings != tmpl.settings
        ):
            raise ArgumentError(
                "the snapshot is of another interpreter (or of one started with other "
                "packages or directories)"
            )
        self._engine.restore(snap.wasm)
        self._base = snap
        self._known = set(snap.known)
        self._broken = ""
        self._ran = False

    def _fresh(self, request: tuple[Any, ...] | None) -> None:
        """reset="per_call": the state for this call. A shipped function is compiled once
        per process and interpreter settings, in a fresh interpreter, and that state is
        snapshotted: its later calls restore to it, so they pay neither the
        compilation nor its page faults. Nothing of the function ran in that state. The
        states are kept per initial snapshot (`PythonSnapshot.bases`): sandboxes made from
        one snapshot share them, and never with sandboxes of another."""
        base = self._initial
        if request is not None:
            key = str(request[1])
            bases = base.bases
            found = bases.get(key)
            if found is None:
                if self._ran or self.poisoned or self._base is not base:
                    self._restore(base)
                definition = (5, key, request[2])
                reply = self._exchange(definition, self._default_timeout, definition)
                if reply[0] != 0:
                    self._result(reply)  # raises the definition's error
                found = PythonSnapshot(
                    self._engine.snapshot(), base.template, frozenset({*base.known, key})
                )
                if len(bases) >= MAX_BASES:
                    bases.pop(next(iter(bases)))
                bases[key] = found
                self._base, self._known, self._ran = found, set(found.known), False
            base = found
        if self._ran or self.poisoned or self._base is not base:
            self._restore(base)

    def _check_usable(self) -> None:
        if self.closed:
            raise SandboxClosed("the sandbox is closed")
        if self.poisoned:
            why = self._broken or "an earlier call that did not end normally"
            raise SandboxPoisoned(f"the sandbox is poisoned by {why}; restore it or make a new one")

    # -- calls ---------------------------------------------------------------------------

    def call(self, fn: Callable[..., Any] | str, /, *args: Any, timeout: float | None = None,
             **kwargs: Any) -> Any:  # fmt: skip
        """Runs `fn(*args, **kwargs)` in the guest and returns its result.

        `fn` is a function defined with def on the host (its source and what it refers
        to go to the guest: see sandbox.python.shipping) or the name of a function
        defined in the sandbox by earlier `run` code. Arguments and the result travel
        through the codec (None, bool, int, float, str, bytes, list, tuple, dict, set,
        frozenset). `timeout` (seconds) overrides the config's limit; it is the
        sandbox's own keyword (use `invoke` to pass a keyword argument of that name).

        Raises PythonError (guest code raised; .type_name, .message, .guest_traceback),
        PythonExit (SystemExit), ArgumentError (something cannot be sent),
        FunctionNotFound, HostFunctionError, PythonCrash, CallTimeout, CallCancelled
        (the last three poison), SandboxPoisoned, SandboxClosed, SandboxBusy.
        """
        return self.invoke(fn, args, kwargs, timeout=timeout)

    def invoke(
        self,
        fn: Callable[..., Any] | str | Shipped,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Any:
        """`call` with the arguments as a sequence and a mapping. `fn` may also be a
        function shipped already (`shipping.ship(fn)`, on a machine that has its
        source)."""
        tree_args = codec.encode_args("the arguments", list(args))
        if kwargs and not all(isinstance(k, str) for k in kwargs):
            raise ArgumentError("keyword argument names must be str")
        tree_kwargs = codec.encode_args("the keyword arguments", dict(kwargs or {}))
        if isinstance(fn, str):
            return self._request((2, fn, tuple(tree_args), tree_kwargs or None), timeout)
        from .shipping import Shipped, ship  # inspect, dis, ast: imported on first use

        # A function shipped already (by a caller on another machine: the Ray cluster
        # pool ships on the caller's side, where the source is) goes as it is.
        shipped = fn if isinstance(fn, Shipped) else ship(fn, packages=self._packages)
        request = (1, shipped.key, shipped.payload, tuple(tree_args), tree_kwargs or None)
        return self._request(request, timeout, shipped.key)

    def run(self, code: str, *, timeout: float | None = None, filename: str = "<sandbox>") -> Any:
        """Runs Python source `code` in the sandbox's main namespace (what it defines
        stays there, for later `run`s and `call("name")`) and returns the value of its
        last statement if that is an expression, else None. Raises what `call` raises
        (a syntax error is a PythonError of type SyntaxError)."""
        if not isinstance(code, str):
            raise ArgumentError(f"run() takes source text, not {type(code).__name__}")
        return self._request((3, code, filename), timeout)

    def _request(self, request: tuple[Any, ...], timeout: float | None, key: str = "") -> Any:
        limit = check_timeout(timeout) if timeout is not None else self._default_timeout
        me = threading.get_ident()
        if self._caller == me:
            raise SandboxBusy(
                "the sandbox is in a call on this thread (a host function or the output "
                "callback called back into its own sandbox)"
            )
        with self._lock:
            if self.reset_mode == "per_call" and not self.closed:
                self._fresh(request if key else None)
            self._check_usable()
            asked = request  # as the caller made it: a known function's payload is dropped
            if key and key in self._known:
                request = request[:2] + (None,) + request[3:]
            self._caller = me
            try:
                reply = self._exchange(request, limit, asked)
                if request is not asked and _is_unknown(reply):  # a guest that lost it:
                    reply = self._exchange(asked, limit, asked)  # with the source again
            finally:
                self._caller = None
            if key and reply[0] == 0:
                self._known.add(key)
            return self._result(reply)

    def _exchange(
        self, request: tuple[Any, ...], limit: float | None, asked: tuple[Any, ...]
    ) -> tuple[Any, ...]:
        """Writes `request`, runs the guest, returns the decoded reply. `asked`: the
        request as the caller made it, which names the code in the messages of a time
        limit or a cancel (_label, on those paths only)."""
        data = codec.dumps(request)
        addr = self._addr
        if len(data) > addr.mailbox_size:
            raise ArgumentError(
                f"the call's data is {len(data)} bytes encoded, more than the "
                f"{addr.mailbox_size} bytes a call can carry"
            )
        wasm = self._engine
        wasi = wasm.wasi
        assert wasi is not None
        wasi.clear_output()
        if self._output is not None:
            for d in self._decoders:
                d.reset()
        self._write(data)
        self._host_error = None
        self._ran = True
        wasi.set_deadline(None if limit is None else time.monotonic_ns() + int(limit * 1e9))
        try:
            result = wasm.invoke(addr.instance, CALL_EXPORT, self._call_args, timeout=limit)
        except HostFunctionError as exc:
            if not isinstance(exc.__cause__, WasiExit):
                raise
            self._broken = "os._exit() in guest code"
            self._collect(())
            raise PythonExit(exc.__cause__.code, unwound=False) from None
        except WasmTrap as trap:
            self._broken = f"a crash of the interpreter ({trap.kind})"
            self._collect(())
            raise PythonCrash(
                f"the interpreter stopped: {trap} ({trap.kind}); restore the sandbox",
                str(trap.kind),
            ) from trap
        except CallTimeout:
            self._collect(())
            raise CallTimeout(f"{_label(asked)} did not finish within {limit} s") from None
        except CallCancelled:
            self._collect(())
            raise CallCancelled(f"{_label(asked)} was cancelled") from None
        finally:
            wasi.set_deadline(None)
        if len(result) != 1 or result[0][1] & 0xFFFFFFFF != addr.none:
            self._broken = "a broken interpreter"
            raise PythonCrash(
                "the interpreter's request loop failed (its return value was not None)",
                "protocol",
            )
        reply = self._read_reply()
        self._collect(reply)
        return reply

    def _view(self) -> memoryview | None:
        """The mailbox as one slice of guest memory (refetched: a restore may remap)."""
        phys = self._addr.mailbox_guest
        if phys is None:
            return None
        return self._engine.engine_sandbox.memory.region(phys, self._addr.mailbox_size)

    def _write(self, data: bytes) -> None:
        view = self._view()
        if view is not None:
            view[: len(data)] = data
        else:
            self._memory.write(self._addr.mailbox, data)

    def _read(self) -> bytes:
        """The guest's record: u32 length, then that many bytes (bounded)."""
        addr = self._addr
        view = self._view()
        raw = view[0:4] if view is not None else self._memory.read(addr.mailbox, 4)
        (size,) = _LENGTH.unpack(raw)
        if size > addr.mailbox_size - 4:
            raise GuestProtocolError(f"the guest's record claims {size} bytes")
        if view is not None:
            return bytes(view[4 : 4 + size])
        data: bytes = self._memory.read(addr.mailbox + 4, size)
        return data

    def _read_reply(self) -> tuple[Any, ...]:
        try:
            reply = codec.decode(self._read())
        except codec.CodecError as exc:
            return (1, ["TypeError", "builtins", f"the result: {exc}", "", None])
        except GuestProtocolError:
            self._broken = "a malformed reply"
            raise
        if not (isinstance(reply, tuple) and len(reply) in (2, 4) and reply[0] in (0, 1)):
            self._broken = "a malformed reply"
            raise GuestProtocolError("the guest's reply is malformed")
        return reply

    def _collect(self, reply: tuple[Any, ...]) -> None:
        """The call's output: what went through WASI during it, then the reply's rest."""
        wasi = self._engine.wasi
        assert wasi is not None
        out = reply[2] if len(reply) == 4 and isinstance(reply[2], str) else ""
        err = reply[3] if len(reply) == 4 and isinstance(reply[3], str) else ""
        if self._output is not None:
            for text in (out, err):
                if text:
                    self._output(text)
        flushed_out, flushed_err = wasi.stdout, wasi.stderr
        if not (flushed_out or flushed_err or out or err):
            self.last_output = self.last_stderr = ""
            self.last_output_truncated = False
            return
        limit = self.config.output_limit
        full_out = flushed_out.decode(errors="replace") + out
        full_err = flushed_err.decode(errors="replace") + err
        self.last_output_truncated = (
            wasi.truncated or len(full_out) > limit or len(full_err) > limit
        )
        self.last_output, self.last_stderr = full_out[:limit], full_err[:limit]

    def _stream(self, data: bytes, which: int) -> None:
        if data and self._output is not None:
            text = self._decoders[which].decode(data)
            if text:
                self._output(text)

    def _result(self, reply: tuple[Any, ...]) -> Any:
        if reply[0] == 0:
            return reply[1]
        error = reply[1]
        if not (isinstance(error, list) and len(error) == 5):
            self._broken = "a malformed reply"
            raise GuestProtocolError("the guest's error reply is malformed")
        type_name, module, message, tb, code = (
            x if isinstance(x, (str, int)) or x is None else str(x) for x in error
        )
        type_name, module = str(type_name)[:200], str(module)[:200]
        message, tb = str(message)[:65536], str(tb or "")[:65536]
        if module == "sandbox" and type_name == "FunctionNotFound":
            raise FunctionNotFound(f"the sandbox {message} (define it with run() first)")
        if type_name == "SystemExit" and module == "builtins":
            raise PythonExit(code if code is None or isinstance(code, int) else str(code), tb)
        if (
            type_name == "HostFunctionError"
            and module == "sandbox_guest"
            and self._host_error is not None
        ):
            raise HostFunctionError(
                f"a host function raised: {describe(self._host_error)}\n\nguest traceback:\n{tb}"
            ) from self._host_error
        raise PythonError(type_name, module, message, tb)

    def _serve_host_call(self) -> None:
        """A host function call from guest code: request and reply in the mailbox."""
        try:
            call = codec.decode(self._read())
        except codec.CodecError as exc:
            raise GuestProtocolError(f"a host call's arguments: {exc}") from None
        if not (
            isinstance(call, tuple)
            and len(call) == 3
            and isinstance(call[0], str)
            and isinstance(call[1], tuple)
            and isinstance(call[2], dict)
            and all(isinstance(k, str) for k in call[2])
        ):
            raise GuestProtocolError("the guest's host call is malformed")
        name, args, kwargs = call
        fn = self._host_functions.get(name)
        try:
            if fn is None:
                raise LookupError(
                    f"no host function {name!r} (registered: "
                    f"{', '.join(sorted(self._host_functions)) or 'none'})"
                )
            data = codec.dumps((0, codec.plain(fn(*args, **kwargs))))
            if len(data) > self._addr.mailbox_size:
                raise ValueError(f"its result is {len(data)} bytes, too large for the sandbox")
        except Exception as exc:
            self._host_error = exc
            data = codec.dumps((1, describe(exc)[:HOST_ERROR_MAX]))
        self._write(data)


def _initial(tmpl: Template, preopens: tuple[Preopen, ...]) -> PythonSnapshot:
    """The state sandboxes of `tmpl` start in, with the directories `preopens` (the
    template was started with empty ones at their guest paths: interpreter.placeholders)."""
    key = (id(tmpl), preopens)
    with _initials_lock:
        found = _initials.get(key)
        if found is not None and found.template is tmpl:
            _initials.move_to_end(key)
            return found
    wasm = tmpl.wasm
    if preopens:
        wasm = wasm.with_wasi(wasi_config(wasm.config, tmpl.packages, preopens, tmpl.token))
    made = PythonSnapshot(wasm, tmpl, frozenset())
    with _initials_lock:
        found = _initials.get(key)
        if found is not None and found.template is tmpl:  # another thread's, first
            return found
        _initials[key] = made
        while len(_initials) > MAX_INITIALS:
            _initials.popitem(last=False)
    return made


def load_snapshot(
    path: str | os.PathLike[str],
    *,
    packages: Sequence[object] | None = None,
    preopens: Sequence[Preopen] | None = None,
    key: bytes | str | None = None,
) -> PythonSnapshot:
    """A Python sandbox's state saved with `PythonSnapshot.save`, for `spawn` and
    `Sandbox.from_snapshot`. `packages` and `preopens`: as the sandbox it came from was
    made with (the same package set; directories with the same guest paths and modes, in
    the same order, the host directories being the caller's); `key`: as for
    Snapshot.load. The tier and the config are the file's. Raises SnapshotError (the
    file, or what it says, is not usable here: sandbox/python/saved.py), ArgumentError,
    FileNotFoundError."""
    snap = PythonSnapshot(
        *saved.read(path, packages=resolve(packages), preopens=_check_preopens(preopens), key=key)
    )
    probe = snap.spawn()  # the state must answer a request (its machine is then parked)
    try:
        answer = probe.run("None", timeout=LOAD_PROBE_TIMEOUT)
    except (  # what a guest can make a request end with (PythonExit is a PythonError)
        PythonError, PythonCrash, GuestProtocolError, GuestTrap, GuestAbort, HostFunctionError,
        WasmEngineError, CallTimeout,
    ) as exc:  # fmt: skip
        where = os.fspath(path)
        raise SnapshotError(f"{where}: the saved interpreter does not answer: {exc}") from None
    finally:
        probe.close()
    if answer is not None:
        raise SnapshotError(f"{os.fspath(path)}: the saved interpreter answers wrongly")
    return snap


def _check_preopens(preopens: Sequence[Preopen] | None) -> tuple[Preopen, ...]:
    opens = tuple(preopens or ())
    for p in opens:
        if not isinstance(p, Preopen):
            raise ArgumentError(f"preopens takes Preopen values, not {type(p).__name__}")
        if p.guest_path.rstrip("/") == PACKAGES_GUEST_PATH:
            raise ArgumentError(f"{PACKAGES_GUEST_PATH} is where packages are mounted")
    return opens


def _spare_warmup(a: int, b: int) -> int:
    return a + b


def _warm_spare(
    wasm_ref: weakref.ref[WasmSnapshot], tmpl_ref: weakref.ref[Template], known: frozenset[str]
) -> None:
    """Makes a spare machine of a snapshot (machines.py): a sandbox of it ships a small
    function, calls it and closes, so that the VM parked for the next sandbox has KVM's
    mappings of what a call touches (a first call on a new VM: ~9 ms under nested KVM, on
    a spare ~0.5 ms). Nothing of it stays: parking resets the memory to the snapshot."""
    wasm, tmpl = wasm_ref(), tmpl_ref()
    if wasm is None or tmpl is None:
        return
    sb = PythonSandbox._spawn(PythonSnapshot(wasm, tmpl, known), None, None, "none")
    try:
        for _ in range(SPARE_WARMUP_CALLS):
            sb.call(_spare_warmup, 1, 2, timeout=SPARE_WARMUP_TIMEOUT)
            sb.restore()  # a new random seed: hashes, and so the pages touched, differ
    finally:
        sb.close()


def _is_unknown(reply: tuple[Any, ...]) -> bool:
    return reply[0] == 1 and isinstance(reply[1], list) and reply[1][:2] == ["Unknown", "sandbox"]


def write_u64(memory: Any, addr: int, value: int) -> int:
    """Writes a WASI result; the errno (0, or EFAULT for an address outside memory)."""
    try:
        memory.write(addr, struct.pack("<Q", value))
    except Exception:
        return Errno.FAULT
    return 0


Sandbox.register(PythonSandbox)


def _label(request: tuple[Any, ...]) -> str:
    """What messages call the Python code of `request` (a time limit, a cancel): the
    function's name or the code's file name, not the interpreter's export that runs it."""
    kind = request[0]
    if kind in (1, 5) and isinstance(request[2], list) and request[2]:
        return str(request[2][0])  # a shipped function's payload: [name, filename, ...]
    if kind == 2:
        return str(request[1])  # a function the sandbox's own code defined
    if kind == 3:
        return f"the code of {request[2]}"
    return "the function"
