"""cffi builder for sandbox._sbx_native (out-of-line API mode).

The cdef is assembled from these sources so that nothing is restated by hand: the guest
ABI header (guests/include/sbx_abi.h), the Wasm engine's ABI header
(guests/wasm/wasm_abi.h), the native headers (native/sbx_vcpu.h: the run loop,
sbx_signal.h: kicks and watched signals, sbx_memory.h: guest memory, sbx_machine.h:
the boot of a machine), and the
KVM constants and struct layouts below, whose values cffi takes from <linux/kvm.h> when
it compiles the extension (`...` means "ask the compiler").
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parent.parent
NATIVE_DIR = ROOT / "native"
ABI_HEADER = ROOT / "guests" / "include" / "sbx_abi.h"
WASM_ABI_HEADER = ROOT / "guests" / "wasm" / "wasm_abi.h"
VCPU_HEADER = NATIVE_DIR / "sbx_vcpu.h"
SIGNAL_HEADER = NATIVE_DIR / "sbx_signal.h"
MEMORY_HEADER = NATIVE_DIR / "sbx_memory.h"
MACHINE_HEADER = NATIVE_DIR / "sbx_machine.h"


def package_version() -> str:
    """sandbox/_version.py's version (read, not imported: the package needs this build)."""
    text = (ROOT / "sandbox" / "_version.py").read_text()
    match = re.search(r'^__version__\s*=\s*"([^"]+)"', text, re.M)
    if not match:
        raise RuntimeError("__version__ not found in sandbox/_version.py")
    return match.group(1)


KVM_IOCTLS = """
KVM_GET_API_VERSION KVM_CREATE_VM KVM_CHECK_EXTENSION KVM_GET_VCPU_MMAP_SIZE
KVM_GET_SUPPORTED_CPUID KVM_CREATE_VCPU KVM_SET_USER_MEMORY_REGION KVM_RUN
KVM_GET_REGS KVM_SET_REGS KVM_GET_SREGS
KVM_GET_XCRS KVM_SET_XCRS KVM_GET_XSAVE KVM_SET_XSAVE
""".split()

# Capabilities (checked or reported by `python -m sandbox info`) and the exit reasons
# (named in the message of an unexpected exit).
KVM_CONSTANTS = """
KVM_API_VERSION
KVM_CAP_USER_MEMORY KVM_CAP_IMMEDIATE_EXIT KVM_CAP_EXT_CPUID KVM_CAP_XSAVE KVM_CAP_XCRS
KVM_CAP_NR_MEMSLOTS KVM_CAP_MAX_VCPUS KVM_CAP_READONLY_MEM
KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 KVM_CAP_DIRTY_LOG_RING KVM_CAP_SYNC_REGS
KVM_EXIT_UNKNOWN KVM_EXIT_EXCEPTION KVM_EXIT_IO KVM_EXIT_HYPERCALL KVM_EXIT_DEBUG
KVM_EXIT_HLT KVM_EXIT_MMIO KVM_EXIT_IRQ_WINDOW_OPEN KVM_EXIT_SHUTDOWN KVM_EXIT_FAIL_ENTRY
KVM_EXIT_INTR KVM_EXIT_SET_TPR KVM_EXIT_TPR_ACCESS KVM_EXIT_NMI KVM_EXIT_INTERNAL_ERROR
KVM_EXIT_SYSTEM_EVENT
""".split()

# Struct layouts: the fields Python touches; `...;` lets the compiler fill in the rest.
KVM_STRUCTS = """
struct kvm_regs {
    uint64_t rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp;
    uint64_t r8, r9, r10, r11, r12, r13, r14, r15;
    uint64_t rip, rflags;
};
struct kvm_segment {
    uint64_t base; uint32_t limit; uint16_t selector;
    uint8_t type, present, dpl, db, s, l, g, avl, unusable;
    ...;
};
struct kvm_dtable { uint64_t base; uint16_t limit; ...; };
struct kvm_sregs {
    struct kvm_segment cs, ds, es, fs, gs, ss, tr, ldt;
    struct kvm_dtable gdt, idt;
    uint64_t cr0, cr2, cr3, cr4, cr8, efer, apic_base;
    ...;
};
struct kvm_userspace_memory_region {
    uint32_t slot; uint32_t flags; uint64_t guest_phys_addr; uint64_t memory_size;
    uint64_t userspace_addr;
};
struct kvm_cpuid_entry2 {
    uint32_t function, index, flags, eax, ebx, ecx, edx;
    ...;
};
struct kvm_cpuid2 { uint32_t nent; ...; };
struct kvm_xcr { uint32_t xcr; uint64_t value; ...; };
struct kvm_xcrs { uint32_t nr_xcrs; uint32_t flags; struct kvm_xcr xcrs[16]; ...; };
struct kvm_xsave { uint32_t region[1024]; ...; };
struct kvm_run {
    uint8_t request_interrupt_window; uint8_t immediate_exit;
    uint32_t exit_reason;
    ...;
};
"""


def _string_defines_as_constants(header: str) -> str:
    """cdef only parses integer #defines: `#define NAME "text"` becomes a string constant
    whose value the C compiler takes from the header."""
    return re.sub(
        r'^#define (\w+) "[^"]*"$', r"static const char *const \1;", header, flags=re.M
    )


def _defines(names: list[str]) -> str:
    return "\n".join(f"#define {name} ..." for name in names)


ffibuilder = FFI()
ffibuilder.cdef(ABI_HEADER.read_text())
ffibuilder.cdef(_string_defines_as_constants(WASM_ABI_HEADER.read_text()))
ffibuilder.cdef(VCPU_HEADER.read_text())
ffibuilder.cdef(SIGNAL_HEADER.read_text())
ffibuilder.cdef(MEMORY_HEADER.read_text())
ffibuilder.cdef(MACHINE_HEADER.read_text())
ffibuilder.cdef(_defines(KVM_IOCTLS) + "\n" + _defines(KVM_CONSTANTS))
ffibuilder.cdef(KVM_STRUCTS)
ffibuilder.set_source(
    "sandbox._sbx_native",
    '#include <stdint.h>\n#include <linux/kvm.h>\n#include "sbx_abi.h"\n#include "wasm_abi.h"\n'
    '#include "sbx_vcpu.h"\n#include "sbx_signal.h"\n#include "sbx_memory.h"\n#include "sbx_machine.h"\n',
    sources=[os.path.relpath(NATIVE_DIR / f, ROOT) for f in ("sbx_vcpu.c", "sbx_signal.c", "sbx_memory.c", "sbx_machine.c")],
    include_dirs=[
        os.path.relpath(p, ROOT) for p in (NATIVE_DIR, ABI_HEADER.parent, WASM_ABI_HEADER.parent)
    ],
    define_macros=[("SBX_PACKAGE_VERSION", f'"{package_version()}"')],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-std=gnu11"],
    libraries=["rt"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
