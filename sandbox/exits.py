"""`Exit`: what ended one run of the vCPU (native/sbx_vcpu.h), as a frozen record.

The native run loop handles every exit that needs no Python and returns only for these
kinds; `Vcpu.run` turns its answer into an `Exit`. Only traps and the other abnormal
exits carry more than a kind and a 32-bit value, and only they read the native exit
struct field by field (the common exits cost one integer).
"""

from __future__ import annotations

import enum
from typing import Any, NamedTuple

from ._native import lib


class ExitKind(enum.IntEnum):
    """Why the run loop returned (SBX_EXIT_*)."""

    RETURN = lib.SBX_EXIT_RETURN  # a call finished: `value` is the result record's offset
    HOST_CALL = lib.SBX_EXIT_HOST_CALL  # the guest calls the host: `value` is the record's
    PRINT = lib.SBX_EXIT_PRINT  # the guest flushes its output: `value` is the record's
    TRAP = lib.SBX_EXIT_TRAP  # a CPU exception, reported by the ring-0 stub
    BAD_PORT = lib.SBX_EXIT_BAD_PORT  # port I/O the ABI does not define
    KICKED = lib.SBX_EXIT_KICKED  # the deadline passed, or another thread kicked the vCPU
    SHUTDOWN = lib.SBX_EXIT_SHUTDOWN  # triple fault
    INTERNAL = lib.SBX_EXIT_INTERNAL  # KVM could not run or emulate the guest
    UNKNOWN = lib.SBX_EXIT_UNKNOWN  # a KVM exit reason the runtime does not expect
    INTERRUPTED = lib.SBX_EXIT_INTERRUPTED  # a signal: Python's handlers run, then resume


# ExitKind by value, as a tuple: the run loop's answer is decoded by indexing.
_VALUES = {int(kind) for kind in ExitKind}
_KINDS: tuple[ExitKind | None, ...] = tuple(
    ExitKind(k) if k in _VALUES else None for k in range(max(ExitKind) + 1)
)
# Exits whose struct fields say more than kind and value.
_DETAILED = frozenset(
    {ExitKind.TRAP, ExitKind.BAD_PORT, ExitKind.SHUTDOWN, ExitKind.INTERNAL, ExitKind.UNKNOWN}
)

# KVM_EXIT_* names by number, for messages.
KVM_EXIT_NAMES: dict[int, str] = {
    getattr(lib, name): name for name in dir(lib) if name.startswith("KVM_EXIT_")
}


class Exit(NamedTuple):
    """One exit of the run loop. Fields other than `kind` and `value` are set only for
    the kinds they belong to (zero otherwise)."""

    kind: ExitKind
    value: int = 0  # RETURN/HOST_CALL/PRINT: the record offset the guest wrote
    kvm_exit_reason: int = 0  # KVM_EXIT_* of the last KVM exit
    port: int = 0  # BAD_PORT: the port
    vector: int = 0  # TRAP: exception vector
    error_code: int = 0  # TRAP: error code (0 for vectors that push none)
    rip: int = 0  # TRAP: faulting RIP
    cr2: int = 0  # TRAP: fault address of a page fault
    rsp: int = 0  # TRAP: RSP at the fault
    detail: int = 0  # INTERNAL: KVM's suberror; BAD_PORT: size | direction << 8
    pending_io: bool = False  # KVM must complete the exit before a new state is loaded

    @classmethod
    def decode(cls, answer: int, raw: Any) -> Exit:
        """The Exit for the run loop's non-negative `answer` ((kind << 32) | value);
        `raw` is the `struct sbx_exit` it filled. The exits of a call repeat (the same
        kind at the same record offset), so those without details are made once."""
        exit = COMMON_EXITS.get(answer)
        if exit is not None:
            return exit
        kind = _KINDS[answer >> 32]
        if kind is None:  # pragma: no cover - the C code returns only SBX_EXIT_* kinds
            raise ValueError(f"unknown exit kind {answer >> 32}")
        if kind not in _DETAILED:
            exit = cls(kind, answer & 0xFFFF_FFFF)
            if len(COMMON_EXITS) < _COMMON_MAX:
                COMMON_EXITS[answer] = exit
            return exit
        return cls(
            kind,
            int(raw.value),
            int(raw.kvm_exit_reason),
            int(raw.port),
            int(raw.vector),
            int(raw.error_code),
            int(raw.rip),
            int(raw.cr2),
            int(raw.rsp),
            int(raw.detail),
            bool(raw.pending_io),
        )


# Exits without details, by the run loop's answer (immutable, so shared; the hot path
# looks them up here before calling Exit.decode).
COMMON_EXITS: dict[int, Exit] = {}
_COMMON_MAX = 4096
