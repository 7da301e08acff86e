"""`Function`: what the host runs a request in. One protocol, one implementation per
kind of function, so that nothing else in the host asks what kind a sandbox is:

    NativeFunction     a guest ELF's entry (invoke mode, or http mode's (str) -> str)
    WasmFunction       a Wasm module's export (invoke mode)          wasm_functions.py
    WasiHttpFunction   a WASI command answering one HTTP request (http mode), in the
                       json or the WAGI convention                    wasm_functions.py
    PythonFunction     a Python module's entry function (invoke and http modes)
                                                                      python_functions.py

A `Function` is a `sandbox.pool.Member` (call, restore, poisoned, cancel, close), so
the function's `SandboxPool` restores or replaces it like any sandbox, plus the output of
its last call. A `FunctionKind` makes them: `first()` builds and checks the first
one (the module's validation at deploy time, under the function's time limit), and
`new()` the others, from the first one's snapshot (no file is read again, so a version
keeps running after its module's blob was deleted). `kinds.kind_for` picks the kind.
This module holds the protocols, what every kind shares and the native kind.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ..abi import Signature, Tag
from ..config import MiB, SandboxConfig
from ..pool import Member
from ..sandbox import Sandbox
from ..snapshot import Snapshot
from ..wasm import WasmSandbox
from .config import HostConfig
from .errors import ApiError
from .httpmode import response_from, to_json
from .manifest import FunctionSpec

MIN_BUFFER = 64 * 1024


class Function(Member, Protocol):
    """A sandbox of one deployed function (see the module docstring): a pool `Member`
    that also tells what its last call printed."""

    @property
    def last_output(self) -> str: ...

    @property
    def last_stderr(self) -> str: ...

    @property
    def last_output_truncated(self) -> bool: ...


class SandboxFunction:
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


class NativeFunction(SandboxFunction):
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


class FunctionKind(Protocol):
    def first(self) -> tuple[Function, Signature]:
        """The first Function of the module, and its entry's signature. Raises the
        runtime's errors (a module that is no usable guest...) or ApiError 422."""
        ...

    def new(self) -> Function:
        """Another Function, made from the first one's snapshot. Thread-safe."""
        ...


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


def http_body_limit(spec: FunctionSpec, config: HostConfig) -> int:
    """The largest http-mode request body a native function's buffers take (at most
    max_body_bytes): 413 beyond it. Worked out once per version (Limits.resolve)."""
    if spec.kind != "native":
        return config.max_body_bytes
    room = native_config(spec, config, 1.0).input_buffer_size - 6 * config.max_header_bytes - 4096
    return max(0, min(config.max_body_bytes, room * 3 // 4))


def getenv_for(spec: FunctionSpec) -> Callable[..., str | None]:
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
        self.host_functions = {"getenv": getenv_for(spec)}
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
