"""Wasm functions of the host (see functions.py): a module's export (invoke mode) or a
WASI command answering one HTTP request (http mode), in the host's Wasm tier, and the
start-ups a shutdown cancels."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from .. import _reaper
from ..abi import Signature, Tag
from ..config import MiB, SandboxConfig
from ..errors import ArgumentError, GuestAbort, SandboxClosed
from ..wasm import ValType, WasiConfig, WasiExit, WasmSandbox, aot
from ..wasm.factory import from_wasm
from ..wasm.module import FuncType, WasmModule
from ..wasm.sandbox import WasmSnapshot
from .config import HostConfig
from .errors import ApiError
from .functions import MIN_BUFFER, Function, SandboxFunction
from .httpmode import HttpRequest, response_from, response_from_cgi, to_json, wagi_environment
from .manifest import FunctionSpec

log = logging.getLogger("sandbox.host")
WASI_MODULE = "wasi_snapshot_preview1"


class Upgrades(Protocol):
    def native(self) -> WasmSnapshot | None:
        """The snapshot of the function in native code once it is compiled, else None."""
        ...


class WasmFunction(SandboxFunction):
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
