"""`Vm`: one KVM virtual machine (a VM fd). Created by `Kvm.create_vm()`."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ._native import ffi, ioctl
from .vcpu import Vcpu

if TYPE_CHECKING:
    from .kvm import Kvm


class Vm:
    def __init__(self, kvm: Kvm, fd: int) -> None:
        self.kvm = kvm
        self.fd = fd

    def set_user_memory_region(
        self, slot: int, guest_phys_addr: int, memory_size: int, userspace_addr: int, flags: int = 0
    ) -> None:
        """KVM_SET_USER_MEMORY_REGION: back guest-physical memory with host memory."""
        region = ffi.new("struct kvm_userspace_memory_region *")
        region.slot = slot
        region.flags = flags
        region.guest_phys_addr = guest_phys_addr
        region.memory_size = memory_size
        region.userspace_addr = userspace_addr
        ioctl(self.fd, "KVM_SET_USER_MEMORY_REGION", region)

    def create_vcpu(self, index: int = 0) -> Vcpu:
        """KVM_CREATE_VCPU, and map its kvm_run area."""
        fd = ioctl(self.fd, "KVM_CREATE_VCPU", index)
        try:
            return Vcpu(self, fd)
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
