"""`Kvm`: the open /dev/kvm. Checks the API version and capabilities; creates VMs, and
boots a machine's memory, VM and vCPU in one native call (`boot`)."""

from __future__ import annotations

import functools
import os
import threading
from typing import Any

from ._native import Mapping, check, ffi, ioctl, lib
from .errors import KvmUnavailable
from .memory import GuestMemory, MemoryImage
from .vcpu import Vcpu
from .vm import Vm

DEFAULT_PATH = "/dev/kvm"

# Capabilities without which this runtime cannot work, and why.
REQUIRED_CAPABILITIES = {
    "KVM_CAP_USER_MEMORY": "guest memory from user space",
    "KVM_CAP_IMMEDIATE_EXIT": "reliable timeouts (kvm_run->immediate_exit)",
    "KVM_CAP_EXT_CPUID": "setting the guest's CPUID",
}

CPUID_MAX_ENTRIES = 256

# sbx_machine_boot's steps that are ioctls (or madvise), by the name a KvmError gives.
_BOOT_STEPS = {
    lib.SBX_BOOT_PREFAULT: "madvise",
    lib.SBX_BOOT_CREATE_VM: "KVM_CREATE_VM",
    lib.SBX_BOOT_MEMSLOT: "KVM_SET_USER_MEMORY_REGION",
    lib.SBX_BOOT_CREATE_VCPU: "KVM_CREATE_VCPU",
    lib.SBX_BOOT_SET_CPUID: "KVM_SET_CPUID2",
}
_BOOT_MMAPS = {
    lib.SBX_BOOT_MAP: "mmap of the guest memory",
    lib.SBX_BOOT_MAP_RUN: "mmap of the vCPU's kvm_run",
}


@functools.lru_cache(maxsize=32)
def _triples(ranges: tuple[tuple[int, int, bool], ...]) -> Any:
    """(offset, length, write) ranges as one uint64_t array (made once per layout)."""
    return ffi.new("uint64_t[]", [int(n) for triple in ranges for n in triple] or [0])


class Kvm:
    """An open /dev/kvm. Use `Kvm.shared()` for the process-wide instance."""

    _shared: Kvm | None = None
    _shared_lock = threading.Lock()

    def __init__(self, path: str = DEFAULT_PATH) -> None:
        self.path = path
        self.fd = self._open(path)
        try:
            version = ioctl(self.fd, "KVM_GET_API_VERSION")
            if version != lib.KVM_API_VERSION:
                raise KvmUnavailable(
                    f"{path} speaks KVM API version {version}, this runtime needs "
                    f"{lib.KVM_API_VERSION}: use a Linux kernel newer than 2.6.22"
                )
            for cap, why in REQUIRED_CAPABILITIES.items():
                if self.check_extension(cap) <= 0:
                    raise KvmUnavailable(
                        f"{path} lacks {cap} ({why}): use a newer Linux kernel (5.x or later)"
                    )
            self.vcpu_mmap_size = ioctl(self.fd, "KVM_GET_VCPU_MMAP_SIZE")
            self.supported_cpuid = self._get_supported_cpuid()
        except BaseException:
            os.close(self.fd)
            raise

    @staticmethod
    def _open(path: str) -> int:
        try:
            return os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise KvmUnavailable(
                f"{path} does not exist: this machine offers no KVM. Enable virtualization "
                "(VT-x/AMD-V) in the firmware and load kvm_intel or kvm_amd, or on a cloud VM "
                "pick an instance type with nested virtualization"
            ) from None
        except PermissionError:
            raise KvmUnavailable(
                f"no permission to open {path}: add your user to the group that owns it "
                f"(usually 'kvm': sudo usermod -aG kvm $USER, then log in again) or run as root"
            ) from None
        except OSError as exc:
            raise KvmUnavailable(f"cannot open {path}: {exc.strerror}") from None

    @classmethod
    def shared(cls) -> Kvm:
        """The process-wide /dev/kvm, opened on first use (opening it and reading the
        supported CPUID costs ~0.4 ms, so it is done once)."""
        kvm = cls._shared
        if kvm is None:
            with cls._shared_lock:
                kvm = cls._shared
                if kvm is None:
                    kvm = cls._shared = cls()
        return kvm

    def check_extension(self, cap: str) -> int:
        """KVM_CHECK_EXTENSION for the capability constant named `cap`."""
        return ioctl(self.fd, "KVM_CHECK_EXTENSION", getattr(lib, cap))

    def _get_supported_cpuid(self) -> Any:
        raw = ffi.new(
            "char[]",
            ffi.sizeof("struct kvm_cpuid2")
            + CPUID_MAX_ENTRIES * ffi.sizeof("struct kvm_cpuid_entry2"),
        )
        cpuid = ffi.cast("struct kvm_cpuid2 *", raw)
        cpuid.nent = CPUID_MAX_ENTRIES
        ioctl(self.fd, "KVM_GET_SUPPORTED_CPUID", raw)
        return raw

    def cpuid_entry(self, function: int, index: int = 0) -> Any | None:
        """The supported CPUID entry for (function, index), or None."""
        cpuid = ffi.cast("struct kvm_cpuid2 *", self.supported_cpuid)
        entries = ffi.cast(
            "struct kvm_cpuid_entry2 *", self.supported_cpuid + ffi.sizeof("struct kvm_cpuid2")
        )
        for i in range(cpuid.nent):
            e = entries[i]
            if e.function == function and e.index == index:
                return e
        return None

    def has_cpu_feature(self, feature: tuple[int, str, int]) -> bool:
        """Whether the CPU KVM offers has `feature` (an x86_64.CPUID_* bit)."""
        leaf, register, bit = feature
        entry = self.cpuid_entry(leaf)
        return entry is not None and bool(getattr(entry, register) & (1 << bit))

    def create_vm(self) -> Vm:
        """KVM_CREATE_VM."""
        return Vm(self, ioctl(self.fd, "KVM_CREATE_VM"))

    def boot(
        self,
        image: MemoryImage,
        *,
        slot: int,
        prefault: tuple[tuple[int, int, bool], ...],
        seed_at: int,
        seed: bytes,
        regs: Any,
        sregs: Any,
    ) -> tuple[GuestMemory, Vm, Vcpu]:
        """A new VM with one vCPU, running in a new copy-on-write mapping of `image` at
        guest-physical 0 (memory slot `slot`): the `prefault` ranges populated (as
        GuestMemory.prefault takes them), the 8 bytes of `seed` written at `seed_at`,
        the supported CPUID set, `regs` and `sregs` loaded for the first run. One native
        call (native/sbx_machine.h says why). Raises KvmError naming the step that
        failed, OSError for a failed mmap, ValueError for a range outside the memory;
        nothing is left open then."""
        # Held here until the call returns: the struct's pointer does not keep it alive,
        # and the cache may drop it meanwhile (another thread booting other layouts).
        prefault_array = _triples(prefault)
        boot = ffi.new("struct sbx_boot *")
        boot.kvm_fd = self.fd
        boot.image_fd = image.fd
        boot.mem_size = size = image.size
        boot.extents = image.extents_array
        boot.n_extents = len(image.extents)
        boot.prefault = prefault_array
        boot.n_prefault = len(prefault)
        boot.seed_at = seed_at
        boot.seed = int.from_bytes(seed, "little")
        boot.slot = slot
        boot.run_size = run_size = self.vcpu_mmap_size
        boot.cpuid = self.supported_cpuid
        boot.regs = regs
        boot.sregs = sregs if sregs is not None else ffi.NULL
        memory: GuestMemory | None = None
        run_map: Mapping | None = None
        try:
            # C sets the four outputs only on success, just before it returns; a Ctrl-C
            # may be raised as the call returns, before `rc` is even stored.
            rc = lib.sbx_machine_boot(boot)
            if rc < 0:  # C undid what it made
                if boot.failed == lib.SBX_BOOT_ARGS:
                    raise ValueError("a prefault range or the seed lies outside the memory image")
                step = _BOOT_STEPS.get(boot.failed)
                if step is None:
                    raise OSError(-rc, f"{_BOOT_MMAPS[boot.failed]} failed: {os.strerror(-rc)}")
                check(rc, step)
            memory = GuestMemory(image, Mapping.adopt(boot.mem, size), prefault)
            run_map = Mapping.adopt(boot.run, run_size)
            vm = Vm(self, boot.vm_fd, {slot: (0, size, memory.host_address)})
            return memory, vm, Vcpu(vm, boot.vcpu_fd, run_map)
        except BaseException:  # Ctrl-C or MemoryError before the owners hold it all
            if boot.mem != ffi.NULL:
                # The kvm_run mapping holds the vCPU, which holds the VM, which uses the
                # memory: released in that order (an owner that exists releases its views).
                if run_map is not None:
                    run_map.close()
                else:
                    lib.sbx_unmap(boot.run, run_size)
                os.close(boot.vcpu_fd)
                os.close(boot.vm_fd)
                if memory is not None:
                    memory.close()
                else:
                    lib.sbx_unmap(boot.mem, size)
            raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def is_nested() -> bool:
    """Whether this Linux runs under a hypervisor itself (CPUID's hypervisor bit)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return " hypervisor" in line
    except OSError:
        pass
    return False


def kvm_module() -> str:
    """Which KVM implementation the kernel runs (kvm_intel, kvm_amd, kvm_pvm), or ''."""
    for name in ("kvm_intel", "kvm_amd", "kvm_pvm"):
        if os.path.isdir(f"/sys/module/{name}"):
            return name
    return ""
