"""x86-64 architectural constants and encoders: control registers, descriptors, paging.

Section numbers refer to the Intel SDM, volume 3A.
"""

from __future__ import annotations

import struct

PAGE_SIZE = 4096
PAGE_SHIFT = 12

# Control registers (SDM 2.5).
CR0_PE = 1 << 0  # protected mode
CR0_MP = 1 << 1  # monitor coprocessor: FWAIT honours TS (needed with NE for SSE)
CR0_ET = 1 << 4  # extension type: always 1 on modern CPUs
CR0_NE = 1 << 5  # native x87 error reporting (#MF instead of IRQ13)
CR0_WP = 1 << 16  # ring 0 honours read-only pages too
CR0_PG = 1 << 31  # paging
CR4_PAE = 1 << 5  # required for long mode
CR4_OSFXSR = 1 << 9  # FXSAVE/FXRSTOR and SSE enabled
CR4_OSXMMEXCPT = 1 << 10  # SIMD floating-point exceptions as #XM
CR4_UMIP = 1 << 11  # SGDT/SIDT/SLDT/SMSW/STR are #GP in ring 3 (no layout leaks)
CR4_OSXSAVE = 1 << 18  # XSAVE and XCR0 (AVX) enabled
CR4_SMEP = 1 << 20  # ring 0 never executes user pages
CR4_SMAP = 1 << 21  # ring 0 never touches user pages

# EFER (SDM 2.2.1).
EFER_SCE = 1 << 0
EFER_LME = 1 << 8  # long mode enable
EFER_LMA = 1 << 10  # long mode active
EFER_NXE = 1 << 11  # execute-disable bit in page tables

# RFLAGS (SDM 2.3): bit 1 is reserved and always 1; IF=0 and IOPL=0.
RFLAGS_RESERVED = 1 << 1
# The flags ring-3 code can change itself (POPF, arithmetic, STD/CLD, STAC is ring 0):
# CF PF AF ZF SF TF DF OF, AC and ID. Anything else set (IF, IOPL, NT, RF, VM, VIF,
# VIP) is state only ring 0 could have made: a loaded state must not carry it.
RFLAGS_USER = (
    (1 << 0)
    | (1 << 2)
    | (1 << 4)
    | (1 << 6)
    | (1 << 7)
    | (1 << 8)
    | (1 << 10)
    | (1 << 11)
    | (1 << 18)
    | (1 << 21)
)

# CPUID feature bits the runtime reads (SDM vol. 2A, CPUID): (leaf, register, bit).
CPUID_XSAVE = (0x1, "ecx", 26)
CPUID_SMEP = (0x7, "ebx", 7)
CPUID_SMAP = (0x7, "ebx", 20)
CPUID_UMIP = (0x7, "ecx", 2)
CPUID_XSAVE_LEAF = 0xD  # eax: the XCR0 bits the CPU supports

# The XSAVE area in standard form (SDM vol. 1, 13.4): the legacy FXSAVE region, then the
# XSAVE header; the extended components follow at the offsets CPUID leaf 0xD gives.
XSAVE_LEGACY_SIZE = 512
XSAVE_HEADER_SIZE = 64

# XCR0 state components (SDM vol. 1, 13.3).
XCR0_X87 = 1 << 0
XCR0_SSE = 1 << 1
XCR0_AVX = 1 << 2
XCR0_AMX = (1 << 17) | (1 << 18)  # XTILECFG, XTILEDATA: the kernel may arm XFD for them

# Paging-structure entry bits (SDM 4.5).
PTE_PRESENT = 1 << 0
PTE_WRITABLE = 1 << 1
PTE_USER = 1 << 2
PTE_ACCESSED = 1 << 5
PTE_DIRTY = 1 << 6
PTE_NX = 1 << 63
PTE_ADDR_MASK = 0x000F_FFFF_FFFF_F000

# Exception vectors (SDM 6.3.1) and the ones that push an error code.
EXCEPTION_NAMES = {
    0: "divide_error",
    1: "debug",
    2: "nmi",
    3: "breakpoint",
    4: "overflow",
    5: "bound_range",
    6: "invalid_opcode",
    7: "device_not_available",
    8: "double_fault",
    10: "invalid_tss",
    11: "segment_not_present",
    12: "stack_fault",
    13: "general_protection",
    14: "page_fault",
    16: "x87_floating_point",
    17: "alignment_check",
    18: "machine_check",
    19: "simd_floating_point",
    20: "virtualization",
    21: "control_protection",
}
VECTOR_PAGE_FAULT = 14
VECTORS_WITH_ERROR_CODE = frozenset({8, 10, 11, 12, 13, 14, 17, 21, 29, 30})
NUM_EXCEPTION_VECTORS = 32

# Page-fault error code bits (SDM 4.7).
PF_PRESENT = 1 << 0
PF_WRITE = 1 << 1
PF_USER = 1 << 2
PF_INSTRUCTION = 1 << 4

# Segment selectors of the GDT built by gdt() below: index << 3 | RPL.
SEL_KERNEL_CODE = 0x08
SEL_KERNEL_DATA = 0x10
SEL_USER_DATA = 0x18 | 3
SEL_USER_CODE = 0x20 | 3
SEL_TSS = 0x28

# Descriptor types (SDM 3.4.5.1, 7.2.2).
SEG_TYPE_CODE_XR_ACCESSED = 0xB
SEG_TYPE_DATA_RW_ACCESSED = 0x3
SEG_TYPE_TSS64_BUSY = 0xB
GATE_TYPE_INTERRUPT64 = 0xE

TSS_SIZE = 104  # 64-bit TSS without the I/O bitmap (SDM 7.7)
TSS_RSP0_OFFSET = 4
TSS_IOMAP_BASE_OFFSET = 102


def segment_descriptor(*, dpl: int, code: bool) -> int:
    """A flat 64-bit code or data descriptor (SDM 3.4.5); base and limit are ignored in
    long mode except for the attribute bits."""
    type_ = SEG_TYPE_CODE_XR_ACCESSED if code else SEG_TYPE_DATA_RW_ACCESSED
    access = 0x80 | (dpl << 5) | 0x10 | type_  # present, DPL, S=1 (code/data), type
    flags = 0xA if code else 0xC  # code: G + L; data: G + D/B
    return 0xFFFF | (access << 40) | (0xF << 48) | (flags << 52)


def tss_descriptor(base: int, limit: int) -> bytes:
    """A 16-byte 64-bit TSS descriptor (SDM 7.2.3), marked available."""
    low = (
        (limit & 0xFFFF)
        | ((base & 0xFFFFFF) << 16)
        | (0x89 << 40)  # present, DPL 0, type 9 (available 64-bit TSS)
        | (((limit >> 16) & 0xF) << 48)
        | (((base >> 24) & 0xFF) << 56)
    )
    return struct.pack("<QQ", low, base >> 32)


def gdt(tss_base: int, tss_limit: int) -> bytes:
    """The GDT: null, kernel code/data, user data/code (DPL 3), TSS (selectors above)."""
    entries = [
        0,
        segment_descriptor(dpl=0, code=True),
        segment_descriptor(dpl=0, code=False),
        segment_descriptor(dpl=3, code=False),
        segment_descriptor(dpl=3, code=True),
    ]
    return struct.pack("<5Q", *entries) + tss_descriptor(tss_base, tss_limit)


def tss(rsp0: int, open_ports: frozenset[int]) -> bytes:
    """A 64-bit TSS whose RSP0 is `rsp0` and whose I/O permission bitmap (SDM 19.5.2)
    lets ring 3 use exactly `open_ports` (all below 256); any other port is #GP."""
    bitmap = bytearray(b"\xff" * 32)
    for port in open_ports:
        if not 0 <= port < 256:
            raise ValueError(f"port {port} outside the bitmap")
        bitmap[port // 8] &= ~(1 << (port % 8)) & 0xFF
    head = bytearray(TSS_SIZE)
    struct.pack_into("<Q", head, TSS_RSP0_OFFSET, rsp0)
    struct.pack_into("<H", head, TSS_IOMAP_BASE_OFFSET, TSS_SIZE)
    # The byte after the bitmap must be 0xFF and inside the limit.
    return bytes(head) + bytes(bitmap) + b"\xff"


def idt_gate(handler: int) -> bytes:
    """A 64-bit interrupt gate to `handler` in the kernel code segment, DPL 0 (so `int n`
    from ring 3 is #GP rather than a way into ring 0)."""
    access = 0x80 | GATE_TYPE_INTERRUPT64
    return struct.pack(
        "<HHBBHII",
        handler & 0xFFFF,
        SEL_KERNEL_CODE,
        0,
        access,
        (handler >> 16) & 0xFFFF,
        handler >> 32,
        0,
    )
