"""Trap decoding: an abnormal `Exit` of the run loop -> the `GuestTrap` that describes it.

A pure function of the exit and the guest's memory layout (no KVM), so every path is
testable without a VM.
"""

from __future__ import annotations

from . import x86_64 as x86
from .errors import GuestTrap, TrapKind
from .exits import KVM_EXIT_NAMES, Exit, ExitKind
from .layout import Layout

_VECTOR_KINDS = {vector: TrapKind(name) for vector, name in x86.EXCEPTION_NAMES.items()}


def decode_trap(exit: Exit, layout: Layout) -> GuestTrap:
    """The GuestTrap for an exit of kind TRAP, BAD_PORT, SHUTDOWN, INTERNAL or UNKNOWN.
    The message says what happened and where (the region of the layout)."""
    kind = exit.kind
    if kind == ExitKind.TRAP:
        return _exception(exit, layout)
    if kind == ExitKind.BAD_PORT:
        size, direction = exit.detail & 0xFF, exit.detail >> 8
        how = ""
        if size:
            access = "in" if direction == 0 else "out"
            how = f" ({size}-byte {access})"
        return GuestTrap(
            f"the guest used I/O port 0x{exit.port:x}{how} in a way the ABI does not define",
            kind=TrapKind.BAD_PORT,
        )
    if kind == ExitKind.SHUTDOWN:
        return GuestTrap("triple fault: the guest's CPU shut down", kind=TrapKind.TRIPLE_FAULT)
    if kind == ExitKind.INTERNAL:
        return GuestTrap(
            f"KVM could not run the guest (internal error, suberror {exit.detail})",
            kind=TrapKind.INTERNAL_ERROR,
        )
    reason = KVM_EXIT_NAMES.get(exit.kvm_exit_reason, str(exit.kvm_exit_reason))
    return GuestTrap(f"unexpected KVM exit reason {reason}", kind=TrapKind.UNKNOWN_EXIT)


def _exception(exit: Exit, layout: Layout) -> GuestTrap:
    vector, rip, cr2, err = exit.vector, exit.rip, exit.cr2, exit.error_code
    where = f"at rip 0x{rip:x} ({layout.region_of(rip)})"
    if vector == x86.VECTOR_PAGE_FAULT:
        if err & x86.PF_INSTRUCTION:
            access = "instruction fetch"
        elif err & x86.PF_WRITE:
            access = "write"
        else:
            access = "read"
        region = layout.region_of(cr2)
        # The stack pointer itself below the stack (or the fault in the guard): a frame
        # past the stack's end, whatever the address written.
        if region == "stack guard page" or exit.rsp < layout.stack_base:
            kind, what, detail = TrapKind.STACK_OVERFLOW, "stack overflow", region
        else:
            why = "protection violation" if err & x86.PF_PRESENT else "not mapped"
            kind, what, detail = TrapKind.PAGE_FAULT, "page fault", f"{region}, {why}"
        return GuestTrap(
            f"{what}: {access} of 0x{cr2:x} ({detail}) {where}",
            kind=kind,
            vector=vector,
            rip=rip,
            address=cr2,
            error_code=err,
        )
    kind = _VECTOR_KINDS.get(vector, TrapKind.RESERVED_VECTOR)
    name = kind.value.replace("_", " ") if kind != TrapKind.RESERVED_VECTOR else "exception"
    return GuestTrap(
        f"{name} (vector {vector}, error code 0x{err:x}) {where}",
        kind=kind,
        vector=vector,
        rip=rip,
        error_code=err,
    )
