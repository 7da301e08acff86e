"""Hardware-isolated micro-VM sandboxes for Python, on /dev/kvm.

from sandbox import Sandbox
with Sandbox() as sb:
    assert sb.call("add", 1, 2) == 3
"""

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
from .pool import SandboxPool
from .python import PythonSandbox  # registers the Python guest kind (Sandbox("python"))
from .sandbox import Sandbox
from .snapshot import Snapshot, SnapshotError
from .wasm import WasmSandbox  # registers the Wasm guest kind (Sandbox.from_wasm)

__version__ = "0.1.0"

__all__ = [
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
