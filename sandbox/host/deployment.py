"""`Deployment`: a stored function made runnable: its limits, signature and pool."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from ..abi import Signature, Tag
from ..config import MiB, SandboxConfig
from ..errors import (
    ArgumentError,
    ConfigError,
    GuestAbiMismatch,
    GuestAbort,
    GuestNotFound,
    KvmError,
    KvmUnavailable,
)
from ..sandbox import Sandbox
from ..wasm import ValType, WasiConfig, WasiExit, WasmLinkError, WasmModuleError, WasmTrap
from ..wasm.module import FuncType, WasmModule
from ..wasm.sandbox import WASI_MODULE, WasmSandbox, WasmSnapshot, from_wasm
from .config import HostConfig
from .errors import ApiError, bad_request
from .manifest import FunctionRecord, FunctionSpec
from .pool import FunctionPool

MIN_BUFFER = 64 * 1024


@dataclass(frozen=True)
class Limits:
    """A function's limits: its manifest's, or the host's defaults."""

    timeout_s: float
    max_concurrency: int
    max_queue: int
    warm: int

    @classmethod
    def resolve(cls, spec: FunctionSpec, config: HostConfig, *, strict: bool = True) -> Limits:
        """Raises ApiError (400) for a limit over what the host allows; with
        strict=False (functions stored under another config) clamps it instead."""
        timeout = spec.timeout_s if spec.timeout_s is not None else config.default_timeout_s
        concurrency = spec.max_concurrency or config.default_max_concurrency
        if strict and timeout > config.max_timeout_s:
            raise bad_request(
                f"timeout_s must be at most {config.max_timeout_s}", "InvalidManifest"
            )
        if strict and concurrency > config.max_concurrency_limit:
            raise bad_request(
                f"max_concurrency must be at most {config.max_concurrency_limit}",
                "InvalidManifest",
            )
        timeout = min(timeout, config.max_timeout_s)
        concurrency = min(concurrency, config.max_concurrency_limit)
        queue = spec.max_queue if spec.max_queue is not None else config.default_max_queue
        warm = spec.warm if spec.warm is not None else config.default_warm
        return cls(timeout, concurrency, queue, min(warm, concurrency))


def sandbox_config(spec: FunctionSpec, config: HostConfig) -> SandboxConfig:
    """Guest memory from the manifest; buffers big enough for the largest request body
    (base64 in http mode), but at most 1/8 of memory each."""
    memory = spec.memory_mib * MiB
    wanted = config.max_body_bytes * 4 // 3 + 64 * 1024
    size = max(MIN_BUFFER, min(wanted, memory // 8))
    size = (size + 4095) // 4096 * 4096
    return SandboxConfig(memory_size=memory, input_buffer_size=size, output_buffer_size=size)


def _getenv_for(environment: dict[str, str]) -> object:
    env = dict(environment)

    def getenv(*args: object) -> str | None:
        """Host function `getenv(name) -> str`; void if the variable is not set."""
        if len(args) == 1 and isinstance(args[0], str):
            return env.get(args[0])
        return None

    return getenv


def make_factory(blob: Path, spec: FunctionSpec, config: HostConfig) -> Callable[[], Sandbox]:
    if spec.kind == "wasm":
        return WasmFactory(blob, spec)
    return functools.partial(
        Sandbox,
        str(blob),
        config=sandbox_config(spec, config),
        host_functions={"getenv": _getenv_for(spec.environment)},  # type: ignore[dict-item]
        reset="per_call",
    )


def wasm_sandbox_config(spec: FunctionSpec) -> SandboxConfig:
    """A Wasm function's VM: `memory_mib` in all, a quarter of it (at least 8 MiB) the
    engine's heap, the rest (less buffers and stack) its linear memory. Arguments and
    results are numbers and an http request goes through WASI stdin, so the buffers stay
    small."""
    memory = spec.memory_mib * MiB
    heap = max(8 * MiB, memory // 4)
    return SandboxConfig(
        memory_size=memory,
        heap_size=heap,
        input_buffer_size=MIN_BUFFER,
        output_buffer_size=MIN_BUFFER,
    )


class WasiHandler(WasmSandbox):
    """A Wasm function in http mode: a WASI command (its entry, normally `_start`) that
    reads the request (the JSON document a native handler gets as its argument) from
    stdin and writes the response document to stdout, like CGI. `call(entry, request)`
    returns what it wrote; a non-zero exit status is a GuestAbort carrying its stderr."""

    def call(self, name: str, *args: object, timeout: float | None = None) -> Any:
        if len(args) != 1 or not isinstance(args[0], str) or self.wasi is None:
            raise ArgumentError("an http-mode Wasm function takes the request document")
        self.wasi.set_stdin(args[0].encode())
        try:
            super().call(name, timeout=timeout)
        except WasiExit as exit:
            if exit.code != 0:
                tail = self.last_stderr[-2000:]
                raise GuestAbort(f"the handler exited with status {exit.code}: {tail}") from None
        return self.last_output


class WasmFactory:
    """Sandboxes of a Wasm function: the first from the module (validated, compiled and
    instantiated in a new engine VM), every later one from that sandbox's snapshot, taken
    before its first call (no compilation or instantiation again). Thread-safe."""

    def __init__(self, blob: Path, spec: FunctionSpec) -> None:
        self.blob = blob
        self.spec = spec
        self._snapshot: WasmSnapshot | None = None
        self._lock = threading.Lock()
        self._cls: type[WasmSandbox] = WasiHandler if spec.mode == "http" else WasmSandbox

    def __call__(self) -> Sandbox:
        with self._lock:
            if self._snapshot is None:
                wasi = WasiConfig(
                    args=[self.spec.entry], env=dict(self.spec.environment), stdin=b""
                )
                sb = from_wasm(
                    self.blob,
                    wasi=wasi,
                    config=wasm_sandbox_config(self.spec),
                    reset="per_call",
                    cls=self._cls,
                )
                self._snapshot = sb.instantiated
                return cast(Sandbox, sb)  # a virtual subclass (registered), not a nominal one
        return cast(Sandbox, self._snapshot.spawn(reset="per_call", cls=self._cls))


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
    if export is None or not isinstance(export.type, FuncType):
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


def check_entry(sb: Sandbox, spec: FunctionSpec) -> Signature:
    """The entry's signature; raises ApiError (422) if the guest does not export it or
    (http mode) it is not `(str) -> str` (for Wasm: see _wasm_entry)."""
    if isinstance(sb, WasmSandbox):
        return wasm_entry(sb.module, spec)
    sig = sb.functions.get(spec.entry)
    if sig is None:
        exports = ", ".join(sorted(sb.functions)) or "none"
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


async def open_sandbox(factory: Callable[[], Sandbox]) -> Sandbox:
    """A first sandbox of a module, on a worker thread: the module's validation. Raises
    ApiError: 422 for a module that is not a usable guest, 503/500 for KVM failures."""
    try:
        return await asyncio.to_thread(factory)
    except KvmUnavailable as exc:
        raise ApiError(503, "KvmUnavailable", str(exc)) from exc
    except KvmError as exc:
        raise ApiError(500, "KvmError", str(exc)) from exc
    except (GuestAbiMismatch, GuestNotFound) as exc:
        raise ApiError(422, "InvalidModule", f"not a usable guest: {exc}") from exc
    except ConfigError as exc:
        raise ApiError(422, "InvalidModule", f"{exc} (raise memory_mib)") from exc
    except WasmModuleError as exc:
        raise ApiError(422, "InvalidModule", f"not a usable Wasm module: {exc}") from exc
    except WasmLinkError as exc:
        raise ApiError(
            422, "InvalidModule", f"the module cannot be linked: {exc} (the host offers WASI)"
        ) from exc
    except WasmTrap as exc:
        raise ApiError(422, "InvalidModule", f"the module traps when instantiated: {exc}") from exc
    except Exception as exc:  # the ELF parser on hostile input: still the module's fault
        raise ApiError(422, "InvalidModule", f"not a usable guest: {exc!r}") from exc


@dataclass(eq=False)
class Deployment:
    """A function as it is served now. `problem` is set (and `pool` None) for a
    stored function that cannot run, e.g. its blob is corrupt."""

    record: FunctionRecord
    limits: Limits
    signature: Signature | None = None
    pool: FunctionPool | None = None
    problem: str | None = None
    retired: bool = field(default=False)

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def spec(self) -> FunctionSpec:
        return self.record.spec

    def info(self) -> dict[str, object]:
        """The JSON description of GET /functions/{name}."""
        sig = self.signature
        pool = self.pool
        return {
            "name": self.name,
            "version": self.record.version,
            "sha256": self.record.sha256,
            "size": self.record.size,
            "created_at": self.record.created_at,
            "updated_at": self.record.updated_at,
            "spec": self.spec.model_dump(),
            "signature": None if sig is None else str(sig),
            "params": None if sig is None else [t.type_name for t in sig.params],
            "returns": None if sig is None else sig.ret.type_name,
            "limits": {
                "timeout_s": self.limits.timeout_s,
                "max_concurrency": self.limits.max_concurrency,
                "max_queue": self.limits.max_queue,
                "warm": self.limits.warm,
            },
            "state": "ready" if self.problem is None else "failed",
            "problem": self.problem,
            "pool": {
                "size": pool.size if pool else 0,
                "idle": pool.idle if pool else 0,
                "busy": pool.busy if pool else 0,
                "queued": pool.queued if pool else 0,
            },
        }


def new_pool(name: str, limits: Limits, factory: Callable[[], Sandbox]) -> FunctionPool:
    return FunctionPool(
        factory,
        max_size=limits.max_concurrency,
        warm=limits.warm,
        max_queue=limits.max_queue,
        label=name[:10],
    )
