"""Hardware-isolated micro-VM sandboxes for Python, on /dev/kvm.

from sandbox import Sandbox
with Sandbox() as sb:
    assert sb.call("add", 1, 2) == 3
"""

import importlib as _importlib
import typing as _typing

from ._version import __version__
from .abi import Signature, Tag
from .config import SandboxConfig
from .errors import (
    ArgumentError,
    CallCancelled,
    CallTimeout,
    ConfigError,
    FunctionNotFound,
    GuestAbiMismatch,
    GuestAbort,
    GuestBuildError,
    GuestNotFound,
    GuestProtocolError,
    GuestTrap,
    HostFunctionError,
    KvmError,
    KvmUnavailable,
    PoolFull,
    PoolTimeout,
    PythonCrash,
    PythonError,
    PythonExit,
    PythonStartError,
    SandboxBusy,
    SandboxClosed,
    SandboxError,
    SandboxPoisoned,
    TrapKind,
    WasmEngineError,
    WasmLinkError,
    WasmModuleError,
    WasmTrap,
    WasmTrapKind,
)
from .sandbox import Sandbox
from .snapshot import Snapshot, SnapshotError

if _typing.TYPE_CHECKING:
    from . import pool as pool
    from . import python as python
    from . import wasm as wasm
    from .pool import SandboxPool
    from .python import PythonSandbox
    from .wasm import WasmSandbox

# Imported on first use (PEP 562): the pool (asyncio) and the Wasm and Python guest
# kinds (sandbox/kinds.py imports a kind's package when it is first asked for) stay out
# of a process that only runs native guests. That is import time, and every shared
# library a process maps makes each new VM slower: KVM_CREATE_VM locks every mapping of
# the process once (docs/architecture.md, "The birth of a machine").
# name -> (its module, the attribute; "" for the module itself, as `import sandbox`
# followed by `sandbox.pool.ensure_fd_limit(...)` has it).
_LAZY = {
    "SandboxPool": (".pool", "SandboxPool"),
    "PythonSandbox": (".python", "PythonSandbox"),
    "WasmSandbox": (".wasm", "WasmSandbox"),
    "pool": (".pool", ""),
    "python": (".python", ""),
    "wasm": (".wasm", ""),
}


def __getattr__(name: str) -> object:
    found = _LAZY.get(name)
    if found is None:
        raise AttributeError(f"module 'sandbox' has no attribute {name!r}")
    module = _importlib.import_module(found[0], __name__)  # binds a submodule here too
    value = getattr(module, found[1]) if found[1] else module
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "__version__",
    "ArgumentError",
    "CallCancelled",
    "CallTimeout",
    "ConfigError",
    "FunctionNotFound",
    "GuestAbiMismatch",
    "GuestAbort",
    "GuestBuildError",
    "GuestNotFound",
    "GuestProtocolError",
    "GuestTrap",
    "HostFunctionError",
    "KvmError",
    "KvmUnavailable",
    "PoolFull",
    "PoolTimeout",
    "PythonCrash",
    "PythonError",
    "PythonExit",
    "PythonSandbox",
    "PythonStartError",
    "Sandbox",
    "SandboxBusy",
    "SandboxClosed",
    "SandboxConfig",
    "SandboxError",
    "SandboxPoisoned",
    "SandboxPool",
    "Snapshot",
    "SnapshotError",
    "Signature",
    "Tag",
    "TrapKind",
    "WasmEngineError",
    "WasmLinkError",
    "WasmModuleError",
    "WasmSandbox",
    "WasmTrap",
    "WasmTrapKind",
]
