"""`Sandbox`: one micro-VM running one guest; `call()` runs a guest function in it."""

from __future__ import annotations

import functools
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

from . import _reaper
from . import x86_64 as x86
from ._native import check, ffi, init_kick_signal, kick_thread, lib
from .abi import (
    Signature,
    Status,
    Value,
    decode_call,
    decode_result,
    encode_call,
    encode_result,
)
from .config import SandboxConfig
from .elf import GuestImage, load_guest
from .errors import (
    ArgumentError,
    CallCancelled,
    CallTimeout,
    ConfigError,
    FunctionNotFound,
    GuestAbort,
    GuestProtocolError,
    GuestTrap,
    HostFunctionError,
    SandboxBusy,
    SandboxClosed,
    SandboxError,
    SandboxPoisoned,
)
from .guests import is_bundled_name, resolve_guest
from .kvm import Kvm
from .layout import GDT, GDT_LIMIT, IDT, IDT_LIMIT, PML4, TSS, Layout
from .memory import GuestMemory, MemoryImage
from .snapshot import CpuState, Snapshot
from .vcpu import Vcpu
from .vm import Vm

if TYPE_CHECKING:
    from .wasm.sandbox import WasmSandbox
    from .wasm.wasi import WasiConfig

HostFunction = Callable[..., Any]


@dataclass(frozen=True)
class _Prepared:
    """What every sandbox of one guest file and config shares (built once, cached)."""

    image: GuestImage
    layout: Layout
    memory: MemoryImage  # the initial memory, boot info included (with a zero seed)
    initial_cpu: CpuState


@functools.lru_cache(maxsize=32)
def _prepare_cached(path: str, mtime_ns: int, size: int, config: SandboxConfig) -> _Prepared:
    """Keyed by the file's identity, so a rebuilt guest file is loaded again."""
    image = load_guest(path)
    try:
        layout = Layout.compute(
            mem_size=config.memory_size,
            image_size=image.span,
            in_size=config.input_buffer_size,
            out_size=config.output_buffer_size,
            stack_size=config.stack_size,
            heap_size=config.heap_size,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    pieces = layout.build_template(image.load(layout.image_base))
    pieces.append((layout.boot_info, layout.boot_info_bytes(0)))
    memory = MemoryImage(layout.mem_size, pieces)
    regs = ffi.new("struct kvm_regs *")
    regs.rip = layout.image_base + image.entry
    regs.rsp = layout.stack_top
    regs.rdi = layout.boot_info
    regs.rflags = x86.RFLAGS_RESERVED
    setup = _cpu_setup(Kvm.shared())
    cpu = CpuState(regs, setup.sregs, setup.xsave, setup.xcrs)
    return _Prepared(image, layout, memory, cpu)


@functools.lru_cache(maxsize=32)
def _prepare_bundled(guest: str | None, config: SandboxConfig) -> _Prepared:
    """Bundled guests are package files that do not change while the process runs."""
    return _prepare_file(resolve_guest(guest), config)


def _prepare_file(path: Path, config: SandboxConfig) -> _Prepared:
    st = os.stat(path)
    return _prepare_cached(str(path.resolve()), st.st_mtime_ns, st.st_size, config)


def _prepare(guest: str | os.PathLike[str] | None, config: SandboxConfig) -> _Prepared:
    if guest is None or (isinstance(guest, str) and is_bundled_name(guest)):
        return _prepare_bundled(guest, config)
    return _prepare_file(resolve_guest(guest), config)


@dataclass(frozen=True)
class _CpuSetup:
    """The vCPU state every sandbox starts from, per process (depends on the CPU)."""

    sregs: Any  # struct kvm_sregs *
    xcrs: Any | None  # struct kvm_xcrs *, None without XSAVE
    xsave: Any  # struct kvm_xsave *: the FPU/SSE state of a vCPU after reset
    _reset_xsave_memo: weakref.WeakKeyDictionary[Any, bool] = field(
        default_factory=weakref.WeakKeyDictionary, compare=False, repr=False
    )

    def is_reset_xsave(self, xsave: Any) -> bool:
        """Whether the XSAVE area `xsave` holds the registers of a new vCPU (then loading
        it into one changes nothing and KVM_SET_XSAVE, ~15 us, can be skipped). The guest
        SDK zeroes the vector registers before every return, so a snapshot taken between
        calls usually does. Every byte is compared except XSTATE_BV (bytes 512-519 of
        the area, SDM 13.4.2), which records which components were in use, not their
        values: KVM_GET_XSAVE writes a component's initial values when it is not in use,
        so equal bytes elsewhere mean equal registers."""
        if xsave is self.xsave:
            return True
        known = self._reset_xsave_memo.get(xsave)  # a snapshot's area never changes
        if known is None:
            ours, reset = ffi.buffer(xsave), ffi.buffer(self.xsave)
            known = bool(ours[:512] == reset[:512] and ours[520:] == reset[520:])
            self._reset_xsave_memo[xsave] = known
        return known


_cpu_setup_cache: _CpuSetup | None = None
_cpu_setup_lock = threading.Lock()


def _cpu_setup(kvm: Kvm) -> _CpuSetup:
    """Long mode with paging, CPL 3 from the first instruction (SDM 9.8.5: the state is
    loaded directly through KVM_SET_SREGS rather than by running mode-switch code, which
    would have to run in ring 0). Built once per process from a scratch vCPU's reset
    state."""
    global _cpu_setup_cache
    if _cpu_setup_cache is not None:  # built: no lock on the spawn path
        return _cpu_setup_cache
    with _cpu_setup_lock:
        if _cpu_setup_cache is None:
            vm = kvm.create_vm()
            try:
                vcpu = vm.create_vcpu()
                try:
                    _cpu_setup_cache = _build_cpu_setup(kvm, vcpu)
                finally:
                    vcpu.close()
            finally:
                vm.close()
        return _cpu_setup_cache


def _build_cpu_setup(kvm: Kvm, vcpu: Vcpu) -> _CpuSetup:
    sregs = vcpu.get_sregs()
    xsave = vcpu.get_xsave()
    leaf1 = kvm.cpuid_entry(1)
    leaf7 = kvm.cpuid_entry(7)
    leaf_d = kvm.cpuid_entry(0xD)
    cr4 = x86.CR4_PAE | x86.CR4_OSFXSR | x86.CR4_OSXMMEXCPT
    xcrs = None
    if leaf1 is not None and leaf1.ecx & (1 << 26) and leaf_d is not None:  # XSAVE
        cr4 |= x86.CR4_OSXSAVE
        xcr0 = x86.XCR0_X87 | x86.XCR0_SSE | (leaf_d.eax & x86.XCR0_AVX)
        xcrs = ffi.new("struct kvm_xcrs *")
        xcrs.nr_xcrs = 1
        xcrs.xcrs[0].xcr = 0
        xcrs.xcrs[0].value = xcr0
    if leaf7 is not None:
        if leaf7.ebx & (1 << 7):
            cr4 |= x86.CR4_SMEP
        if leaf7.ebx & (1 << 20):
            cr4 |= x86.CR4_SMAP
        if leaf7.ecx & (1 << 2):
            cr4 |= x86.CR4_UMIP
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
    return _CpuSetup(sregs, xcrs, xsave)


_READY, _POISONED, _CLOSED = "ready", "poisoned", "closed"
_DEFAULT_CONFIG = SandboxConfig()
BOOT_INFO_SEED_OFFSET = ffi.offsetof("struct sbx_boot_info", "random_seed")
ResetMode = Literal["none", "per_call"]
HOST_ERROR_MESSAGE_MAX = 1000  # bytes of a host exception's text passed to the guest


def _new_seed() -> bytes:
    """A fresh random seed for the guest (never zero: zero means "no seed")."""
    while True:
        seed = os.urandom(8)
        if any(seed):
            return seed


class Sandbox:
    """A guest running in its own KVM micro-VM.

    `guest` is the path of a guest ELF or the name of a bundled guest (None: the demo
    guest). `host_functions` maps names to Python callables the guest may call; their
    arguments arrive as Python values and their return value (int, float, bool, str,
    bytes or None) goes back to the guest. `output` receives the guest's printed text
    as it is flushed; the text printed during the last call is also in `last_output`.

    Raises KvmUnavailable if /dev/kvm cannot be used, GuestNotFound, GuestAbiMismatch
    for a file that is not a guest of this ABI, ConfigError if the guest does not fit the
    config, KvmError if a KVM ioctl fails. Use as a context manager or call `close()`.
    """

    def __init__(
        self,
        guest: str | os.PathLike[str] | None = None,
        *,
        config: SandboxConfig | None = None,
        host_functions: Mapping[str, HostFunction] | None = None,
        output: Callable[[str], None] | None = None,
        reset: ResetMode = "none",
    ) -> None:
        self._state = _CLOSED  # until fully built, so __del__/close are no-ops
        config = _check_config(config)
        _check_path("guest", guest)
        functions = _check_host_functions(host_functions)  # before any KVM work
        prepared = _prepare(guest, config)
        self._configure(
            config,
            functions,
            output,
            reset,
            prepared.image.path,
            prepared.layout,
            prepared.image.functions,
        )
        self._boot(prepared.memory, prepared.initial_cpu)
        self._initial: _Prepared | Snapshot = prepared

    @classmethod
    def from_snapshot(
        cls,
        snapshot: Snapshot | str | os.PathLike[str],
        *,
        host_functions: Mapping[str, HostFunction] | None = None,
        output: Callable[[str], None] | None = None,
        reset: ResetMode = "none",
    ) -> Sandbox:
        """A new sandbox in the state of `snapshot` (a Snapshot, or the path of a saved
        one), without re-running the guest's initialization. Its memory maps the
        snapshot's copy-on-write. Raises SnapshotError for an unusable file, plus what
        Sandbox() raises."""
        if not isinstance(snapshot, Snapshot):
            _check_path("snapshot", snapshot)
        snap = snapshot if isinstance(snapshot, Snapshot) else Snapshot.load(snapshot)
        if type(snap) is not Snapshot:  # a Wasm sandbox's: it comes back as one
            from .wasm.sandbox import WasmSandbox, WasmSnapshot

            if isinstance(snap, WasmSnapshot):
                if host_functions:
                    raise ArgumentError("a Wasm sandbox takes imports, not host_functions")
                return WasmSandbox._from_wasm_snapshot(snap, reset=reset, output=output)
        sb = cls.__new__(cls)
        sb._state = _CLOSED
        sb._start_from(snap, _check_host_functions(host_functions), output, reset)
        return sb

    def _start_from(
        self,
        snap: Snapshot,
        host_functions: dict[str, HostFunction],
        output: Callable[[str], None] | None,
        reset: ResetMode,
    ) -> None:
        """Configures and boots a sandbox made by __new__ in the state of `snap`."""
        self._configure(
            snap.config,
            host_functions,
            output,
            reset,
            snap.guest_path,
            snap.layout,
            snap.functions,
        )
        self._boot(snap.image, snap.cpu)
        self._initial = snap

    @classmethod
    def from_wasm(
        cls,
        module: bytes | str | os.PathLike[str],
        *,
        imports: Mapping[str, Mapping[str, Callable[..., Any]]] | None = None,
        wasi: WasiConfig | None = None,
        config: SandboxConfig | None = None,
        reset: ResetMode = "none",
        output: Callable[[str], None] | None = None,
    ) -> WasmSandbox:
        """A sandbox running the Wasm module `module` (bytes or a path) in the Wasm engine
        guest, instantiated, with `call` reaching its exported functions by name.
        `imports` binds function imports to Python callables ({"module": {"name": fn}});
        WASI preview1 imports are served by a WasiContext made from `wasi` (default:
        no arguments, no environment, no directories, output captured). The module is
        validated on the host (wasmtime) first. Raises WasmModuleError, WasmLinkError,
        WasmTrap (a trap while instantiating), plus what Sandbox() raises. See
        sandbox.wasm."""
        from .wasm.sandbox import from_wasm

        return from_wasm(
            module, imports=imports, wasi=wasi, config=config, reset=reset, output=output
        )

    def _configure(
        self,
        config: SandboxConfig,
        host_functions: dict[str, HostFunction],  # checked by _check_host_functions
        output: Callable[[str], None] | None,
        reset: ResetMode,
        guest_path: str,
        layout: Layout,
        functions: Mapping[str, Signature],
    ) -> None:
        if reset not in ("none", "per_call"):
            raise ArgumentError(f"reset must be 'none' or 'per_call', not {reset!r}")
        self.config = config
        self.reset_mode: ResetMode = reset
        self._host_functions = host_functions
        self._output = output
        self.last_output = ""
        self.guest_path = guest_path
        self.layout = layout
        self.functions: Mapping[str, Signature] = functions
        self._lock = threading.Lock()
        self._caller: int | None = None  # native thread id inside call()
        self._cancel_requested = False
        self._poison_reason = ""
        self._io_pending = False  # the last exit was an I/O exit KVM has yet to complete
        self._ran = False  # the guest ran since the last (re)start
        self._in_call = False  # the guest is inside a call (between entry and RETURN)
        self._load_pending = False  # registers wait in kvm_run's sync area for the next run
        self._close_requested = False
        # Guest ranges the host writes page-table entries through (the Wasm windows):
        # when a restore copies them back, KVM's shadow MMU is flushed.
        self._mmu_watch: list[tuple[int, int]] = []

    def _boot(self, image: MemoryImage, cpu: CpuState) -> None:
        kvm = Kvm.shared()
        init_kick_signal()
        layout = self.layout
        memory = GuestMemory(image)
        vm: Vm | None = None
        vcpu: Vcpu | None = None
        try:
            # Populate first: the seed then goes into a page already copied (no fault).
            memory.prefault(layout.first_call_pages)
            memory.write(layout.boot_info + BOOT_INFO_SEED_OFFSET, _new_seed())
            vm = kvm.create_vm()
            vm.set_user_memory_region(0, 0, layout.mem_size, memory.host_address)
            vcpu = vm.create_vcpu()
            vcpu.set_cpuid2(kvm.supported_cpuid)
            setup = _cpu_setup(kvm)
            if setup.xcrs is not None:
                vcpu.set_xcrs(cpu.xcrs if cpu.xcrs is not None else setup.xcrs)
            if cpu.xsave is not None and not setup.is_reset_xsave(cpu.xsave):
                vcpu.set_xsave(cpu.xsave)  # a new vCPU already has the reset state
            lib.sbx_vcpu_sync_init(vcpu.run_ptr)
            # Registers through kvm_run's sync area: applied by the first KVM_RUN, which
            # saves the two ioctls of KVM_SET_SREGS and KVM_SET_REGS (~8 us each here).
            lib.sbx_vcpu_load_state(vcpu.run_ptr, cpu.regs, cpu.sregs)
        except BaseException:
            for owner in (vcpu, vm, memory):
                if owner is not None:
                    owner.close()
            raise
        self._memory, self._vm, self._vcpu = memory, vm, vcpu
        self._load_pending = True
        self._make_views()
        self._state = _READY

    def _make_views(self) -> None:
        layout, view = self.layout, self._memory.view
        self._in = view[layout.in_buf : layout.in_buf + layout.in_size]
        self._reply = view[layout.reply_buf : layout.reply_buf + layout.reply_size]
        self._out = view[layout.out_buf : layout.out_buf + layout.out_size]

    def _release_views(self) -> None:
        for view in (self._in, self._reply, self._out):
            view.release()

    # -- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # The fallback for a sandbox nobody closed: release at once, on this thread (a
        # finalizer may run at interpreter exit, when no thread can be started).
        if getattr(self, "_state", _CLOSED) != _CLOSED:
            self._release(deferred=False)

    @property
    def closed(self) -> bool:
        return self._state == _CLOSED

    @property
    def poisoned(self) -> bool:
        return self._state == _POISONED

    def close(self) -> None:
        """Releases the VM. Idempotent. A call running in another thread is cancelled
        first. The kernel teardown runs on a background thread."""
        if self._state == _CLOSED:
            return
        if self._caller == threading.get_native_id():
            # From a host function or output callback of the running call: the call
            # holds the lock; close when it ends.
            self._close_requested = True
            return
        if self._caller is not None:
            self.cancel()
        with self._lock:
            self._release(deferred=True)

    def _release(self, *, deferred: bool) -> None:
        if self._state == _CLOSED:
            return
        self._state = _CLOSED
        self._release_views()
        vcpu, vm, memory = self._vcpu, self._vm, self._memory

        def teardown() -> None:
            vcpu.close()
            vm.close()
            memory.close()

        if deferred:
            _reaper.defer(teardown)
        else:
            teardown()

    def cancel(self) -> None:
        """Stops the call running in another thread (it raises CallCancelled); the
        sandbox is poisoned. Does nothing if no call is running."""
        self._cancel_requested = True
        deadline = time.monotonic() + 1.0
        # A kick that lands just before KVM_RUN starts is absorbed by immediate_exit,
        # but one that lands before the run loop is entered is lost: kick until out.
        while (tid := self._caller) is not None and time.monotonic() < deadline:
            kick_thread(tid)
            time.sleep(0.001)

    # -- snapshot and restore --------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """Captures the sandbox between calls: memory (into a new sealed memfd, copying
        only the pages in use) and vCPU state. Raises SandboxPoisoned or SandboxClosed."""
        with self._lock:
            self._check_ready()
            return Snapshot(
                image=self._memory.snapshot_image(),
                cpu=self._cpu_state(),
                layout=self.layout,
                functions=dict(self.functions),
                config=self.config,
                guest_path=self.guest_path,
            )

    def _cpu_state(self) -> CpuState:
        """The vCPU's state between calls (the lock is held, the sandbox ready)."""
        vcpu = self._vcpu
        if self._io_pending or self._load_pending:
            # Let KVM finish the guest's last `out` (so the saved RIP is past it) and
            # apply registers a restore left in the sync area, without running.
            check(lib.sbx_vcpu_complete_io(vcpu.fd, vcpu.run_ptr), "KVM_RUN (complete I/O)")
            self._io_pending = self._load_pending = False
        return CpuState(
            vcpu.get_regs(),
            vcpu.get_sregs(),
            vcpu.get_xsave(),
            vcpu.get_xcrs() if _cpu_setup(Kvm.shared()).xcrs is not None else None,
        )

    def restore(self, snapshot: Snapshot | None = None) -> None:
        """Returns the sandbox to the state of `snapshot` (default: the state it started
        in) and clears poisoning. Restoring the snapshot the sandbox was made or last
        restored from copies back only the pages written since, so it costs in proportion
        to them; another snapshot is mapped afresh. The guest gets a new random seed.
        Raises ArgumentError for a snapshot of another guest layout, SandboxClosed."""
        with self._lock:
            if self._state == _CLOSED:
                raise SandboxClosed("the sandbox is closed")
            self._restore(snapshot)

    def _restore(self, snapshot: Snapshot | None) -> None:
        if snapshot is not None and not isinstance(snapshot, Snapshot):
            raise ArgumentError(f"restore() takes a Snapshot, not {type(snapshot).__name__}")
        target = snapshot if snapshot is not None else self._initial_snapshot()
        if target.layout is not self.layout and target.layout != self.layout:
            raise ArgumentError("the snapshot is of another guest or memory layout")
        # Poisoned until the restore completes: a failure half-way leaves no usable state.
        self._state = _POISONED
        self._poison_reason = "failed restore"
        memory = self._memory
        if target.image is memory.image:
            # The watched pages differ from the snapshot's: the host changed page tables.
            source = memory.image.readonly
            flush = any(memory.view[a : a + n] != source[a : a + n] for a, n in self._mmu_watch)
            memory.reset()
            if flush:
                self._flush_shadow_mmu()
        else:
            self._release_views()
            self._vm.set_user_memory_region(0, 0, 0, memory.host_address)  # delete the slot
            memory.remap(target.image)
            self._vm.set_user_memory_region(0, 0, self.layout.mem_size, memory.host_address)
            memory.prefault(self.layout.first_call_pages)
            self._make_views()
            self.functions = target.functions
        self._load_cpu(target.cpu)
        memory.write(self.layout.boot_info + BOOT_INFO_SEED_OFFSET, _new_seed())
        self._ran = False
        self._state = _READY

    def _load_cpu(self, cpu: CpuState) -> None:
        vcpu = self._vcpu
        if self._io_pending and lib.sbx_vcpu_exit_rip(vcpu.run_ptr) == cpu.rip:
            # KVM would skip the instruction at the restored RIP to finish the old `out`.
            check(lib.sbx_vcpu_complete_io(vcpu.fd, vcpu.run_ptr), "KVM_RUN (complete I/O)")
        self._io_pending = False
        lib.sbx_vcpu_load_state(vcpu.run_ptr, cpu.regs, cpu.sregs)  # applied at the next run
        self._load_pending = True
        vcpu.set_xsave(cpu.xsave)
        if cpu.xcrs is not None:
            vcpu.set_xcrs(cpu.xcrs)

    def _recover(self, cpu: CpuState) -> None:
        """Clears a trap's poisoning by loading `cpu` (registers captured between calls),
        keeping memory as it is: for a guest that handles its own faults once the host
        has told it of them (the Wasm engine's out-of-bounds accesses). The lock is held."""
        self._load_cpu(cpu)
        self._state = _READY

    def _flush_shadow_mmu(self) -> None:
        """Makes KVM forget every guest mapping it built (re-adding the memory slot drops
        them): needed after the host itself took back page-table entries the guest may
        have used, since KVM only tracks the guest's own writes to its page tables."""
        size, address = self.layout.mem_size, self._memory.host_address
        self._vm.set_user_memory_region(0, 0, 0, address)
        self._vm.set_user_memory_region(0, 0, size, address)

    def _initial_snapshot(self) -> Snapshot:
        initial = self._initial
        if isinstance(initial, Snapshot):
            return initial
        snap = Snapshot(
            image=initial.memory,
            cpu=initial.initial_cpu,
            layout=initial.layout,
            functions=initial.image.functions,
            config=self.config,
            guest_path=self.guest_path,
        )
        self._initial = snap
        return snap

    def _check_ready(self) -> None:
        if self._state != _READY:
            if self._state == _CLOSED:
                raise SandboxClosed("the sandbox is closed")
            raise SandboxPoisoned(
                f"the sandbox is poisoned by an earlier {self._poison_reason}; "
                "restore it or create a new one"
            )

    # -- calls -----------------------------------------------------------------------

    def call(self, name: str, *args: object, timeout: float | None = None) -> Value:
        """Calls the guest function `name` with `args` and returns its result.

        Arguments are converted by the function's declared parameter types (int for
        i32/u32/i64/u64, float for f32/f64, bool, str, bytes). `timeout` (seconds)
        overrides the config's default limit.

        Raises FunctionNotFound, ArgumentError (wrong count, type or range; also a
        TypeError/ValueError), GuestAbort (the guest reported an error), GuestTrap (a CPU
        exception or malformed record; poisons), CallTimeout (poisons), CallCancelled
        (poisons), HostFunctionError (a host function raised), SandboxPoisoned,
        SandboxClosed, SandboxBusy (re-entrant call from a host function).
        """
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0
        ):
            raise ArgumentError(f"timeout must be a positive number of seconds, not {timeout!r}")
        sig = self.functions.get(name)
        if sig is None:
            if self._state == _CLOSED:
                raise SandboxClosed("the sandbox is closed")
            raise FunctionNotFound(
                f"the guest has no function {name!r} "
                f"(it exports: {', '.join(sorted(self.functions))})"
            )
        me = threading.get_native_id()
        if self._caller == me:
            raise SandboxBusy("re-entrant call: a host function called back into its own sandbox")
        with self._lock:
            if self.reset_mode == "per_call" and self._ran and self._state != _CLOSED:
                self._restore(None)
            self._check_ready()
            encode_call(self._in, sig, args)
            limit = timeout if timeout is not None else self.config.timeout
            self._caller = me
            self._cancel_requested = False
            self.last_output = ""
            self._in_call = True
            try:
                return self._run(sig, limit)
            except BaseException as exc:
                # A trap, a timeout, or anything that left the guest mid-call (an
                # exception from the output callback, Ctrl-C...): the guest cannot go on.
                if self._in_call or isinstance(exc, (GuestTrap, CallTimeout, CallCancelled)):
                    self._state = _POISONED
                    self._poison_reason = type(exc).__name__
                raise
            finally:
                self._in_call = False
                self._caller = None
                if self._close_requested:
                    self._release(deferred=True)

    def _run(self, sig: Signature, limit: float | None) -> Value:
        deadline = None if limit is None else time.monotonic() + limit
        host_error: BaseException | None = None
        vcpu = self._vcpu
        while True:
            timeout_ns = 0
            if deadline is not None:
                timeout_ns = max(1, int((deadline - time.monotonic()) * 1e9))
            exit = vcpu.run(timeout_ns)
            self._ran = True
            self._load_pending = False
            self._io_pending = exit.kvm_exit_reason == lib.KVM_EXIT_IO
            kind = exit.kind
            if kind == lib.SBX_EXIT_RETURN:
                self._in_call = False  # the guest is back in its loop
                result = decode_result(self._out, exit.value, f"result of {sig.name}")
                self._emit(result.output)
                break
            if kind == lib.SBX_EXIT_HOST_CALL:
                host_error = self._host_call(exit.value) or host_error
            elif kind == lib.SBX_EXIT_PRINT:
                self._emit(decode_result(self._out, exit.value, "print flush").output)
            elif kind == lib.SBX_EXIT_INTERRUPTED:
                continue  # Python's signal handlers ran (or will raise here)
            elif kind == lib.SBX_EXIT_KICKED:
                if self._cancel_requested:
                    raise CallCancelled(f"{sig.name} was cancelled")
                raise CallTimeout(f"{sig.name} did not finish within {limit} s")
            else:
                raise self._trap(exit)

        status = result.status
        if status == Status.OK:
            if host_error is not None:
                raise HostFunctionError(
                    f"a host function called by {sig.name} raised: {host_error!r}"
                ) from host_error
            if result.tag != sig.ret:
                raise GuestProtocolError(f"{sig.name} returned tag {result.tag}, declared {sig}")
            return result.value
        if status == Status.HOST_ERROR and host_error is not None:
            raise HostFunctionError(
                f"a host function called by {sig.name} raised: {host_error!r}"
            ) from host_error
        if status == Status.ABORT:
            raise GuestAbort(str(result.value))
        if status == Status.NOT_FOUND:
            raise FunctionNotFound(f"the guest did not find its function {sig.name!r}")
        if status == Status.BAD_ARGS:
            raise ArgumentError(f"the guest rejected the arguments of {sig}")
        raise GuestProtocolError(f"{sig.name}: the guest answered with status {status}")

    def _emit(self, text: str) -> None:
        if text:
            self.last_output += text
            if self._output is not None:
                self._output(text)

    def _host_call(self, offset: int) -> BaseException | None:
        """Runs the host function the guest asked for and writes the reply. Returns the
        exception it raised (the guest is told to unwind), or None."""
        call = decode_call(self._out, offset)
        self._emit(call.output)
        fn = self._host_functions.get(call.name)
        try:
            if fn is None:
                raise LookupError(
                    f"the guest called host function {call.name!r}, which was not registered "
                    f"(registered: {', '.join(sorted(self._host_functions)) or 'none'})"
                )
            encode_result(self._reply, Status.OK, fn(*call.args))
            return None
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}".encode()[:HOST_ERROR_MESSAGE_MAX]
            encode_result(self._reply, Status.HOST_ERROR, message.decode(errors="ignore"))
            return exc

    def _trap(self, exit: Any) -> SandboxError:
        kind = exit.kind
        layout = self.layout
        if kind == lib.SBX_EXIT_TRAP:
            vector = int(exit.vector)
            rip, cr2, err = int(exit.rip), int(exit.cr2), int(exit.error_code)
            name = x86.EXCEPTION_NAMES.get(vector, f"exception_{vector}")
            where = f"at rip 0x{rip:x} ({layout.region_of(rip)})"
            if vector == x86.VECTOR_PAGE_FAULT:
                access = (
                    "instruction fetch"
                    if err & x86.PF_INSTRUCTION
                    else "write"
                    if err & x86.PF_WRITE
                    else "read"
                )
                region = layout.region_of(cr2)
                # The stack pointer itself below the stack (or the fault in the guard):
                # a frame past the stack's end, whatever the address written.
                if region == "stack guard page" or int(exit.rsp) < layout.stack_base:
                    return GuestTrap(
                        f"stack overflow: {access} of 0x{cr2:x} ({region}) {where}",
                        kind="stack_overflow",
                        vector=vector,
                        rip=rip,
                        address=cr2,
                        error_code=err,
                    )
                why = "protection violation" if err & x86.PF_PRESENT else "not mapped"
                return GuestTrap(
                    f"page fault: {access} of 0x{cr2:x} ({region}, {why}) {where}",
                    kind="page_fault",
                    vector=vector,
                    rip=rip,
                    address=cr2,
                    error_code=err,
                )
            return GuestTrap(
                f"{name.replace('_', ' ')} (vector {vector}, error code 0x{err:x}) {where}",
                kind=name,
                vector=vector,
                rip=rip,
                error_code=err,
            )
        if kind == lib.SBX_EXIT_BAD_PORT:
            return GuestTrap(
                f"the guest used I/O port 0x{exit.port:x} in a way the ABI does not define",
                kind="bad_port",
            )
        if kind == lib.SBX_EXIT_SHUTDOWN:
            return GuestTrap("triple fault: the guest's CPU shut down", kind="triple_fault")
        if kind == lib.SBX_EXIT_INTERNAL:
            return GuestTrap(
                f"KVM could not run the guest (internal error, suberror {exit.detail})",
                kind="internal_error",
            )
        return GuestTrap(f"unexpected KVM exit reason {exit.kvm_exit_reason}", kind="unknown_exit")


def _check_config(config: object) -> SandboxConfig:
    if config is None:
        return _DEFAULT_CONFIG
    if not isinstance(config, SandboxConfig):
        raise ArgumentError(
            f"config must be a SandboxConfig, not {type(config).__name__} "
            "(build one with SandboxConfig(**values))"
        )
    return config


def _check_path(what: str, value: object) -> None:
    if value is not None and not isinstance(value, (str, os.PathLike)):
        raise ArgumentError(f"{what} must be a path or a name, not {type(value).__name__}")


def _check_host_functions(funcs: Mapping[str, HostFunction] | None) -> dict[str, HostFunction]:
    out: dict[str, HostFunction] = {}
    for name, fn in (funcs or {}).items():
        if not isinstance(name, str) or not name or len(name.encode()) > 47:
            raise ArgumentError(f"host function name {name!r} must be a str of 1 to 47 bytes")
        if not callable(fn):
            raise ArgumentError(f"host function {name!r} is not callable")
        out[name] = fn
    return out
