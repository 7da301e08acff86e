"""Many calls and many sandboxes leave no file descriptors and no memory behind."""

from __future__ import annotations

import gc
import os

import pytest
from support import drain, fd_count

from sandbox import ConfigError, GuestAbiMismatch, GuestTrap, Sandbox, SandboxConfig

pytestmark = pytest.mark.requires_kvm

MiB = 1 << 20
RSS_SLACK = 4 * MiB


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def settle() -> tuple[int, int]:
    drain()
    gc.collect()
    return fd_count(), rss()


def cycle(n: int, **kwargs: object) -> None:
    for _ in range(n):
        with Sandbox(**kwargs) as box:  # type: ignore[arg-type]
            assert box.call("add", 1, 2) == 3


def test_sequential_calls_leak_nothing(sb: Sandbox) -> None:
    for _ in range(200):  # warm up
        sb.call("echo", "warm")
    fds, mem = settle()
    for i in range(1000):
        assert sb.call("echo", f"call {i}") == f"call {i}"
        sb.call("echo_bytes", b"\x00" * 1024)
    fds_after, mem_after = settle()
    assert fds_after == fds
    assert mem_after - mem < RSS_SLACK, (mem_after - mem) / MiB


def test_create_close_cycles_leak_nothing() -> None:
    cycle(100)  # warm up: caches, the reaper thread, allocator pools
    fds, mem = settle()
    cycle(1000)
    fds_after, mem_after = settle()
    assert fds_after == fds
    assert mem_after - mem < RSS_SLACK, (mem_after - mem) / MiB


def test_closing_really_releases_the_vm() -> None:
    fds, _ = settle()
    boxes = [Sandbox() for _ in range(10)]
    assert fd_count() >= fds + 20  # at least a VM and a vCPU fd each
    for box in boxes:
        box.close()
    assert settle()[0] == fds


def test_unclosed_sandboxes_are_released_when_collected() -> None:
    cycle(10)
    fds, mem = settle()
    for _ in range(300):
        box = Sandbox()
        box.call("add", 1, 2)
        del box  # never closed: __del__ releases it
    fds_after, mem_after = settle()
    assert fds_after == fds
    assert mem_after - mem < RSS_SLACK, (mem_after - mem) / MiB


def test_trapped_sandboxes_leak_nothing() -> None:
    cycle(10)
    fds, mem = settle()
    for kind in ["null", "ud2", "stack_overflow", "bad_port"] * 50:
        with Sandbox() as box, pytest.raises(GuestTrap):
            box.call("fault", kind)
    fds_after, mem_after = settle()
    assert fds_after == fds
    assert mem_after - mem < RSS_SLACK, (mem_after - mem) / MiB


def test_failed_creation_leaks_nothing(tmp_path, big_guest) -> None:
    bad = tmp_path / "bad.elf"
    bad.write_bytes(b"\x7fELF" + bytes(100))
    small = SandboxConfig(memory_size=2 * MiB)
    fds, _ = settle()
    for _ in range(50):
        with pytest.raises(GuestAbiMismatch):
            Sandbox(bad)
        with pytest.raises(ConfigError):
            Sandbox(big_guest, config=small)
    assert settle()[0] == fds
