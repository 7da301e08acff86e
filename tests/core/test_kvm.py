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
