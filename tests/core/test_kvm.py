"""The KVM layer: actionable errors when /dev/kvm cannot be used, KvmError naming the
ioctl, and the kernel objects (Kvm -> Vm -> Vcpu) on a real /dev/kvm."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap

import pytest
from support import ROOT, fd_count

from sandbox import KvmError, KvmUnavailable, SandboxError
from sandbox._native import check
from sandbox.kvm import DEFAULT_PATH, REQUIRED_CAPABILITIES, Kvm, ioctl


def test_missing_device_is_unavailable_with_advice(tmp_path) -> None:
    path = str(tmp_path / "nonexistent" / "kvm")
    with pytest.raises(KvmUnavailable) as info:
        Kvm(path)
    message = str(info.value)
    assert path in message and "does not exist" in message
    assert "virtualization" in message  # says what to do about it
    with pytest.raises(KvmUnavailable, match="/nonexistent"):
        Kvm("/nonexistent")


def test_not_a_kvm_device_fails_cleanly() -> None:
    fds = fd_count()
    with pytest.raises((KvmUnavailable, KvmError)) as info:
        Kvm("/dev/null")
    assert isinstance(info.value, SandboxError)
    assert fd_count() == fds, "the fd of the failed open leaked"


def test_directory_is_unavailable(tmp_path) -> None:
    with pytest.raises(KvmUnavailable, match="cannot open"):
        Kvm(str(tmp_path))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
@pytest.mark.skipif(not os.path.exists(DEFAULT_PATH), reason=f"{DEFAULT_PATH} does not exist")
def test_no_permission_names_the_kvm_group() -> None:
    """A process of an unprivileged user (uid/gid 65534) gets the advice to join the kvm
    group. The interpreter lives under /root, so the child imports the package first and
    then drops its privileges itself, before opening /dev/kvm."""
    st = os.stat(DEFAULT_PATH)
    if st.st_mode & 0o006:
        pytest.skip(f"{DEFAULT_PATH} is accessible to everyone here")
    code = textwrap.dedent(
        """
        import os
        import sandbox
        from sandbox.kvm import Kvm
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
        try:
            Kvm()
        except sandbox.KvmUnavailable as exc:
            print(exc)
        else:
            print("OPENED")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    message = proc.stdout.strip()
    assert "no permission" in message
    assert "kvm" in message and "group" in message
    assert DEFAULT_PATH in message


def test_kvm_error_carries_errno_and_ioctl_name() -> None:
    fd = os.open("/dev/null", os.O_RDONLY)
    os.close(fd)  # a closed fd: EBADF
    with pytest.raises(KvmError) as info:
        ioctl(fd, "KVM_GET_API_VERSION")
    exc = info.value
    assert exc.errno == errno.EBADF
    assert exc.operation == "KVM_GET_API_VERSION"
    assert "KVM_GET_API_VERSION" in str(exc) and "errno 9" in str(exc)


def test_kvm_error_on_a_file_that_is_not_kvm() -> None:
    with open("/dev/null", "rb") as f, pytest.raises(KvmError) as info:
        ioctl(f.fileno(), "KVM_CHECK_EXTENSION", 0)
    assert info.value.errno == errno.ENOTTY
    assert info.value.operation == "KVM_CHECK_EXTENSION"


def test_native_check_maps_negative_errno() -> None:
    assert check(0, "op") == 0
    assert check(7, "op") == 7
    with pytest.raises(KvmError) as info:
        check(-errno.EINVAL, "sbx_thing")
    assert (info.value.errno, info.value.operation) == (errno.EINVAL, "sbx_thing")


# -- on a real /dev/kvm ---------------------------------------------------------------------


@pytest.fixture
def kvm():
    """A private /dev/kvm (not the shared one), closed afterwards."""
    handle = Kvm()
    yield handle
    handle.close()


@pytest.mark.requires_kvm
def test_capabilities_and_cpuid(kvm: Kvm) -> None:
    for cap in REQUIRED_CAPABILITIES:
        assert kvm.check_extension(cap) > 0, cap
    assert kvm.vcpu_mmap_size >= 4096
    leaf0 = kvm.cpuid_entry(0)
    assert leaf0 is not None and leaf0.eax >= 1
    assert kvm.cpuid_entry(0xDEAD_BEEF) is None


@pytest.mark.requires_kvm
def test_shared_is_one_instance() -> None:
    assert Kvm.shared() is Kvm.shared()


@pytest.mark.requires_kvm
def test_vm_and_vcpu_lifecycle(kvm: Kvm) -> None:
    fds = fd_count()
    vm = kvm.create_vm()
    vcpu = vm.create_vcpu()
    assert fd_count() >= fds + 2  # (mmap of kvm_run holds a dup of the vCPU fd)
    regs = vcpu.get_regs()
    regs.rip = 0x1234
    vcpu.set_regs(regs)
    assert vcpu.get_regs().rip == 0x1234
    # A second vCPU with the same index: the kernel refuses it, and says so.
    with pytest.raises(KvmError) as info:
        vm.create_vcpu(0)
    assert info.value.operation == "KVM_CREATE_VCPU"
    assert info.value.errno == errno.EEXIST
    vcpu.close()
    vcpu.close()  # idempotent
    vm.close()
    vm.close()
    assert fd_count() == fds


@pytest.mark.requires_kvm
def test_bad_memory_region_is_a_kvm_error(kvm: Kvm) -> None:
    vm = kvm.create_vm()
    try:
        with pytest.raises(KvmError) as info:
            vm.set_user_memory_region(0, 0, 2 << 20, userspace_addr=0x1001)  # unaligned
        assert info.value.operation == "KVM_SET_USER_MEMORY_REGION"
        assert info.value.errno == errno.EINVAL
    finally:
        vm.close()


# -- Kvm.boot: a machine's memory, VM and vCPU in one native call ------------------------


def _mapping_count() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def _boot(kvm: Kvm, image=None, **changes):
    from sandbox.config import SandboxConfig
    from sandbox.machine import SEED_OFFSET
    from sandbox.template import prepare

    tmpl = prepare(None, SandboxConfig())
    args = dict(
        slot=0,
        prefault=tmpl.layout.first_call_pages,
        seed_at=tmpl.layout.boot_info + SEED_OFFSET,
        seed=b"\x01\x02\x03\x04\x05\x06\x07\x08",
        regs=tmpl.cpu.regs,
        sregs=tmpl.cpu.sregs,
    )
    args.update(changes)
    return tmpl, kvm.boot(image if image is not None else tmpl.memory, **args)


def _close(parts) -> None:
    for part in reversed(parts):  # vCPU, VM, then the memory the VM used
        part.close()


@pytest.mark.requires_kvm
def test_boot_makes_memory_vm_and_vcpu(kvm: Kvm) -> None:
    from sandbox.machine import SEED_OFFSET

    warm = _boot(kvm)[1]  # the template and the pagemap reader open before counting
    warm[0].written_ranges()
    _close(warm)
    fds, maps = fd_count(), _mapping_count()
    tmpl, (memory, vm, vcpu) = _boot(kvm)
    layout = tmpl.layout
    assert memory.size == layout.mem_size and memory.image is tmpl.memory
    assert vm.slots == {0: (0, layout.mem_size, memory.host_address)}
    seed_at = layout.boot_info + SEED_OFFSET
    assert bytes(memory.view[seed_at : seed_at + 8]) == b"\x01\x02\x03\x04\x05\x06\x07\x08"
    # The first call's pages were populated for writing: private copies already.
    written = memory.written_ranges()
    for start, size, _ in layout.first_call_pages:
        assert any(a <= start and start + size <= a + n for a, n in written), hex(start)
    # The registers wait in the sync area; completing the load applies them.
    assert vcpu.load_pending
    vcpu.complete_pending()
    assert vcpu.get_regs().rip == tmpl.cpu.regs.rip
    assert vcpu.get_sregs().cr3 == tmpl.cpu.sregs.cr3
    _close((memory, vm, vcpu))
    assert (fd_count(), _mapping_count()) == (fds, maps)


@pytest.mark.requires_kvm
def test_boot_failures_name_the_step_and_leave_nothing_open(kvm: Kvm) -> None:
    import resource

    from sandbox.memory import MemoryImage

    tmpl, parts = _boot(kvm)
    _close(parts)
    fds, maps = fd_count(), _mapping_count()
    size = tmpl.layout.mem_size
    # A memory slot KVM refuses: the VM and the mapping made before it are undone.
    with pytest.raises(KvmError) as info:
        _boot(kvm, slot=1 << 30)
    assert info.value.operation == "KVM_SET_USER_MEMORY_REGION"
    assert (fd_count(), _mapping_count()) == (fds, maps)
    # Ranges outside the memory are refused before anything is made.
    with pytest.raises(ValueError, match="outside the memory"):
        _boot(kvm, seed_at=size - 4)
    with pytest.raises(ValueError, match="outside the memory"):
        _boot(kvm, prefault=((size - 4096, 8192, True),))
    # An image whose descriptor is gone: the mapping fails (EBADF).
    closed = MemoryImage(size, [(0, b"x")])
    closed.close()
    with pytest.raises(OSError):
        _boot(kvm, image=closed)
    assert (fd_count(), _mapping_count()) == (fds, maps)
    # No descriptor left for the vCPU (EMFILE after the VM took the last one).
    first = os.dup(0)
    second = os.dup(0)
    os.close(first)
    os.close(second)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(first, second), hard))
    try:
        with pytest.raises(KvmError) as info:
            _boot(kvm)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert info.value.operation == "KVM_CREATE_VCPU"
    assert info.value.errno == errno.EMFILE
    assert (fd_count(), _mapping_count()) == (fds, maps)


@pytest.mark.requires_kvm
def test_boot_interrupted_before_the_owners_leaves_nothing_open(kvm: Kvm, monkeypatch) -> None:
    """An exception between the native boot and the Python owners taking over (Ctrl-C,
    MemoryError): what C made is closed, nothing leaks."""
    import sandbox.kvm as kvm_module

    _close(_boot(kvm)[1])
    fds, maps = fd_count(), _mapping_count()

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(kvm_module, "Vcpu", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _boot(kvm)
    assert (fd_count(), _mapping_count()) == (fds, maps)


@pytest.mark.requires_kvm
@pytest.mark.parametrize("when", ["as the C call returns", "between the owners"])
def test_boot_interrupted_as_the_native_call_returns_leaves_nothing_open(
    kvm: Kvm, when: str
) -> None:
    """Ctrl-C during a boot arrives as the native call returns (the GIL is released for
    its ~0.5 ms): raised there, before the result is even stored, or between the owners'
    constructors; what C made is closed either way. (A profile hook raising on the
    events is where Python would raise a pending signal.)"""
    import sys

    _close(_boot(kvm)[1])
    fds, maps = fd_count(), _mapping_count()
    raised: list[str] = []

    def interrupt(frame: object, event: str, arg: object) -> None:
        if raised:
            return
        name = getattr(arg, "__name__", "") if event == "c_return" else ""
        if name == "sbx_machine_boot" and when == "as the C call returns":
            raised.append(name)
            raise KeyboardInterrupt
        code = getattr(frame, "f_code", None)
        if (
            event == "call"
            and when == "between the owners"
            and code is not None
            and code.co_name == "__init__"
            and code.co_filename.endswith("/sandbox/vm.py")
        ):
            raised.append("Vm")
            raise KeyboardInterrupt

    sys.setprofile(interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            _boot(kvm)
    finally:
        sys.setprofile(None)
    assert raised
    assert (fd_count(), _mapping_count()) == (fds, maps)
