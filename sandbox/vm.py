"""`Vm`: one KVM virtual machine (a VM fd) and its memory slots. Created by
`Kvm.create_vm()`; creates its vCPUs."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ._native import ffi, ioctl
from .vcpu import Vcpu

if TYPE_CHECKING:
    from .kvm import Kvm


class Vm:
    def __init__(
        self, kvm: Kvm, fd: int, slots: dict[int, tuple[int, int, int]] | None = None
    ) -> None:
        """`slots`: those a VM made in native code already has (Kvm.boot)."""
        self.kvm = kvm
        self.fd = fd
        # slot -> (guest-physical address, size, host address) of the slots in use.
        self.slots: dict[int, tuple[int, int, int]] = slots if slots is not None else {}

    def set_user_memory_region(
        self, slot: int, guest_phys_addr: int, memory_size: int, userspace_addr: int, flags: int = 0
    ) -> None:
        """KVM_SET_USER_MEMORY_REGION: back guest-physical memory with host memory (a
        size of 0 deletes the slot). The host memory must stay mapped while the slot
        uses it."""
        region = ffi.new("struct kvm_userspace_memory_region *")
        region.slot = slot
        region.flags = flags
        region.guest_phys_addr = guest_phys_addr
        region.memory_size = memory_size
        region.userspace_addr = userspace_addr
        ioctl(self.fd, "KVM_SET_USER_MEMORY_REGION", region)
        if memory_size:
            self.slots[slot] = (guest_phys_addr, memory_size, userspace_addr)
        else:
            self.slots.pop(slot, None)

    def remove_memory_region(self, slot: int) -> None:
        """Deletes a slot (KVM drops every guest mapping of it)."""
        gpa, _, address = self.slots[slot]
        self.set_user_memory_region(slot, gpa, 0, address)

    def flush_memory_region(self, slot: int) -> None:
        """Makes KVM forget every guest mapping it built of a slot, by deleting and
        re-adding it: needed after the host itself changed page-table entries the guest
        may have used, since KVM's shadow MMU tracks only the guest's own writes to them."""
        gpa, size, address = self.slots[slot]
        self.set_user_memory_region(slot, gpa, 0, address)
        self.set_user_memory_region(slot, gpa, size, address)

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
            self.slots.clear()
