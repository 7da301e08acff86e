"""`Machine`: the micro-VM under a sandbox: its memory, its VM and its one vCPU.

A machine boots into a given memory image and CPU state, runs until an exit Python must
handle, saves its CPU state, and returns to a saved state exactly: `load` completes any
exit the vCPU left pending before it loads registers (vcpu.py), copies back the written
pages or maps another image (memory.py), reloads the FPU/SSE/AVX state and XCR0 where
needed, and gives the guest a new random seed. It keeps no policy: when to reset, what
a trap means and who may call are the sandbox's (sandbox.py). One owner for each native
resource: the machine owns the memory, the VM and the vCPU, and closes them in order.
"""

from __future__ import annotations

import os
import struct
import weakref
from collections.abc import Callable, Sequence

from ._native import ffi, lib
from .cpu import CpuState, cpu_setup
from .exits import Exit, ExitKind
from .kvm import Kvm
from .layout import PAGE, Layout
from .memory import MemoryImage, PageRanges
from .trampoline import trampoline_for
from .vcpu import Vcpu
from .vm import Vm

SLOT = 0  # guest memory is one slot at guest-physical 0
SEED_OFFSET: int = ffi.offsetof("struct sbx_boot_info", "random_seed")
WARM_TIMEOUT_NS = 100_000_000  # the warm-up stub reads a few pages: 100 ms is generous
_VECTOR_UD = 6  # invalid opcode: XGETBV where CR4.OSXSAVE is clear

# XCR0 as ring 3 of this process's vCPUs reads it (None: XGETBV faults there), probed by
# the first machine (_probe_ring3_xcr0): the components a restore must reset
# (trampoline.py), which can be more than the vCPU's CPUID shows.
_UNPROBED = -1
_ring3_xcr0: int | None = _UNPROBED


# image -> (layout, the image's stable ranges in it): read from the image's page tables
# once per image, not on every machine that maps it (~12 us of a spawn on a new VM)
_stable: weakref.WeakKeyDictionary[MemoryImage, tuple[Layout, PageRanges]] = (
    weakref.WeakKeyDictionary()
)


def _stable_ranges(layout: Layout, image: MemoryImage) -> PageRanges:
    known = _stable.get(image)
    if known is None or (known[0] is not layout and known[0] != layout):
        known = _stable[image] = (layout, PageRanges(layout.stable_ranges(image.read)))
    return known[1]


_SEEDS_PER_DRAW = 512
_seeds: list[bytes] = []


def new_seed() -> bytes:
    """A fresh random seed for the guest (never zero: zero means "no seed"). Drawn from
    the OS's CSPRNG 512 at a time (one getrandom call, not one per restore); each seed
    is used once. Thread-safe: list.pop and list.extend are atomic under the GIL."""
    while True:
        try:
            seed = _seeds.pop()
        except IndexError:
            data = os.urandom(8 * _SEEDS_PER_DRAW)
            _seeds.extend(data[i : i + 8] for i in range(0, len(data), 8))
            continue
        if any(seed):
            return seed


class Machine:
    """A VM with one vCPU running in `memory` (see the module docstring)."""

    def __init__(self, image: MemoryImage, cpu: CpuState, layout: Layout) -> None:
        """Boots: maps `image` copy-on-write, creates the VM and the vCPU, and loads
        `cpu` for the first run. Raises KvmError/KvmUnavailable."""
        global _ring3_xcr0
        self.layout = layout
        self._pid = os.getpid()  # a VM cannot be used from a forked child
        self._seed_at = layout.boot_info + SEED_OFFSET
        # Guest ranges through which the host writes page-table entries (the Wasm
        # windows): when a reset takes them back, KVM's shadow MMU is flushed.
        self._page_table_watch: tuple[tuple[int, int], ...] = ()
        # Reset by park() and not run since: the next load need not reset it again (a
        # parked machine waits in machines.py, where nothing runs or writes it).
        self._parked = False
        if layout.mem_size != image.size:
            raise ValueError("the memory image is not of the layout's memory size")
        # Memory, VM and vCPU in one native call (Kvm.boot): the first call's pages
        # populated (the seed then goes into a page already copied, with no fault),
        # registers through kvm_run's sync area, applied by the first KVM_RUN (which
        # saves the two ioctls of KVM_SET_SREGS and KVM_SET_REGS, ~6-8 us each here).
        self.memory, vm, vcpu = Kvm.shared().boot(
            image,
            slot=SLOT,
            prefault=layout.first_call_pages,
            seed_at=self._seed_at,
            seed=new_seed(),
            regs=cpu.regs,
            sregs=cpu.sregs,
        )
        self._vm: Vm | None = vm
        self._vcpu: Vcpu | None = vcpu
        try:
            self.memory.set_stable(_stable_ranges(layout, image))
            setup = cpu_setup()
            self._loaded: CpuState | None = None
            self._xcr0: int | None = None
            self._xcrs: object = None
            self._load_xcrs(cpu.xcrs if cpu.xcrs is not None else setup.xcrs)
            probe = _ring3_xcr0 == _UNPROBED
            if probe:
                _ring3_xcr0 = self._probe_ring3_xcr0(cpu)
            self._trampoline = trampoline_for(layout.trampoline, setup, _ring3_xcr0)
            if cpu.xsave is not None and not setup.is_reset_xsave(cpu.xsave):
                vcpu.set_xsave(cpu.xsave)  # a new vCPU already has the reset state
            if probe:  # the probe replaced the registers boot loaded
                self.load_cpu(cpu)
        except BaseException:
            self.close()
            raise
        # Runs the vCPU until an exit Python must handle (the vCPU's own method: the
        # call path pays no extra frame for it).
        self.run: Callable[[int], Exit] = vcpu.run

    @property
    def vcpu(self) -> Vcpu:
        assert self._vcpu is not None, "the machine is closed"
        return self._vcpu

    def kick(self) -> None:
        """Kicks the thread in this machine's vCPU run, if any, out of KVM_RUN (see
        Vcpu.kick); nothing once the machine is closed. Any thread."""
        vcpu = self._vcpu
        if vcpu is not None:
            vcpu.kick()

    def watch_page_tables(self, ranges: Sequence[tuple[int, int]]) -> None:
        """Names guest ranges the host writes page-table entries through (a guest that
        maps memory with the host's help, like the Wasm engine's windows): a reset that
        changes them makes KVM drop its shadow mappings, since KVM tracks only the
        guest's own writes to page tables."""
        self._page_table_watch = tuple(ranges)

    def limit_reset_scan(self, ranges: Sequence[tuple[int, int]] | None) -> None:
        """Names the only guest ranges a reset searches for written pages (None: all of
        the memory; see GuestMemory.set_scan for the promise it takes). Until the next
        call, a remap (another image) or park() (the next owner starts with all)."""
        self.memory.set_scan(ranges)

    def save_cpu(self) -> CpuState:
        """The vCPU's state, between runs (completes a pending exit first); right after
        a load, the state loaded (the trampoline has yet to run)."""
        vcpu = self.vcpu
        if vcpu.load_pending and self._loaded is not None:
            return self._loaded
        return CpuState(
            vcpu.get_regs(),
            vcpu.get_sregs(),
            vcpu.get_xsave(),
            vcpu.get_xcrs() if cpu_setup().xcrs is not None else None,
        )

    def snapshot_image(self) -> MemoryImage:
        """The memory as a new image (the trampoline page as the host left it in the
        image: it is the host's scratch, not the guest's state)."""
        return self.memory.snapshot_image([(self.layout.trampoline, PAGE)])

    def load_cpu(self, cpu: CpuState) -> None:
        """Loads `cpu` exactly for the next run (memory is left as it is): registers
        through the sync area, the FPU/SSE/AVX state through the restore trampoline
        (trampoline.py; KVM_SET_XSAVE where it cannot), XCR0 if it differs from the
        vCPU's. Until the next run, `save_cpu` answers `cpu`."""
        vcpu = self.vcpu
        self._parked = False  # the trampoline page is written
        regs = self._trampoline.load(self.memory, cpu)
        if regs is None:
            vcpu.load_state(cpu.regs, cpu.sregs)
            vcpu.set_xsave(cpu.xsave if cpu.xsave is not None else cpu_setup().xsave)
        else:  # RIP is the trampoline's: a pending `out` is cancelled, not completed
            vcpu.load_state(regs, cpu.sregs)
        self._loaded = cpu
        if cpu.xcrs is not self._xcrs:
            self._load_xcrs(cpu.xcrs)

    def _load_xcrs(self, xcrs: object) -> None:
        # Ring 3 cannot change XCR0 (XSETBV is privileged): the vCPU keeps what was
        # loaded last, so an equal value needs no ioctl.
        xcr0 = cpu_setup().xcr0(xcrs)
        if xcrs is not None and xcr0 != self._xcr0:
            self.vcpu.set_xcrs(xcrs)
            self._xcr0 = xcr0
        self._xcrs = xcrs

    def load(self, image: MemoryImage, cpu: CpuState) -> bool:
        """Returns to the state (`image`, `cpu`) exactly. Restoring the image the memory
        maps now copies back only the pages written since; another image is mapped
        afresh (at a new address: views of the old mapping are released; returns True
        then). The guest gets a new random seed."""
        memory, vm, vcpu = self.memory, self._vm, self._vcpu
        assert vm is not None and vcpu is not None, "the machine is closed"
        vcpu.settle(None)  # before memory: a pending string `in` writes to it
        remapped = image is not memory.image
        parked, self._parked = self._parked, False
        if not remapped:
            if not parked:  # park() reset it, and nothing ran or wrote since
                self._reset_memory(vm)
        else:
            vm.remove_memory_region(SLOT)
            memory.remap(image)
            memory.set_stable(_stable_ranges(self.layout, image))
            vm.set_user_memory_region(SLOT, 0, self.layout.mem_size, memory.host_address)
            memory.prefault(self.layout.first_call_pages)
        self.load_cpu(cpu)
        memory.region(self._seed_at, 8)[:] = new_seed()
        return remapped

    def _run_stub(self, code: bytes, cpu: CpuState) -> Exit:
        """Runs `code` in the trampoline page, in ring 3 with `cpu`'s segments and page
        tables and RFLAGS clear, until its first exit. `load` or `load_cpu` must come
        next: they cancel its exit and rewrite the trampoline page."""
        layout, vcpu = self.layout, self.vcpu
        self._parked = False
        if len(code) > PAGE:
            raise RuntimeError("the stub does not fit in the trampoline page")
        self.memory.region(layout.trampoline, len(code))[:] = code
        regs = ffi.new("struct kvm_regs *")
        regs.rip = layout.trampoline
        regs.rsp = cpu.regs.rsp
        regs.rflags = 0x2  # interrupts and single-stepping off
        vcpu.load_state(regs, cpu.sregs)
        self._loaded = None
        return vcpu.run(WARM_TIMEOUT_NS)

    def _probe_ring3_xcr0(self, cpu: CpuState) -> int | None:
        """XCR0 as ring 3 reads it (XGETBV, then `out` to the return port), or None if
        XGETBV faults; on a new machine, whose memory is then its image again (but the
        boot info's seed). Raises RuntimeError if the stub ends otherwise."""
        code = b"\x31\xc9\x0f\x01\xd0"  # xor ecx, ecx; xgetbv (EDX:EAX = XCR0)
        exit = self._run_stub(code + bytes((0xE7, lib.SBX_PORT_RETURN)), cpu)
        if exit.kind is ExitKind.RETURN:
            return exit.value  # EAX: no XCR0 component lies above bit 31
        if exit.kind is ExitKind.TRAP and exit.vector == _VECTOR_UD:
            self.vcpu.settle(None)
            self.memory.reset()  # the ring-0 stack the trap wrote
            self.memory.region(self._seed_at, 8)[:] = new_seed()
            return None
        raise RuntimeError(f"the XGETBV probe ended with {exit.kind.name}")

    def warm(self, cpu: CpuState) -> None:
        """Readies a new machine for its first call off the caller's path (machines.py's
        spares): runs, in ring 3 with `cpu`'s segments and page tables, a stub in the
        trampoline page that reads one byte of each page a first call touches
        (Layout.first_call_pages) and returns to the host. KVM then holds its shadow
        mappings of them and the vCPU has run once, so the first call on the machine
        costs what one on a reused machine does. No guest code runs. `load` must come
        next: it cancels the stub's exit and rewrites the trampoline page. Raises
        RuntimeError if the stub does not come back as planned."""
        code = bytearray()
        for start, size, _ in self.layout.first_call_pages:
            for page in range(start, start + size, PAGE):
                code += b"\xa0" + struct.pack("<Q", page)  # mov al, [page]
        code += bytes((0xE7, lib.SBX_PORT_RETURN))  # out SBX_PORT_RETURN, eax
        exit = self._run_stub(bytes(code), cpu)
        if exit.kind is not ExitKind.RETURN:
            raise RuntimeError(f"the warm-up stub ended with {exit.kind.name}")

    @property
    def recyclable(self) -> bool:
        """Whether another sandbox may take this machine over (machines.py): open, in
        this process, and its vCPU never shut down or failed in KVM."""
        vcpu = self._vcpu
        return vcpu is not None and not vcpu.damaged and not self.forked

    @property
    def forked(self) -> bool:
        """Whether this is a forked child of the process that made the machine: KVM
        refuses its VM here (every run and vCPU ioctl fails with EIO)."""
        return self._pid != os.getpid()

    def park(self) -> None:
        """Readies the machine to wait for another sandbox: completes a pending exit,
        resets the memory to its image (keeping a call's working set mapped, as a
        restore does, so that the next owner's first call does not fault it in again),
        flushes KVM's mappings if the host-written page tables changed, and forgets the
        page-table watch and the reset scan's limits (the next owner sets its own)."""
        vm = self._vm
        assert vm is not None, "the machine is closed"
        self.vcpu.settle(None)
        self._reset_memory(vm)
        self._page_table_watch = ()
        self.memory.set_scan(None)
        self._parked = True

    def _reset_memory(self, vm: Vm) -> None:
        """Resets the memory to its image (the vCPU settled first), and makes KVM drop
        its mappings if the reset changes the host-written page tables
        (watch_page_tables)."""
        watch = self._page_table_watch
        flush = bool(watch) and self.memory.differs_from_image(watch)
        self.memory.reset()
        if flush:
            vm.flush_memory_region(SLOT)

    def close(self) -> None:
        """Releases the vCPU, the VM and then the memory (KVM uses it until the VM is
        gone). Idempotent."""
        if self._vcpu is not None:
            self._vcpu.close()
            self._vcpu = None
        if self._vm is not None:
            self._vm.close()
            self._vm = None
        self.memory.close()
