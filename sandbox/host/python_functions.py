"""Python functions of the host (see functions.py): a Python module's entry function,
in invoke and http modes."""

from __future__ import annotations

import ast
import base64
import json
import threading
from pathlib import Path
from typing import Any

from ..abi import Signature, Tag
from ..config import MiB, SandboxConfig
from ..errors import ArgumentError, GuestAbort
from .config import HostConfig
from .errors import ApiError
from .functions import MIN_BUFFER, Function, SandboxFunction
from .httpmode import HttpRequest, response_from
from .manifest import FunctionSpec
from .values import result_to_json


class PythonFunction(SandboxFunction):
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
    snapshotted, and every sandbox of the function starts from it (reset per call). The
    state is also saved on disk (sandbox.python.statecache), keyed by the module's
    source, the function's name, packages and sandbox config, so that a restarted host
    reads it instead of running the module again."""

    def __init__(
        self, name: str, blob: Path, spec: FunctionSpec, config: HostConfig, timeout: float
    ) -> None:
        self.name, self.blob, self.spec = name, blob, spec
        self.config = python_config(spec, config, timeout)
        self._snapshot: Any = None
        self._lock = threading.Lock()

    def first(self) -> tuple[Function, Signature]:
        from ..python import PythonSandbox, statecache

        sig = python_entry(self.blob, self.spec)
        source, packages = self.blob.read_text(), self.spec.packages or None
        filename = f"{self.name}.py"
        key = statecache.key(source, filename, json.dumps(packages), self.config.model_dump_json())
        snap = statecache.find(key, packages=packages)
        if snap is None:
            with PythonSandbox(config=self.config, packages=packages) as loader:
                loader.run(source, filename=filename)
                snap = loader.snapshot()
            statecache.save_later(key, snap)
        with self._lock:
            if self._snapshot is None:
                self._snapshot = snap
        return self.new(), sig

    def new(self) -> Function:
        snap = self._snapshot
        if snap is None:
            return self.first()[0]
        return PythonFunction(
            snap.spawn(reset="per_call"), http=self.spec.mode == "http", function=self.name
        )
