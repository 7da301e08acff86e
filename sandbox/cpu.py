"""The vCPU's state: `CpuState` (what a snapshot saves and a restore loads) and
`CpuSetup` (the long-mode, ring-3 state every sandbox starts from, per process).

Long mode with paging, CPL 3 from the first instruction (SDM 9.8.5): the state is loaded
directly through kvm_run's sync area (KVM_SET_SREGS semantics) rather than by running
mode-switch code, which would have to run in ring 0 (emulated ~3000x slower on nested
KVM). Ring 3 can change the general registers, RFLAGS' user flags, the x87/SSE/AVX
registers and MXCSR, the data segment selectors and (where the CPU lets ring 3 run
WRFSBASE/WRGSBASE, as it does on this project's nested hosts whatever CR4.FSGSBASE
says) the FS and GS bases; a restore loads all of them. It cannot change control
registers, EFER, XCR0, descriptor tables or any other MSR (SWAPGS, WRMSR and XSETBV are
ring 0 only), so `check` can hold a loaded state to the setup's values.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

from . import x86_64 as x86
from ._native import ffi
from .kvm import Kvm
from .layout import GDT, GDT_LIMIT, IDT, IDT_LIMIT, PML4, TSS, Layout


@dataclass(frozen=True, eq=False)
class CpuState:
    """The vCPU state a snapshot restores (cffi structs, owned by this object)."""

    regs: Any  # struct kvm_regs *
    sregs: Any  # struct kvm_sregs *
    xsave: Any | None  # struct kvm_xsave *; None: the vCPU's reset state
    xcrs: Any | None  # struct kvm_xcrs *; None: not supported by this CPU

    @property
    def rip(self) -> int:
        return int(self.regs.rip)


_SEGMENT_FIELDS = ("base", "limit", "selector", "type", "present", "dpl", "db", "s", "l", "g")
_DATA_SEGMENTS = ("ds", "es", "fs", "gs")


@dataclass(frozen=True)
class CpuSetup:
    """The vCPU state every sandbox starts from, per process (it depends on the CPU)."""

    sregs: Any  # struct kvm_sregs *
    xcrs: Any | None  # struct kvm_xcrs *, None without XSAVE
    xsave: Any  # struct kvm_xsave *: the FPU/SSE state of a vCPU after reset
    xsave_size: int  # bytes of the XSAVE area (standard form) for XCR0's components
    _reset_xsave_memo: weakref.WeakKeyDictionary[Any, bool] = field(
        default_factory=weakref.WeakKeyDictionary, compare=False, repr=False
    )

    def initial_state(self, layout: Layout, entry: int) -> CpuState:
        """The state a guest starts in: at `entry`, its stack empty, the boot info's
        address as its first argument (SysV: rdi)."""
        regs = ffi.new("struct kvm_regs *")
        regs.rip = entry
        regs.rsp = layout.stack_top
        regs.rdi = layout.boot_info
        regs.rflags = x86.RFLAGS_RESERVED
        sregs = ffi.new("struct kvm_sregs *")
        ffi.memmove(sregs, self.sregs, ffi.sizeof("struct kvm_sregs"))
        return CpuState(regs, sregs, self.xsave, self.xcrs)

    def is_reset_xsave(self, xsave: Any) -> bool:
        """Whether the XSAVE area `xsave` holds the registers of a new vCPU (then loading
        it into one changes nothing and KVM_SET_XSAVE, ~6-15 us, can be skipped). The
        guest SDK zeroes the vector registers before every return, so a snapshot taken
        between calls usually does. Every byte is compared except XSTATE_BV (bytes
        512-519 of the area, SDM 13.4.2), which records which components were in use,
        not their values: KVM_GET_XSAVE writes a component's initial values when it is
        not in use, so equal bytes elsewhere mean equal registers."""
        if xsave is self.xsave:
            return True
        known = self._reset_xsave_memo.get(xsave)  # a snapshot's area never changes
        if known is None:
            ours, reset = ffi.buffer(xsave), ffi.buffer(self.xsave)
            known = bool(ours[:512] == reset[:512] and ours[520:] == reset[520:])
            self._reset_xsave_memo[xsave] = known
        return known

    def xcr0(self, xcrs: Any | None) -> int | None:
        """XCR0 in `xcrs` (None: no XSAVE)."""
        if xcrs is None:
            return None
        for i in range(int(xcrs.nr_xcrs)):
            if xcrs.xcrs[i].xcr == 0:
                return int(xcrs.xcrs[i].value)
        return None

    def check(self, cpu: CpuState, layout: Layout, code: tuple[int, int]) -> str | None:
        """Why `cpu` is not a state this runtime could have produced for `layout` (None
        if it is): the special registers must be the setup's, up to what ring 3 can
        change; RIP must lie in the guest's code (`code`: start, end), RSP in its stack,
        RFLAGS hold only user flags; XCR0 must be the setup's. For states read from
        snapshot files, which are untrusted."""
        sregs, setup = cpu.sregs, self.sregs
        for name in ("cr0", "cr3", "cr4", "cr8", "efer", "apic_base"):
            ours, theirs = getattr(sregs, name), getattr(setup, name)
            if ours != theirs:
                return f"{name} is 0x{ours:x}, the runtime sets 0x{theirs:x}"
        for name in ("gdt", "idt"):
            table, wanted = getattr(sregs, name), getattr(setup, name)
            if (table.base, table.limit) != (wanted.base, wanted.limit):
                return f"the {name.upper()} is not the runtime's"
        for name in ("cs", "ss", "tr", "ldt"):
            if not _same_segment(getattr(sregs, name), getattr(setup, name)):
                return f"segment {name} is not the runtime's (a ring-3 {name} is required)"
        for name in _DATA_SEGMENTS:
            seg = getattr(sregs, name)
            if not seg.unusable and (seg.dpl != 3 or seg.selector & 3 != 3 or not seg.s):
                return f"segment {name} is not a ring-3 data segment"
        if any(ffi.buffer(sregs, ffi.sizeof("struct kvm_sregs"))[-32:]):
            return "an interrupt is pending (interrupt_bitmap is not empty)"
        regs = cpu.regs
        if not code[0] <= regs.rip < code[1]:
            return f"rip 0x{regs.rip:x} is outside the guest's code"
        if not layout.stack_base <= regs.rsp <= layout.stack_top:
            return f"rsp 0x{regs.rsp:x} is outside the guest's stack"
        if regs.rflags & ~x86.RFLAGS_USER != x86.RFLAGS_RESERVED:
            return f"rflags 0x{regs.rflags:x} holds flags ring 3 cannot set (IOPL, IF, ...)"
        if self.xcr0(cpu.xcrs) != self.xcr0(self.xcrs):
            return "XCR0 is not the runtime's"
        return None


def _same_segment(a: Any, b: Any) -> bool:
    return all(getattr(a, f) == getattr(b, f) for f in _SEGMENT_FIELDS) and bool(
        a.unusable
    ) == bool(b.unusable)


_setup: CpuSetup | None = None
_setup_lock = threading.Lock()


def cpu_setup() -> CpuSetup:
    """The process's CpuSetup, built on first use from a scratch vCPU's reset state."""
    global _setup
    if _setup is not None:  # built: no lock on the spawn path
        return _setup
    with _setup_lock:
        if _setup is None:
            kvm = Kvm.shared()
            vm = kvm.create_vm()
            try:
                vcpu = vm.create_vcpu()
                try:
                    _setup = _build(kvm, vcpu.get_sregs(), vcpu.get_xsave())
                finally:
                    vcpu.close()
            finally:
                vm.close()
        return _setup


def _build(kvm: Kvm, sregs: Any, xsave: Any) -> CpuSetup:
    cr4 = x86.CR4_PAE | x86.CR4_OSFXSR | x86.CR4_OSXMMEXCPT
    xcrs = None
    xsave_size = x86.XSAVE_LEGACY_SIZE + x86.XSAVE_HEADER_SIZE
    xsave_leaf = kvm.cpuid_entry(x86.CPUID_XSAVE_LEAF)
    if kvm.has_cpu_feature(x86.CPUID_XSAVE) and xsave_leaf is not None:
        cr4 |= x86.CR4_OSXSAVE
        xcr0 = x86.XCR0_X87 | x86.XCR0_SSE | (xsave_leaf.eax & x86.XCR0_AVX)
        xcrs = ffi.new("struct kvm_xcrs *")
        xcrs.nr_xcrs = 1
        xcrs.xcrs[0].xcr = 0
        xcrs.xcrs[0].value = xcr0
        if xcr0 & x86.XCR0_AVX:  # sub-leaf 2: size (eax) and offset (ebx) of the AVX state
            avx = kvm.cpuid_entry(x86.CPUID_XSAVE_LEAF, 2)
            if avx is not None:
                xsave_size = max(xsave_size, avx.ebx + avx.eax)
    for feature, bit in (
        (x86.CPUID_SMEP, x86.CR4_SMEP),
        (x86.CPUID_SMAP, x86.CR4_SMAP),
        (x86.CPUID_UMIP, x86.CR4_UMIP),
    ):
        if kvm.has_cpu_feature(feature):
            cr4 |= bit
    sregs.cr0 = x86.CR0_PE | x86.CR0_MP | x86.CR0_ET | x86.CR0_NE | x86.CR0_WP | x86.CR0_PG
    sregs.cr3 = PML4
    sregs.cr4 = cr4
    sregs.efer = x86.EFER_LME | x86.EFER_LMA | x86.EFER_NXE
    for seg, selector, code in (
        (sregs.cs, x86.SEL_USER_CODE, True),
        (sregs.ss, x86.SEL_USER_DATA, False),
        (sregs.ds, x86.SEL_USER_DATA, False),
        (sregs.es, x86.SEL_USER_DATA, False),
        (sregs.fs, x86.SEL_USER_DATA, False),
        (sregs.gs, x86.SEL_USER_DATA, False),
    ):
        seg.base, seg.limit, seg.selector = 0, 0xFFFFFFFF, selector
        seg.type = x86.SEG_TYPE_CODE_XR_ACCESSED if code else x86.SEG_TYPE_DATA_RW_ACCESSED
        seg.present, seg.dpl, seg.s, seg.g, seg.avl, seg.unusable = 1, 3, 1, 1, 0, 0
        seg.l, seg.db = (1, 0) if code else (0, 1)
    tr = sregs.tr
    tr.base, tr.limit, tr.selector = TSS, x86.TSS_SIZE + 32, x86.SEL_TSS
    tr.type, tr.present, tr.dpl, tr.s, tr.l, tr.db, tr.g, tr.unusable = (
        x86.SEG_TYPE_TSS64_BUSY,
        1,
        0,
        0,
        0,
        0,
        0,
        0,
    )
    sregs.gdt.base, sregs.gdt.limit = GDT, GDT_LIMIT
    sregs.idt.base, sregs.idt.limit = IDT, IDT_LIMIT
    return CpuSetup(sregs, xcrs, xsave, xsave_size)
