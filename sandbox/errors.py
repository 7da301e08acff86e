"""Every error this package raises, and what each does to the sandbox.

`SandboxError` is the base of all of them and is never raised itself. Argument errors are
also `TypeError`/`ValueError` (and lookups `LookupError`) so ordinary code catches them.

Each class says in `poisons` whether the sandbox the error came from is poisoned by it
(refuses calls until it is restored or replaced): a CPU trap, a malformed record, a
timeout or a cancel leave the guest somewhere in the middle of its code, so nothing it
holds can be trusted; an orderly error result (an abort, a Wasm trap, a host function
that raised, a bad argument) leaves it as consistent as the guest made it. Anything
else that interrupts a call while the guest is inside it (Ctrl-C, an exception from the
output callback) poisons too: `Sandbox.call` decides that, not the class.

Trap kinds are `TrapKind` (and `WasmTrapKind` for Wasm traps): string enums, so
`trap.kind == "page_fault"` reads as before.
"""

from __future__ import annotations

import enum
import pickle
from typing import Any, ClassVar


class TrapKind(enum.StrEnum):
    """What stopped the guest (the `kind` of a GuestTrap)."""

    # CPU exceptions, by vector (SDM 6.3.1); see x86_64.EXCEPTION_NAMES.
    DIVIDE_ERROR = "divide_error"
    DEBUG = "debug"
    NMI = "nmi"
    BREAKPOINT = "breakpoint"
    OVERFLOW = "overflow"
    BOUND_RANGE = "bound_range"
    INVALID_OPCODE = "invalid_opcode"
    DEVICE_NOT_AVAILABLE = "device_not_available"
    DOUBLE_FAULT = "double_fault"
    INVALID_TSS = "invalid_tss"
    SEGMENT_NOT_PRESENT = "segment_not_present"
    STACK_FAULT = "stack_fault"
    GENERAL_PROTECTION = "general_protection"
    PAGE_FAULT = "page_fault"
    X87_FLOATING_POINT = "x87_floating_point"
    ALIGNMENT_CHECK = "alignment_check"
    MACHINE_CHECK = "machine_check"
    SIMD_FLOATING_POINT = "simd_floating_point"
    VIRTUALIZATION = "virtualization"
    CONTROL_PROTECTION = "control_protection"
    RESERVED_VECTOR = "reserved_vector"  # a vector the SDM reserves (9, 15, 22-31)
    # Faults the host classifies.
    STACK_OVERFLOW = "stack_overflow"  # a page fault in or below the stack guard
    BAD_PORT = "bad_port"  # port I/O the ABI does not define
    TRIPLE_FAULT = "triple_fault"  # the vCPU shut down
    INTERNAL_ERROR = "internal_error"  # KVM could not run or emulate the guest
    UNKNOWN_EXIT = "unknown_exit"  # a KVM exit reason the runtime does not expect
    MALFORMED_RECORD = "malformed_record"  # the guest wrote a record that fails checks


class WasmTrapKind(enum.StrEnum):
    """The Wasm trap codes of the engine guest (guests/wasm/wasm_abi.h WASM_TRAP_*)."""

    UNREACHABLE = "unreachable"
    MEMORY_OOB = "memory_oob"
    DIV_ZERO = "div_zero"
    INT_OVERFLOW = "int_overflow"
    INVALID_CONVERSION = "invalid_conversion"
    INDIRECT_TYPE_MISMATCH = "indirect_type_mismatch"
    UNDEFINED_ELEMENT = "undefined_element"
    UNINITIALIZED_ELEMENT = "uninitialized_element"
    STACK_EXHAUSTED = "stack_exhausted"
    TABLE_OOB = "table_oob"
    NULL_REFERENCE = "null_reference"
    UNCAUGHT_EXCEPTION = "uncaught_exception"  # a Wasm exception (throw) left the call


class SandboxError(Exception):
    """Base class of every error this package raises.

    Every subclass pickles with its type, message and attributes (`kind`, `vector`,
    `errno`...), whatever its constructor takes: an error crosses processes as itself
    (the Ray cluster pool re-raises a node's error in the caller). Its `__cause__`
    travels too if it pickles; otherwise it is left behind."""

    poisons: ClassVar[bool] = False

    def __reduce__(self) -> tuple[Any, ...]:
        state = dict(self.__dict__)
        cause = self.__cause__
        if cause is not None:
            try:
                pickle.dumps(cause)
            except Exception:  # a cause that cannot travel is left behind
                cause = None
        if cause is not None:
            state["__cause__"] = cause
        return (_rebuild, (type(self), self.args), state)

    def __setstate__(self, state: dict[str, Any] | None) -> None:
        state = dict(state or {})
        cause = state.pop("__cause__", None)
        self.__dict__.update(state)
        if isinstance(cause, BaseException):
            self.__cause__ = cause


def _rebuild(cls: type[SandboxError], args: tuple[Any, ...]) -> SandboxError:
    """An error of class `cls` with `args`, made without calling its constructor (whose
    parameters are not its args); pickle then restores its attributes."""
    error = cls.__new__(cls)
    error.args = args
    return error


# -- the host and the configuration ----------------------------------------------------


class KvmUnavailable(SandboxError):
    """/dev/kvm is missing, not accessible, or lacks a capability this runtime needs.
    The message says what to do about it."""


class KvmError(SandboxError):
    """A KVM ioctl (or other host system call) failed unexpectedly. `operation` names
    it, `errno` is its error number."""

    def __init__(self, operation: str, errno: int, message: str) -> None:
        super().__init__(message)
        self.operation = operation
        self.errno = errno


class ConfigError(SandboxError, ValueError):
    """A configuration that cannot work, e.g. a guest that does not fit in memory."""


class GuestNotFound(SandboxError, FileNotFoundError):
    """No guest file of that path, and no bundled guest of that name."""


class GuestAbiMismatch(SandboxError):
    """The guest file is not a guest of this ABI version (or not a usable guest ELF)."""


class GuestBuildError(SandboxError):
    """The C compiler failed to build a guest (sandbox.sdk); the message carries its
    output."""


class SnapshotError(SandboxError, ValueError):
    """A snapshot file that cannot be used: not a snapshot, truncated, corrupt, not
    authenticated with the configured key, inconsistent, or made by an incompatible
    runtime. The message says which."""


# -- a call's arguments ----------------------------------------------------------------


class FunctionNotFound(SandboxError, LookupError):
    """The guest exports no function of that name."""


class ArgumentError(SandboxError, TypeError, ValueError):
    """The arguments do not match the function's declared parameters, are too large, or
    a method was given an argument it does not take."""


# -- what a call can end with ----------------------------------------------------------


class GuestAbort(SandboxError):
    """The guest ended the call with an error of its own (`sbx_abort`). The sandbox stays
    usable."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.guest_message = message


class HostFunctionError(SandboxError):
    """A host function called by the guest raised; the original is chained as
    `__cause__`. The sandbox stays usable."""


class GuestTrap(SandboxError):
    """The guest stopped on a CPU exception or another fault the host detected.

    `kind` names it (a TrapKind: "page_fault", "stack_overflow", "invalid_opcode",
    "divide_error", "general_protection", "bad_port", "triple_fault", ...); `vector` is
    the exception vector (None if the fault was not a CPU exception); `rip` the faulting
    instruction; `address` the faulting address of a page fault (CR2); `error_code` the
    exception's error code. The sandbox is poisoned until it is restored.
    """

    poisons = True

    def __init__(
        self,
        message: str,
        *,
        kind: str,
        vector: int | None = None,
        rip: int | None = None,
        address: int | None = None,
        error_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.vector = vector
        self.rip = rip
        self.address = address
        self.error_code = error_code


class GuestProtocolError(GuestTrap):
    """The guest wrote a malformed record (bad length, offset, tag or UTF-8). It is
    treated like a trap: the sandbox is poisoned."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind=TrapKind.MALFORMED_RECORD)


class CallTimeout(SandboxError, TimeoutError):
    """The call ran past its time limit; the guest was stopped and the sandbox poisoned."""

    poisons = True


class CallCancelled(SandboxError):
    """Another thread cancelled the call (`Sandbox.cancel`); the sandbox is poisoned."""

    poisons = True


# -- the sandbox's state ---------------------------------------------------------------


class SandboxPoisoned(SandboxError):
    """The sandbox trapped or timed out earlier and must be restored before it is used."""


class SandboxClosed(SandboxError):
    """The sandbox was closed."""


class SandboxBusy(SandboxError):
    """A method that needs the sandbox between calls (call, snapshot, restore) was
    called from inside one of its own calls: from a host function, the output callback,
    a Wasm import or WASI. Raised at once, never waited on (it would wait forever)."""


class PoolFull(SandboxError):
    """Every member of a SandboxPool is busy and `max_queue` callers already wait (the
    function host answers 429). Not raised for a call that waits in a thread."""


class PoolTimeout(SandboxError, TimeoutError):
    """No member of a SandboxPool became free within the caller's `wait` (the function
    host answers 503)."""


# -- Wasm ----------------------------------------------------------------------------------


class WasmModuleError(SandboxError, ValueError):
    """The bytes are not a Wasm module the engine can run: `kind` is "malformed"
    (not a well-formed binary), "invalid" (fails validation, or uses a feature beyond
    Wasm 2.0 such as exception handling, relaxed SIMD or threads: then the message ends
    with `sandbox.wasm.module.BEYOND_WASM2`), "too_large" or "unreadable" (the file could
    not be read)."""

    def __init__(self, message: str, *, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class WasmTrap(GuestTrap):
    """A Wasm trap: `kind` is a WasmTrapKind ("unreachable", "memory_oob", "div_zero",
    ...); the message is the spec's text ("integer divide by zero", ...). Unlike other
    GuestTraps it does not poison the sandbox: the engine unwound the Wasm call."""

    poisons = False


class WasmLinkError(SandboxError, LookupError):
    """An import could not be bound (missing, or of another type)."""


class WasmEngineError(SandboxError):
    """The engine refused an operation: the module uses something it does not implement,
    its limits were exceeded, or the call named no such export."""


# -- Python functions (sandbox/python/) ----------------------------------------------------


class PythonError(SandboxError):
    """Guest code raised an exception that it did not catch. `type_name` is its class's
    qualified name ("ValueError", "MemoryError", "RecursionError", "json.JSONDecodeError"
    is "JSONDecodeError" with `module` "json.decoder"), `message` its str(),
    `guest_traceback` the formatted traceback (file names and line numbers of the host
    source the function came from). The sandbox stays usable: the interpreter caught
    it."""

    def __init__(self, type_name: str, module: str, message: str, guest_traceback: str) -> None:
        text = f"{type_name}: {message}" if message else type_name
        if guest_traceback:
            text += "\n\nguest traceback:\n" + guest_traceback.rstrip()
        super().__init__(text)
        self.type_name = type_name
        self.module = module
        self.message = message
        self.guest_traceback = guest_traceback


class PythonExit(PythonError):
    """Guest code raised SystemExit (sys.exit(code): `code`, an int, None or a str), or
    called os._exit(code) (then the interpreter did not unwind: the sandbox is poisoned
    until restored)."""

    def __init__(
        self, code: int | str | None, guest_traceback: str = "", *, unwound: bool = True
    ) -> None:
        super().__init__(
            "SystemExit", "builtins", "" if code is None else str(code), guest_traceback
        )
        self.code = code
        self.unwound = unwound


class PythonCrash(SandboxError):
    """The interpreter itself stopped: a Wasm trap inside CPython (`kind`:
    "stack_exhausted" for a C stack overflow, "unreachable" for abort(), "memory_oob",
    ...), or it broke the runtime's protocol. Its state is lost: the sandbox is
    poisoned until restored (a pool, or reset="per_call", does that itself). The trap is
    chained as `__cause__`."""

    poisons = True

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class PythonStartError(SandboxError):
    """The interpreter did not start (a package failed to import, the build is not the
    one this runtime knows...). The message carries the end of its stderr."""
