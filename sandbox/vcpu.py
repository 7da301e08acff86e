"""`Vcpu`: one virtual CPU (a vCPU fd and its mmapped kvm_run). Created by
`Vm.create_vcpu()`. `run()` enters the native run loop with the GIL released."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ._native import Mapping, check, ffi, ioctl, lib

if TYPE_CHECKING:
    from .vm import Vm


class Vcpu:
    def __init__(self, vm: Vm, fd: int) -> None:
        self.vm = vm
        self.fd = fd
        self._run_map = Mapping(fd, vm.kvm.vcpu_mmap_size, private=False)
        # The pointer is only handed to the run loop while the vCPU is open.
        self.run_ptr = self._run_map.ptr
        self.exit = ffi.new("struct sbx_exit *")

    def set_cpuid2(self, cpuid: Any) -> None:
        ioctl(self.fd, "KVM_SET_CPUID2", cpuid)

    def get_regs(self) -> Any:
        regs = ffi.new("struct kvm_regs *")
        ioctl(self.fd, "KVM_GET_REGS", regs)
        return regs

    def set_regs(self, regs: Any) -> None:
        ioctl(self.fd, "KVM_SET_REGS", regs)

    def get_sregs(self) -> Any:
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

    def run(self, timeout_ns: int) -> Any:
        """Runs until an exit Python must handle; returns the `struct sbx_exit`."""
        check(lib.sbx_vcpu_run(self.fd, self.run_ptr, timeout_ns, self.exit), "KVM_RUN")
        return self.exit

    def close(self) -> None:
        if self.fd >= 0:
            self._run_map.close()
            os.close(self.fd)
            self.fd = -1
