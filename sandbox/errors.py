"""The exception hierarchy. `SandboxError` is the base of all of them and is never raised
itself; argument errors are also `TypeError`/`ValueError` so ordinary code catches them."""

from __future__ import annotations


class SandboxError(Exception):
    """Base class of every error this package raises."""


class KvmUnavailable(SandboxError):
    """/dev/kvm is missing, not accessible, or lacks a capability this runtime needs.
    The message says what to do about it."""


class KvmError(SandboxError):
    """A KVM ioctl (or other host system call) failed unexpectedly."""

    def __init__(self, operation: str, errno: int, message: str) -> None:
        super().__init__(message)
        self.operation = operation
        self.errno = errno


class GuestAbiMismatch(SandboxError):
    """The guest file is not a guest of this ABI version (or not a usable guest ELF)."""


class ConfigError(SandboxError, ValueError):
    """A configuration that cannot work, e.g. a guest that does not fit in memory."""


class GuestTrap(SandboxError):
    """The guest stopped on a CPU exception or another fault the host detected.

    `kind` names it ("page_fault", "stack_overflow", "invalid_opcode", "divide_error",
    "general_protection", "bad_port", "triple_fault", ...); `vector` is the exception
    vector (None if the fault was not a CPU exception); `rip` the faulting instruction;
    `address` the faulting address of a page fault (CR2); `error_code` the exception's
    error code. The sandbox is poisoned until it is restored.
    """

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


class GuestAbort(SandboxError):
    """The guest ended the call with an error of its own (`sbx_abort`). The sandbox stays
    usable."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.guest_message = message


class CallTimeout(SandboxError, TimeoutError):
    """The call ran past its time limit; the guest was stopped and the sandbox poisoned."""


class CallCancelled(SandboxError):
    """Another thread cancelled the call (`Sandbox.cancel`); the sandbox is poisoned."""


class FunctionNotFound(SandboxError, LookupError):
    """The guest exports no function of that name."""


class ArgumentError(SandboxError, TypeError, ValueError):
    """The arguments do not match the function's declared parameters, or are too large."""


class HostFunctionError(SandboxError):
    """A host function called by the guest raised; the original is chained as
    `__cause__`. The sandbox stays usable."""


class GuestProtocolError(GuestTrap):
    """The guest wrote a malformed record (bad length, offset, tag or UTF-8). It is
    treated like a trap: the sandbox is poisoned."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="malformed_record")


class SandboxPoisoned(SandboxError):
    """The sandbox trapped or timed out earlier and must be restored before it is used."""


class SandboxClosed(SandboxError):
    """The sandbox was closed."""


class SandboxBusy(SandboxError):
    """Another thread is in a call on this sandbox (calls are never interleaved)."""


class GuestNotFound(SandboxError, FileNotFoundError):
    """No guest file of that path, and no bundled guest of that name."""
