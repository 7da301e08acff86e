"""The restore trampoline: loading a saved FPU/SSE/AVX state without an ioctl.

Every vCPU ioctl costs ~6 us on this project's nested hosts, and a restore must reset the
vector registers (a hostile call can leave anything in them). So instead of
KVM_SET_XSAVE, the restore points the vCPU at this trampoline: a few instructions of
ring-3 code in a host-owned page (user, read and execute, never writable by the guest),
which XRSTOR the saved area, reload the two registers XRSTOR needs, and jump to the
saved RIP. Every other register, RFLAGS and the segments are loaded exactly through
kvm_run's sync area as before, and neither XRSTOR, MOV nor an indirect JMP changes
them, so when the guest's first instruction runs, the vCPU holds exactly the saved
state. The host rewrites the code and the data on every use, so whatever was left in
the page (a snapshot file is untrusted) never runs.

Page layout (offsets): 0x000 code, 0x040 saved RIP, RAX, RDX, 0x100 the XSAVE area in
standard format (64-byte aligned), up to the end of the page.

XRSTOR's requested-feature bitmap is every component ring 3 can reach (XCR0 as ring 3
reads it with XGETBV, which Machine probes once per process), not only those the saved
area holds: the components beyond the area's XSTATE_BV are put in their initial state.
That matters where ring 3 runs with more of XCR0 than the vCPU reports: PVM hosts (this
project's nested hosts) run guest ring 3 under the host's XCR0 and CR4, so a guest whose
vCPU has no XSAVE in its CPUID still uses AVX and AVX-512 (ymm upper halves, zmm16-31,
opmasks), which KVM_GET_XSAVE does not show and FXRSTOR does not reset
(tests/core/test_hostile_reuse.py). The AMX components are left out (the kernel may arm
XFD for them, and XRSTOR would then fault).

Not used, and the ioctl used instead, when RFLAGS.TF is set (single-stepping would stop
inside the trampoline) or the area does not fit or is not in standard form.
"""

from __future__ import annotations

import struct
import weakref
from typing import Any

from . import x86_64 as x86
from ._native import ffi
from .cpu import CpuSetup, CpuState
from .memory import GuestMemory

CODE = 0x000
SAVED = 0x040  # u64 rip, rax, rdx
AREA = 0x100
_SAVED = struct.Struct("<QQQ")
_RFLAGS_TF = 1 << 8
# The XSAVE header (SDM vol. 1, 13.4.2): XSTATE_BV, then XCOMP_BV, then reserved bytes.
_XSTATE_BV = x86.XSAVE_LEGACY_SIZE
_XCOMP_BV = _XSTATE_BV + 8
_HEADER_END = x86.XSAVE_LEGACY_SIZE + x86.XSAVE_HEADER_SIZE


def _rel(target: int, next_instruction: int) -> bytes:
    return struct.pack("<i", target - next_instruction)


def trampoline_code(xsave: bool) -> bytes:
    """The code at offset 0: XRSTOR64 (or FXRSTOR64 without XSAVE) of the area, then
    MOV RAX and MOV RDX from their saved slots, then JMP to the saved RIP; every operand
    RIP-relative, so the code works at any address."""
    restore = b"\x48\x0f\xae" + (b"\x2d" if xsave else b"\x0d")  # /5 xrstor64, /1 fxrstor64
    code = restore + _rel(AREA, CODE + 8)
    code += b"\x48\x8b\x05" + _rel(SAVED + 8, len(code) + 7)  # mov rax, [saved rax]
    code += b"\x48\x8b\x15" + _rel(SAVED + 16, len(code) + 7)  # mov rdx, [saved rdx]
    code += b"\xff\x25" + _rel(SAVED, len(code) + 6)  # jmp [saved rip]
    return code


_shared: dict[tuple[int, int, int | None], Trampoline] = {}


def trampoline_for(page: int, setup: CpuSetup, ring3_xcr0: int | None) -> Trampoline:
    """The Trampoline of `page` for vCPUs set up by `setup`, whose ring 3 reads XCR0 as
    `ring3_xcr0` (None: XGETBV faults there). One per process, page and setup: what it
    prepares for a saved state serves every sandbox."""
    key = (page, id(setup), ring3_xcr0)
    found = _shared.get(key)
    if found is None:
        found = _shared[key] = Trampoline(page, setup, ring3_xcr0)
    return found


class Trampoline:
    """The trampoline page at guest address `page` for vCPUs set up by `setup` (see
    trampoline_for)."""

    def __init__(self, page: int, setup: CpuSetup, ring3_xcr0: int | None) -> None:
        self.page = page
        # The components a saved area holds (KVM_GET_XSAVE's), and those XRSTOR loads or
        # resets: all that ring 3 can reach (module docstring); None: FXRSTOR64.
        xcr0 = setup.xcr0(setup.xcrs)
        self._saved = xcr0 if xcr0 is not None else x86.XCR0_X87 | x86.XCR0_SSE
        reach = ring3_xcr0 if ring3_xcr0 is not None else xcr0
        self._rfbm = None if reach is None else (reach | self._saved) & ~x86.XCR0_AMX
        self._code = trampoline_code(self._rfbm is not None)
        # FXRSTOR64 reads the legacy area only; XRSTOR64 the area's components and header.
        self._area_size = setup.xsave_size if self._rfbm is not None else x86.XSAVE_LEGACY_SIZE
        # Per saved state (immutable): the registers to load and the page's data.
        self._prepared: weakref.WeakKeyDictionary[CpuState, tuple[Any, bytes] | None] = (
            weakref.WeakKeyDictionary()
        )
        self._last_cpu: CpuState | None = None  # the state loaded last, and its entry
        self._last: tuple[Any, bytes] | None = None

    def load(self, memory: GuestMemory, cpu: CpuState) -> Any | None:
        """Writes the trampoline for `cpu` into the page and returns the registers to
        load instead of cpu.regs (None: the trampoline cannot load this state)."""
        if cpu is self._last_cpu:
            prepared = self._last
        elif cpu in self._prepared:
            prepared = self._prepared[cpu]
        else:
            prepared = self._prepared[cpu] = self._prepare(cpu)
        self._last_cpu, self._last = cpu, prepared
        if prepared is None:
            return None
        regs, data = prepared
        memory.region(self.page, len(data))[:] = data
        return regs

    def _prepare(self, cpu: CpuState) -> tuple[Any, bytes] | None:
        saved = cpu.regs
        if saved.rflags & _RFLAGS_TF or cpu.xsave is None or AREA + self._area_size > x86.PAGE_SIZE:
            return None
        area = bytearray(ffi.buffer(cpu.xsave)[: self._area_size])
        rfbm = self._rfbm
        if rfbm is not None:
            if any(area[_XCOMP_BV:_HEADER_END]):  # compacted form, or reserved bytes set
                return None
            bv = int.from_bytes(area[_XSTATE_BV:_XCOMP_BV], "little") & self._saved
            area[_XSTATE_BV:_XCOMP_BV] = bv.to_bytes(8, "little")
        data = bytearray(AREA + len(area))
        data[CODE : CODE + len(self._code)] = self._code
        _SAVED.pack_into(data, SAVED, saved.rip, saved.rax, saved.rdx)
        data[AREA:] = area
        regs = ffi.new("struct kvm_regs *")
        ffi.memmove(regs, saved, ffi.sizeof("struct kvm_regs"))
        regs.rip = self.page + CODE
        rfbm = rfbm or 0  # XRSTOR's requested-feature bitmap: EDX:EAX
        regs.rax = rfbm & 0xFFFFFFFF
        regs.rdx = rfbm >> 32
        return regs, bytes(data)
