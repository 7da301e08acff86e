"""Wasm modules in the micro-VM: the engine guest's host side.

from sandbox import Sandbox
with Sandbox.from_wasm("add.wasm") as sb:
    assert sb.call("add", 1, 2) == 3
"""

from ..errors import WasmModuleError
from .abi import ValType
from .factory import from_wasm
from .module import WasmModule
from .sandbox import WasmEngineError, WasmLinkError, WasmSandbox, WasmTrap
from .savedstate import load_snapshot
from .wasi import WasiConfig, WasiExit

__all__ = [
    "ValType",
    "WasiConfig",
    "WasiExit",
    "WasmEngineError",
    "WasmLinkError",
    "WasmModule",
    "WasmModuleError",
    "WasmSandbox",
    "WasmTrap",
    "from_wasm",
    "load_snapshot",
]
