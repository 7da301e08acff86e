"""The kind of function a manifest asks for (functions.py)."""

from __future__ import annotations

from pathlib import Path

from .config import HostConfig
from .functions import FunctionKind, NativeKind
from .manifest import FunctionSpec
from .python_functions import PythonKind
from .wasm_functions import Startups, WasmKind


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
