"""`Function`: what the host runs a request in. One protocol, one implementation per
kind of function, so that nothing else in the host asks what kind a sandbox is:

    NativeFunction     a guest ELF's entry (invoke mode, or http mode's (str) -> str)
    WasmFunction       a Wasm module's export (invoke mode)
    WasiHttpFunction   a WASI command answering one HTTP request (http mode), in the
                       json or the WAGI convention
    PythonFunction     a Python module's entry function (invoke and http modes)

A `Function` is a `sandbox.pool.Member` (call, restore, poisoned, cancel, close), so
the function's `SandboxPool` restores or replaces it like any sandbox, plus the output of
its last call. A `FunctionKind` makes them: `first()` builds and checks the first
one (the module's validation at deploy time, under the function's time limit), and
`new()` the others, from the first one's snapshot (no file is read again, so a version
keeps running after its module's blob was deleted).
"""

from __future__ import annotations

import ast
import base64
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from .. import _reaper
from ..abi import Signature, Tag
from ..config import MiB, SandboxConfig
from ..errors import ArgumentError, GuestAbort, SandboxClosed
from ..pool import Member
from ..sandbox import Sandbox
from ..snapshot import Snapshot
from ..wasm import ValType, WasiConfig, WasiExit, WasmSandbox, aot
from ..wasm.factory import from_wasm
from ..wasm.module import FuncType, WasmModule
from ..wasm.sandbox import WasmSnapshot
from .config import HostConfig
from .errors import ApiError
from .httpmode import HttpRequest, response_from, response_from_cgi, to_json, wagi_environment
from .manifest import FunctionSpec
from .values import result_to_json

log = logging.getLogger("sandbox.host")
MIN_BUFFER = 64 * 1024
WASI_MODULE = "wasi_snapshot_preview1"


class Function(Member, Protocol):
    """A sandbox of one deployed function (see the module docstring): a pool `Member`
    that also tells what its last call printed."""

    @property
    def last_output(self) -> str: ...

    @property
    def last_stderr(self) -> str: ...

    @property
    def last_output_truncated(self) -> bool: ...


class _Wrapper:
    """The parts every Function shares: it holds one sandbox."""

    __slots__ = ("sb",)

    def __init__(self, sb: Sandbox | WasmSandbox) -> None:
        self.sb = sb

    @property
    def poisoned(self) -> bool:
        return self.sb.poisoned

    @property
    def closed(self) -> bool:
        return self.sb.closed

    @property
    def last_output(self) -> str:
        return self.sb.last_output

    @property
    def last_stderr(self) -> str:
        return ""

    @property
    def last_output_truncated(self) -> bool:
        return self.sb.last_output_truncated

    def restore(self) -> None:
        self.sb.restore()

    def cancel(self) -> None:
        self.sb.cancel()

    def close(self) -> None:
        self.sb.close()


class NativeFunction(_Wrapper):
    """A guest ELF: `call` is `Sandbox.call`; in http mode it takes an HttpRequest,
    passes its JSON document to the entry and returns the Reply it describes."""

    __slots__ = ("http", "function")

    def __init__(self, sb: Sandbox, *, http: bool = False, function: str = "") -> None:
        super().__init__(sb)
        self.http, self.function = http, function

    def call(self, name: str, *args: Any, timeout: float | None = None) -> Any:
        if not self.http:
            return self.sb.call(name, *args, timeout=timeout)
        (request,) = args
        text = self.sb.call(name, to_json(request), timeout=timeout)
        return response_from(self.function, text)


class Upgrades(Protocol):
    def native(self) -> WasmSnapshot | None:
        """The snapshot of the function in native code once it is compiled, else None."""
        ...


class WasmFunction(_Wrapper):
    """A Wasm module's export: `call` converts numbers by the export's type; what it
    wrote to fd 1 and 2 is its output. While it runs in the interpreter and `upgrades`
    has native code for it (the "auto" tier), `restore` (which the pool calls after
    each call, never during one) replaces its sandbox with one of the native code."""

    __slots__ = ("wasm", "upgrades")

    def __init__(self, sb: WasmSandbox, upgrades: Upgrades | None = None) -> None:
        super().__init__(sb)
        self.wasm = sb
        self.upgrades = None if aot.is_native(sb) else upgrades

    def restore(self) -> None:
        snap = self.upgrades.native() if self.upgrades is not None else None
        if snap is None:
            self.sb.restore()
            return
        try:
            new = snap.spawn(reset="per_call")
        except Exception as exc:  # keep the interpreter's sandbox
            log.warning("cannot start the native code of a Wasm function: %s", exc)
            self.sb.restore()
            return
        old, self.sb, self.wasm, self.upgrades = self.sb, new, new, None
        _reaper.defer(old.close)

    @property
    def last_stderr(self) -> str:
        return self.wasm.last_stderr

    def call(self, name: str, *args: Any, timeout: float | None = None) -> Any:
        return self.wasm.call(name, *args, timeout=timeout)


class WasiHttpFunction(WasmFunction):
    """A WASI command that answers one HTTP request per run: `call(entry, HttpRequest)`
    gives it the request (json: the request document on stdin; wagi: the CGI variables
    as its environment and the body on stdin), runs it and returns the Reply its stdout
    describes. A non-zero exit status is a GuestAbort with the end of its stderr."""

    __slots__ = ("base_env", "args", "wagi", "function")

    def __init__(
        self,
        sb: WasmSandbox,
        spec: FunctionSpec,
        args: list[str],
        function: str,
        upgrades: Upgrades | None = None,
    ) -> None:
        super().__init__(sb, upgrades)
        self.base_env, self.args = spec.variables(), args
        self.wagi = spec.http_interface == "wagi"
        self.function = function

    def call(self, name: str, *args: Any, timeout: float | None = None) -> Any:
        if len(args) != 1 or not isinstance(args[0], HttpRequest):
            raise ArgumentError("an http-mode Wasm function takes one request")
        request: HttpRequest = args[0]
        wasm = self.wasm
        stdin = request.body if self.wagi else to_json(request).encode()
        wasi = wasm.wasi
        if wasi is None:
            raise ArgumentError("an http-mode Wasm function must import WASI")
        if self.wagi:  # this request's CGI variables over the manifest's environment
            try:
                wasi.set_env({**self.base_env, **wagi_environment(request)})
            except ValueError as exc:  # not expected: wagi_environment drops NULs
                raise ApiError(400, "BadRequest", f"the request has no CGI form: {exc}") from None
        wasi.set_stdin(stdin)
        try:
            wasm.call(name, timeout=timeout)
        except WasiExit as exit:
            if exit.code != 0:
                tail = wasm.last_stderr[-2000:]
                raise GuestAbort(f"the handler exited with status {exit.code}: {tail}") from None
        if self.wagi:
            return response_from_cgi(self.function, wasi.stdout)
        return response_from(self.function, wasi.stdout)


# -- start-ups ---------------------------------------------------------------------------


class Startups:
    """The Wasm modules being instantiated on deploy threads (their start functions run
    under the function's time limit), so that a shutdown can stop them at once instead
    of waiting for that limit: `cancel_all` closes their sandboxes (a running start
    function ends with CallCancelled) and refuses new ones. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[WasmSandbox] = set()
        self.cancelled = False

    def add(self, sb: WasmSandbox) -> None:
        """Raises SandboxClosed (closing `sb`) once cancel_all was called."""
        with self._lock:
            if not self.cancelled:
                self._running.add(sb)
                return
        sb.close()
        raise SandboxClosed("the host is shutting down")

    def discard(self, sb: WasmSandbox) -> None:
        with self._lock:
            self._running.discard(sb)

    def cancel_all(self) -> None:
        """Stops every start-up running now and every later one. May block up to ~1 s
        per start-up (Sandbox.cancel): call it off the event loop."""
        with self._lock:
            self.cancelled = True
            running, self._running = list(self._running), set()
        for sb in running:
            sb.close()


# -- kinds -------------------------------------------------------------------------------


def native_config(spec: FunctionSpec, config: HostConfig, timeout: float) -> SandboxConfig:
    """Guest memory from the manifest; buffers big enough for the largest request body
    (4/3 of it: base64, or text no longer than that) and, in http mode, its headers
    (JSON escapes: at most 6 bytes a byte), but at most 1/8 of memory each."""
    memory = spec.memory_mib * MiB
    wanted = config.max_body_bytes * 4 // 3 + 64 * 1024
    if spec.mode == "http":
        wanted += 6 * config.max_header_bytes
    size = max(MIN_BUFFER, min(wanted, memory // 8))
    size = (size + 4095) // 4096 * 4096
    return SandboxConfig(
        memory_size=memory,
        input_buffer_size=size,
        output_buffer_size=size,
        timeout=timeout,
        output_limit=config.max_output_bytes,
    )


def wasm_config(spec: FunctionSpec, config: HostConfig, timeout: float) -> SandboxConfig:
    """A Wasm function's VM: `memory_mib` in all, a quarter of it (at least 8 MiB) the
    engine's heap, the rest (less buffers and stack) its linear memory. Arguments and
    results are numbers and an http request goes through WASI stdin, so the buffers
    stay small. `timeout` bounds the module's compilation and start function too."""
    memory = spec.memory_mib * MiB
    heap = max(8 * MiB, memory // 4)
    return SandboxConfig(
        memory_size=memory,
        heap_size=heap,
        input_buffer_size=MIN_BUFFER,
        output_buffer_size=MIN_BUFFER,
        timeout=timeout,
        output_limit=config.max_output_bytes,
    )


def http_body_limit(spec: FunctionSpec, config: HostConfig) -> int:
    """The largest http-mode request body a native function's buffers take (at most
    max_body_bytes): 413 beyond it. Worked out once per version (Limits.resolve)."""
    if spec.kind != "native":
        return config.max_body_bytes
    room = native_config(spec, config, 1.0).input_buffer_size - 6 * config.max_header_bytes - 4096
    return max(0, min(config.max_body_bytes, room * 3 // 4))


class FunctionKind(Protocol):
    def first(self) -> tuple[Function, Signature]:
        """The first Function of the module, and its entry's signature. Raises the
        runtime's errors (a module that is no usable guest...) or ApiError 422."""
        ...

    def new(self) -> Function:
        """Another Function, made from the first one's snapshot. Thread-safe."""
        ...


def _getenv_for(spec: FunctionSpec) -> Callable[..., str | None]:
    env = spec.variables()

    def getenv(*args: object) -> str | None:
        """Host function `getenv(name) -> str`; void if the variable is not set."""
        if len(args) == 1 and isinstance(args[0], str):
            return env.get(args[0])
        return None

    return getenv


class NativeKind:
    def __init__(
        self, name: str, blob: Path, spec: FunctionSpec, config: HostConfig, timeout: float
    ) -> None:
        self.name, self.blob, self.spec = name, blob, spec
        self.config = native_config(spec, config, timeout)
        self.host_functions = {"getenv": _getenv_for(spec)}
        self._snapshot: Snapshot | None = None
        self._lock = threading.Lock()

    def first(self) -> tuple[Function, Signature]:
        sb = Sandbox(
            str(self.blob),
            config=self.config,
            host_functions=self.host_functions,
            reset="per_call",
        )
        try:
            sig = native_entry(sb.functions, self.spec)
            with self._lock:
                if self._snapshot is None:
                    self._snapshot = sb.snapshot()
        except BaseException:
            sb.close()
            raise
        return self._wrap(sb), sig

    def _wrap(self, sb: Sandbox) -> Function:
        return NativeFunction(sb, http=self.spec.mode == "http", function=self.name)

    def new(self) -> Function:
        snap = self._snapshot
        if snap is None:
            return self.first()[0]
        sb = Sandbox.from_snapshot(snap, host_functions=self.host_functions, reset="per_call")
        return self._wrap(sb)


class WasmKind:
    """Wasm functions, in the host's tier (HostConfig.wasm_tier, default "auto"): the
    first sandbox runs at once, in the interpreter unless the module's native code is
    cached; under "auto" the module is compiled in the background meanwhile (never on
    a request's path), and once that is done the function's snapshot becomes one of
    the native code: new sandboxes start from it, and interpreter sandboxes in the pool
    are replaced after their next call (WasmFunction.restore). A compile that fails or
    runs out of time is logged and leaves the function on the interpreter."""

    def __init__(
        self,
        name: str,
        blob: Path,
        spec: FunctionSpec,
        config: HostConfig,
        timeout: float,
        startups: Startups | None = None,
    ) -> None:
        self.name, self.blob, self.spec = name, blob, spec
        self.config = wasm_config(spec, config, timeout)
        self.timeout = timeout
        self.args = [spec.entry]
        self.startups = startups
        self.tier: aot.Tier = config.wasm_tier
        self.limits = aot.Limits(seconds=config.aot_compile_timeout_s)
        self._snapshot: WasmSnapshot | None = None
        self._native: WasmSnapshot | None = None
        self._problem: str | None = None
        self._lock = threading.Lock()

    def code(self) -> dict[str, object]:
        """Which code the function runs (GET /functions/{name}: `wasm`)."""
        return {
            "tier": self.tier,
            "code": "native" if self._native is not None else "interpreter",
            "compile_problem": self._problem,
        }

    def _wrap(self, sb: WasmSandbox) -> Function:
        upgrades = self if self.tier == "auto" else None
        if self.spec.mode == "http":
            return WasiHttpFunction(sb, self.spec, self.args, self.name, upgrades)
        return WasmFunction(sb, upgrades)

    def _from_wasm(self, module: Path | WasmModule, tier: aot.Tier) -> WasmSandbox:
        wasi = WasiConfig(args=self.args, env=self.spec.variables(), stdin=b"")
        startups = self.startups
        sb = from_wasm(
            module,
            wasi=wasi,
            config=self.config,
            reset="per_call",
            timeout=self.timeout,  # the start function's limit
            tier=tier,
            on_engine=startups.add if startups is not None else None,
            aot_limits=self.limits,
        )
        if startups is not None:
            startups.discard(sb)
        return sb

    def first(self) -> tuple[Function, Signature]:
        sb = self._from_wasm(self.blob, self.tier)
        try:
            sig = wasm_entry(sb.module, self.spec)
            with self._lock:
                if self._snapshot is None:
                    self._snapshot = sb.instantiated
                    if aot.is_native(sb):
                        self._native = sb.instantiated
            if self.tier == "auto" and self._native is None:
                aot.compile_in_background(sb.module, self.limits, done=self._compiled(sb.module))
        except BaseException:
            sb.close()
            raise
        return self._wrap(sb), sig

    def _compiled(self, module: WasmModule) -> aot.Listener:
        started = time.monotonic()

        def done(path: Path | None, why: str | None) -> None:
            """On the compile's thread: the native snapshot, or the reason logged."""
            extra = {"function": self.name}
            if path is None:
                self._problem = why
                log.warning("Wasm function stays on the interpreter: %s", why, extra=extra)
                return
            if self.startups is not None and self.startups.cancelled:
                return  # the host is shutting down
            try:
                with self._from_wasm(module, "auto") as sb:
                    snap = sb.instantiated
                    if not aot.is_native(sb) or snap is None:
                        raise RuntimeError(f"{path} did not give a native sandbox")
            except Exception as exc:
                self._problem = str(exc)
                log.warning("Wasm function stays on the interpreter: %s", exc, extra=extra)
                return
            with self._lock:
                self._snapshot = self._native = snap
            log.info(
                "Wasm function runs native code",
                extra={**extra, "compile_s": round(time.monotonic() - started, 3)},
            )

        return done

    def native(self) -> WasmSnapshot | None:
        return self._native

    def new(self) -> Function:
        snap = self._snapshot
        if snap is None:
            return self.first()[0]
        return self._wrap(snap.spawn(reset="per_call"))


class PythonFunction(_Wrapper):
    """A Python module's entry: invoke mode calls it with the JSON arguments and returns
    its result made JSON (bytes as base64, tuples and sets as lists); http mode calls it
    with the request as a dict (method, path, query, headers as [name, value] pairs, body
    as bytes) and turns the dict it returns ({status, headers, body: str or bytes}) into
    the response."""

    __slots__ = ("py", "http", "function")

    def __init__(self, sb: Any, *, http: bool, function: str) -> None:
        super().__init__(sb)
        self.py, self.http, self.function = sb, http, function

    @property
    def last_stderr(self) -> str:
        return str(self.py.last_stderr)

    def call(self, name: str, *args: Any, timeout: float | None = None) -> Any:
        from ..python import PythonCrash, PythonError

        try:
            return self._call(name, args, timeout)
        except (PythonError, PythonCrash) as exc:
            # The function's own error (the host's table maps GuestAbort to 422); a crash
            # poisons the sandbox, which the pool restores.
            raise GuestAbort(str(exc)) from exc

    def _call(self, name: str, args: tuple[Any, ...], timeout: float | None) -> Any:
        if not self.http:
            return _jsonable(self.py.call(name, *args, timeout=timeout))
        if len(args) != 1 or not isinstance(args[0], HttpRequest):
            raise ArgumentError("an http-mode Python function takes one request")
        r: HttpRequest = args[0]
        request = {
            "method": r.method,
            "path": r.path,
            "query": r.query,
            "headers": [list(h) for h in r.headers],
            "body": r.body,
        }
        resp = self.py.call(name, request, timeout=timeout)
        if not isinstance(resp, dict):
            return response_from(self.function, "not an object")
        body = resp.get("body", b"")
        doc = {
            "status": resp.get("status", 200),
            "headers": resp.get("headers", {}),
            "body": base64.b64encode(body).decode() if isinstance(body, bytes) else body,
            "body_encoding": "base64" if isinstance(body, bytes) else "utf-8",
        }
        try:
            text = json.dumps(_jsonable(doc))
        except (TypeError, ValueError) as exc:
            text = json.dumps({"status": f"unusable response: {exc}"})
        return response_from(self.function, text)


def _jsonable(value: Any, depth: int = 0) -> Any:
    """A Python function's result as JSON (ApiError 422 for what JSON cannot hold)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return result_to_json(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if depth > 100:
        raise ApiError(422, "BadResult", "the result is nested too deeply for JSON")
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v, depth + 1) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise ApiError(422, "BadResult", "the result is a dict with keys that are not str")
        return {k: _jsonable(v, depth + 1) for k, v in value.items()}
    raise ApiError(422, "BadResult", f"the result ({type(value).__name__}) is not JSON")


def python_config(spec: FunctionSpec, config: HostConfig, timeout: float) -> SandboxConfig:
    """A Python function's VM: `memory_mib`, at least 128 MiB (64 MiB of it the engine
    heap that holds CPython's compiled code; the rest bounds the interpreter's memory)."""
    return SandboxConfig(
        memory_size=max(spec.memory_mib, 128) * MiB,
        heap_size=64 * MiB,
        input_buffer_size=MIN_BUFFER,
        output_buffer_size=MIN_BUFFER,
        timeout=timeout,
        output_limit=config.max_output_bytes,
    )


def python_entry(blob: Path, spec: FunctionSpec) -> Signature:
    """Checks that the module parses and defines `entry` at its top level. Raises
    ApiError (422)."""
    try:
        tree = ast.parse(blob.read_bytes().decode("utf-8"), f"{spec.entry}.py")
    except (SyntaxError, UnicodeDecodeError, ValueError) as exc:
        raise ApiError(422, "BadModule", f"the module is not valid Python source: {exc}") from None
    names = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    if spec.entry not in names:
        raise ApiError(
            422,
            "EntryNotFound",
            f"the module defines no function {spec.entry!r} "
            f"(it defines: {', '.join(sorted(names)) or 'none'})",
        )
    return Signature(spec.entry, (), Tag.STR)


class PythonKind:
    """Python functions: the module runs once in a fresh interpreter, that state is
    snapshotted, and every sandbox of the function starts from it (reset per call)."""

    def __init__(
        self, name: str, blob: Path, spec: FunctionSpec, config: HostConfig, timeout: float
    ) -> None:
        self.name, self.blob, self.spec = name, blob, spec
        self.config = python_config(spec, config, timeout)
        self._snapshot: Any = None
        self._lock = threading.Lock()

    def first(self) -> tuple[Function, Signature]:
        from ..python import PythonSandbox

        sig = python_entry(self.blob, self.spec)
        with PythonSandbox(config=self.config, packages=self.spec.packages or None) as loader:
            loader.run(self.blob.read_text(), filename=f"{self.name}.py")
            with self._lock:
                if self._snapshot is None:
                    self._snapshot = loader.snapshot()
        return self.new(), sig

    def new(self) -> Function:
        snap = self._snapshot
        if snap is None:
            return self.first()[0]
        return PythonFunction(
            snap.spawn(reset="per_call"), http=self.spec.mode == "http", function=self.name
        )


def kind_for(
    name: str,
    blob: Path,
    spec: FunctionSpec,
    config: HostConfig,
    timeout: float,
    startups: Startups | None = None,
) -> FunctionKind:
    """`startups`: where Wasm start-ups register, to be cancelled at shutdown."""
    if spec.kind == "wasm":
        return WasmKind(name, blob, spec, config, timeout, startups)
    if spec.kind == "python":
        return PythonKind(name, blob, spec, config, timeout)
    return NativeKind(name, blob, spec, config, timeout)


# -- entries -----------------------------------------------------------------------------


def native_entry(functions: Any, spec: FunctionSpec) -> Signature:
    """The entry's signature among a guest's `functions`; raises ApiError (422) if it
    does not export it or (http mode) it is not `(str) -> str`."""
    sig = functions.get(spec.entry)
    if not isinstance(sig, Signature):
        exports = ", ".join(sorted(functions)) or "none"
        raise ApiError(
            422,
            "EntryNotFound",
            f"the module exports no function {spec.entry!r} (it exports: {exports})",
        )
    if spec.mode == "http" and (sig.params != (Tag.STR,) or sig.ret is not Tag.STR):
        raise ApiError(
            422,
            "BadEntrySignature",
            f"in http mode the entry must be (str) -> str, but it is {sig}",
        )
    return sig


_WASM_TAGS = {
    ValType.I32: Tag.I32,
    ValType.I64: Tag.I64,
    ValType.F32: Tag.F32,
    ValType.F64: Tag.F64,
}


def wasm_entry(module: WasmModule, spec: FunctionSpec) -> Signature:
    """The signature the host gives a Wasm function's entry; raises ApiError (422) if
    the module does not export it or the host cannot pass its types."""
    exports = module.exports
    export = exports.get(spec.entry)
    if export is None or export.kind != "func" or not isinstance(export.type, FuncType):
        funcs = ", ".join(sorted(n for n, e in exports.items() if e.kind == "func"))
        raise ApiError(
            422,
            "EntryNotFound",
            f"the module exports no function {spec.entry!r} (it exports: {funcs or 'none'})",
        )
    ft = export.type
    if spec.mode == "http":
        if ft.params or ft.results or not any(i.module == WASI_MODULE for i in module.imports):
            raise ApiError(
                422,
                "BadEntrySignature",
                "in http mode a Wasm function is a WASI command: its entry takes and returns "
                f"nothing (normally _start), but {spec.entry} is {ft}",
            )
        return Signature(spec.entry, (Tag.STR,), Tag.STR)
    bad = [t for t in (*ft.params, *ft.results) if t not in _WASM_TAGS]
    if bad or len(ft.results) > 1:
        raise ApiError(
            422,
            "BadEntrySignature",
            f"{spec.entry} is {ft}: the host passes and returns i32, i64, f32 and f64 "
            "values, and at most one result",
        )
    ret = _WASM_TAGS[ft.results[0]] if ft.results else Tag.VOID
    return Signature(spec.entry, tuple(_WASM_TAGS[t] for t in ft.params), ret)
