"""`Sandbox`: one micro-VM running one guest; `call()` runs a guest function in it."""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _reaper
from . import x86_64 as x86
from ._native import ffi, init_kick_signal, kick_thread, lib
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
from .vcpu import Vcpu
from .vm import Vm

HostFunction = Callable[..., Any]


@dataclass(frozen=True)
class _Prepared:
    """What every sandbox of one guest file and config shares (built once, cached)."""

    image: GuestImage
    layout: Layout
    memory: MemoryImage
    regs: Any  # struct kvm_regs at the entry point
    boot_info: bytes  # struct sbx_boot_info with a zero seed
    prefault: list[tuple[int, int, bool]]  # (address, size, write) touched by a first call


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
    segments = image.load(layout.image_base)
    memory = MemoryImage(layout.mem_size, layout.build_template(segments))
    regs = ffi.new("struct kvm_regs *")
    regs.rip = layout.image_base + image.entry
    regs.rsp = layout.stack_top
    regs.rdi = layout.boot_info
    regs.rflags = x86.RFLAGS_RESERVED
    return _Prepared(
        image, layout, memory, regs, layout.boot_info_bytes(0), layout.first_call_pages()
    )


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

    sregs: Any
    xcrs: Any | None


_cpu_setup: _CpuSetup | None = None


def _cpu_state(kvm: Kvm, vcpu: Vcpu) -> _CpuSetup:
    """Long mode with paging, CPL 3 from the first instruction (SDM 9.8.5: the state is
    loaded directly through KVM_SET_SREGS rather than by running mode-switch code, which
    would have to run in ring 0)."""
    global _cpu_setup
    if _cpu_setup is not None:
        return _cpu_setup
    sregs = vcpu.get_sregs()
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
    _cpu_setup = _CpuSetup(sregs, xcrs)
    return _cpu_setup


_READY, _POISONED, _CLOSED = "ready", "poisoned", "closed"
_DEFAULT_CONFIG = SandboxConfig()
BOOT_INFO_SEED_OFFSET = ffi.offsetof("struct sbx_boot_info", "random_seed")


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
    ) -> None:
        self._state = _CLOSED  # until fully built, so __del__/close are no-ops
        self.config = config if config is not None else _DEFAULT_CONFIG
        self._host_functions = _check_host_functions(host_functions)
        self._output = output
        self.last_output = ""
        prepared = _prepare(guest, self.config)
        self.guest_path = prepared.image.path
        self.layout = layout = prepared.layout
        self.functions: Mapping[str, Signature] = prepared.image.functions
        kvm = Kvm.shared()
        init_kick_signal()

        memory = GuestMemory(prepared.memory)
        vm: Vm | None = None
        vcpu: Vcpu | None = None
        try:
            boot_info = bytearray(prepared.boot_info)
            boot_info[BOOT_INFO_SEED_OFFSET : BOOT_INFO_SEED_OFFSET + 8] = os.urandom(8)
            memory.write(layout.boot_info, boot_info)
            memory.prefault(prepared.prefault)
            vm = kvm.create_vm()
            vm.set_user_memory_region(0, 0, layout.mem_size, memory.host_address)
            vcpu = vm.create_vcpu()
            vcpu.set_cpuid2(kvm.supported_cpuid)
            cpu = _cpu_state(kvm, vcpu)
            vcpu.set_sregs(cpu.sregs)
            if cpu.xcrs is not None:
                vcpu.set_xcrs(cpu.xcrs)
            vcpu.set_regs(prepared.regs)
        except BaseException:
            for owner in (vcpu, vm, memory):
                if owner is not None:
                    owner.close()
            raise
        self._memory, self._vm, self._vcpu = memory, vm, vcpu
        view = memory.view
        self._in = view[layout.in_buf : layout.in_buf + layout.in_size]
        self._reply = view[layout.reply_buf : layout.reply_buf + layout.reply_size]
        self._out = view[layout.out_buf : layout.out_buf + layout.out_size]
        self._lock = threading.Lock()
        self._caller: int | None = None  # native thread id inside call()
        self._cancel_requested = False
        self._poison_reason = ""
        self._state = _READY

    # -- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> Sandbox:
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
        if self._caller is not None and self._caller != threading.get_native_id():
            self.cancel()
        with self._lock:
            self._release(deferred=True)

    def _release(self, *, deferred: bool) -> None:
        if self._state == _CLOSED:
            return
        self._state = _CLOSED
        for view in (self._in, self._reply, self._out):
            view.release()
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
            if self._state != _READY:
                if self._state == _CLOSED:
                    raise SandboxClosed("the sandbox is closed")
                raise SandboxPoisoned(
                    f"the sandbox is poisoned by an earlier {self._poison_reason}; "
                    "restore it or create a new one"
                )
            encode_call(self._in, sig, args)
            limit = timeout if timeout is not None else self.config.timeout
            self._caller = me
            self._cancel_requested = False
            self.last_output = ""
            try:
                return self._run(sig, limit)
            except (GuestTrap, CallTimeout, CallCancelled) as exc:
                self._state = _POISONED
                self._poison_reason = type(exc).__name__
                raise
            finally:
                self._caller = None

    def _run(self, sig: Signature, limit: float | None) -> Value:
        deadline = None if limit is None else time.monotonic() + limit
        host_error: BaseException | None = None
        vcpu = self._vcpu
        while True:
            timeout_ns = 0
            if deadline is not None:
                timeout_ns = max(1, int((deadline - time.monotonic()) * 1e9))
            exit = vcpu.run(timeout_ns)
            kind = exit.kind
            if kind == lib.SBX_EXIT_RETURN:
                result = decode_result(self._out, exit.value, f"result of {sig.name}")
                self._emit(result.output)
                break
            if kind == lib.SBX_EXIT_HOST_CALL:
                host_error = self._host_call(exit.value) or host_error
            elif kind == lib.SBX_EXIT_PRINT:
                self._emit(decode_result(self._out, exit.value, "print flush").output)
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
            encode_result(self._reply, Status.HOST_ERROR, f"{type(exc).__name__}: {exc}"[:1024])
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


def _check_host_functions(funcs: Mapping[str, HostFunction] | None) -> dict[str, HostFunction]:
    out: dict[str, HostFunction] = {}
    for name, fn in (funcs or {}).items():
        if not isinstance(name, str) or not name or len(name.encode()) > 47:
            raise ArgumentError(f"host function name {name!r} must be a str of 1 to 47 bytes")
        if not callable(fn):
            raise ArgumentError(f"host function {name!r} is not callable")
        out[name] = fn
    return out
