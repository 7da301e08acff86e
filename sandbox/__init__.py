"""Hardware-isolated micro-VM sandboxes for Python, on /dev/kvm.

from sandbox import Sandbox
with Sandbox() as sb:
    assert sb.call("add", 1, 2) == 3
"""

import importlib
from typing import TYPE_CHECKING, Any

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
    GuestNotFound,
    GuestProtocolError,
    GuestTrap,
    HostFunctionError,
    KvmError,
    KvmUnavailable,
    PoolFull,
    PoolTimeout,
    SandboxBusy,
    SandboxClosed,
    SandboxError,
    SandboxPoisoned,
)
from .sandbox import Sandbox
from .snapshot import Snapshot, SnapshotError

if TYPE_CHECKING:
    from .pool import SandboxPool
    from .python import PythonSandbox
    from .wasm import WasmSandbox

# Imported on first use (PEP 562): the pool (asyncio) and the Wasm and Python guest
# kinds (sandbox/kinds.py imports a kind's package when it is first asked for) stay out
# of a process that only runs native guests. That is import time, and every shared
# library a process maps makes each new VM slower: KVM_CREATE_VM locks every mapping of
# the process once (docs/architecture.md, "The birth of a machine").
_LAZY = {
    "SandboxPool": ".pool",
    "PythonSandbox": ".python",
    "WasmSandbox": ".wasm",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sandbox' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
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
    "GuestNotFound",
    "GuestProtocolError",
    "GuestTrap",
    "HostFunctionError",
    "KvmError",
    "KvmUnavailable",
    "PythonSandbox",
    "PoolFull",
    "PoolTimeout",
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
    "WasmSandbox",
]
