"""`Vcpu`: one virtual CPU (a vCPU fd and its mmapped kvm_run). Created by
`Vm.create_vcpu()`. `run()` enters the native run loop with the GIL released.

The vCPU owns the one subtle rule of changing its state between runs (KVM's API: an
exit to user space for I/O or MMIO leaves the instruction for the next KVM_RUN to
complete, and that completion happens after registers loaded through the sync area are
applied): `load_state` completes whatever the last exit left pending before it loads
anything, so a new state is exactly the state given (native/sbx_vcpu.h explains which
exits leave what)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ._native import Mapping, check, ffi, init_kick_signal, ioctl, kick_thread, lib
from .exits import COMMON_EXITS, Exit, ExitKind

if TYPE_CHECKING:
    from .vm import Vm

# Exits by a 32-bit `out`: the instruction is left pending, and its completion skips it
# only while RIP still points at it.
_OUT_EXITS = frozenset({ExitKind.RETURN, ExitKind.HOST_CALL, ExitKind.PRINT, ExitKind.TRAP})
# Exits after which KVM's own vCPU state may be off (a shutdown, an emulation failure):
# such a vCPU is not given to another sandbox (machines.py), though a restore works.
_DAMAGING = frozenset({ExitKind.SHUTDOWN, ExitKind.INTERNAL, ExitKind.UNKNOWN})
_run = lib.sbx_vcpu_run  # bound once: the hot path
_common_exits = COMMON_EXITS


class Vcpu:
    def __init__(self, vm: Vm, fd: int, run_map: Mapping | None = None) -> None:
        """`run_map`: the vCPU's kvm_run, mapped by native code that also loaded the
        registers for the first run (Kvm.boot); None: mapped here."""
        self.vm = vm
        self.fd = fd
        init_kick_signal()
        # Registers wait in the sync area for the next run.
        self._load_pending = run_map is not None
        if run_map is None:
            run_map = Mapping(fd, vm.kvm.vcpu_mmap_size, private=False)
            lib.sbx_vcpu_sync_init(run_map.ptr)
        self._run_map = run_map
        # The pointer is only handed to the run loop while the vCPU is open.
        self.run_ptr = run_map.ptr
        self._exit = ffi.new("struct sbx_exit *")
        self._last: Exit | None = None  # the last exit, until completed or superseded
        self.damaged = False  # see _DAMAGING

    # -- running -----------------------------------------------------------------------

    def run(self, timeout_ns: int) -> Exit:
        """Runs until an exit Python must handle (KVM_RUN in the native loop, the GIL
        released). `timeout_ns` > 0 kicks the run at that deadline."""
        answer = _run(self.fd, self.run_ptr, timeout_ns, self._exit)
        exit = _common_exits.get(answer)
        if exit is None:
            if answer < 0:
                self.damaged = True
                check(answer, "KVM_RUN")
            exit = Exit.decode(answer, self._exit)
            if exit.kind in _DAMAGING:
                self.damaged = True
        self._last = exit
        self._load_pending = False
        return exit

    @property
    def load_pending(self) -> bool:
        """Whether registers loaded with load_state wait for the next run."""
        return self._load_pending

    def kick(self) -> bool:
        """Kicks the thread in `run` now out of KVM_RUN (its run ends with KICKED);
        False if no thread is in `run`. Any thread may call it."""
        tid = int(self._exit.thread)
        if tid:
            kick_thread(tid)
        return bool(tid)

    def complete_pending(self) -> None:
        """Completes the last exit and applies registers waiting in the sync area,
        without running the guest (KVM_RUN with immediate_exit)."""
        if self._last is not None or self._load_pending:
            check(lib.sbx_vcpu_complete_io(self.fd, self.run_ptr), "KVM_RUN (complete I/O)")
            self._last = None
            self._load_pending = False

    # -- state -------------------------------------------------------------------------

    def settle(self, rip: int | None) -> None:
        """Completes what the last exit left for KVM to complete, if a new state with
        this RIP would not cancel it (native/sbx_vcpu.h); with None, only what no new
        state cancels (call it so before changing guest memory: a pending string `in`
        writes to memory when completed)."""
        last = self._last
        if last is None:
            return
        if last.pending_io or (
            rip is not None
            and last.kind in _OUT_EXITS
            and lib.sbx_vcpu_exit_rip(self.run_ptr) == rip
        ):
            self.complete_pending()
        elif rip is not None:
            self._last = None  # the new state cancels it

    def load_state(self, regs: Any, sregs: Any | None) -> None:
        """Loads general (and, unless None, special) registers, applied at the next
        run through kvm_run's sync area (no ioctl). Whatever the last exit left for KVM
        to complete is completed first (settle), so that it cannot act on the new state."""
        self.settle(regs.rip)
        lib.sbx_vcpu_load_state(self.run_ptr, regs, ffi.NULL if sregs is None else sregs)
        self._load_pending = True

    def get_regs(self) -> Any:
        self.complete_pending()
        regs = ffi.new("struct kvm_regs *")
        ioctl(self.fd, "KVM_GET_REGS", regs)
        return regs

    def set_regs(self, regs: Any) -> None:
        """KVM_SET_REGS (after completing what the last exit left pending)."""
        self.complete_pending()
        ioctl(self.fd, "KVM_SET_REGS", regs)

    def get_sregs(self) -> Any:
        self.complete_pending()
        sregs = ffi.new("struct kvm_sregs *")
        ioctl(self.fd, "KVM_GET_SREGS", sregs)
        return sregs

    def get_xcrs(self) -> Any:
        xcrs = ffi.new("struct kvm_xcrs *")
        ioctl(self.fd, "KVM_GET_XCRS", xcrs)
        return xcrs

    def set_xcrs(self, xcrs: Any) -> None:
        ioctl(self.fd, "KVM_SET_XCRS", xcrs)

    def get_xsave(self) -> Any:
        """KVM_GET_XSAVE: x87/SSE/AVX state (the legacy FXSAVE area and beyond)."""
        xsave = ffi.new("struct kvm_xsave *")
        ioctl(self.fd, "KVM_GET_XSAVE", xsave)
        return xsave

    def set_xsave(self, xsave: Any) -> None:
        ioctl(self.fd, "KVM_SET_XSAVE", xsave)

    def close(self) -> None:
        if self.fd >= 0:
            self._run_map.close()
            os.close(self.fd)
            self.fd = -1
