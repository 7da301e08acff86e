"""The host's Wasm memory windows (sandbox/wasm/windows.py), driven from a real guest in
a real VM: a test guest asks for window pages the way the engine guest does, then reads
and writes guest virtual addresses. What is mapped is reachable, the byte past the end
faults, and a restore to fewer pages makes the taken-back pages fault again."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from support import GUESTS

from sandbox import GuestTrap, HostFunctionError, Sandbox, SandboxConfig
from sandbox.config import MiB
from sandbox.wasm.abi import WASM_PAGE, WINDOW_BASE, WINDOW_STRIDE
from sandbox.wasm.wasi import MemoryOutOfBounds
from sandbox.wasm.windows import LinearMemory, Windows

pytestmark = pytest.mark.requires_kvm
CONFIG = SandboxConfig(memory_size=16 * MiB, heap_size=4 * MiB)


@pytest.fixture(scope="module")
def windows_guest(guest_build: ModuleType, guest_dir: Path) -> Path:
    return guest_build.build_guest([GUESTS / "testing" / "windows.c"], guest_dir / "windows.elf")


@pytest.fixture
def sb(windows_guest: Path) -> Iterator[tuple[Sandbox, Windows]]:
    holder: list[Windows] = []
    box = Sandbox(
        windows_guest,
        config=CONFIG,
        host_functions={"__wasm_grow": lambda w, p: holder[0].grow(w, p)},
    )
    holder.append(Windows(box.memory, box.layout))
    box.watch_page_tables(holder[0].watch)
    with box:
        yield box, holder[0]


def base(window: int) -> int:
    return WINDOW_BASE + window * WINDOW_STRIDE


def assert_faults(box: Sandbox, addr: int) -> None:
    with pytest.raises(GuestTrap) as info:
        box.call("peek", addr)
    assert info.value.kind == "page_fault" and info.value.address == addr
    box.restore()


def test_mapped_pages_are_usable_and_the_next_byte_faults(sb: tuple[Sandbox, Windows]) -> None:
    box, _ = sb
    assert box.call("grow", 0, 2) is True
    box.call("poke", base(0), 0x1122)
    box.call("poke", base(0) + 2 * WASM_PAGE - 8, 7)
    assert box.call("peek", base(0)) == 0x1122
    assert box.call("peek", base(0) + 2 * WASM_PAGE - 8) == 7
    assert box.call("peek", base(0) + 4096) == 0  # fresh pages are zero
    assert_faults(box, base(0) + 2 * WASM_PAGE)
    assert_faults(box, base(0) + 0xFFFF_FFFF + 0xFFFF_FFFF)  # the farthest a wasm access reaches


def test_windows_are_separate_and_grow_in_place(sb: tuple[Sandbox, Windows]) -> None:
    box, windows = sb
    assert box.call("grow", 3, 1) and box.call("grow", 0, 1)
    box.call("poke", base(3), 33)
    box.call("poke", base(0), 11)
    assert box.call("grow", 3, 40)  # crosses a 2 MiB page-table boundary
    assert box.call("peek", base(3)) == 33 and box.call("peek", base(0)) == 11
    box.call("poke", base(3) + 40 * WASM_PAGE - 8, 5)
    assert windows.pages(3) == 40 and windows.pages(0) == 1 and windows.pages(1) == 0
    assert_faults(box, base(1))


def test_linear_memory_access_from_the_host(sb: tuple[Sandbox, Windows]) -> None:
    box, windows = sb
    box.call("grow", 2, 1)
    box.call("grow", 1, 1)  # interleaved: window 2's next pages are not contiguous
    box.call("grow", 2, 2)
    mem = LinearMemory(windows, 2)
    assert mem.size == 2 * WASM_PAGE
    data = bytes(range(256)) * 200  # crosses pages and the non-contiguous boundary
    mem.write(WASM_PAGE - 1000, data)
    assert mem.read(WASM_PAGE - 1000, len(data)) == data
    assert box.call("peek", base(2) + WASM_PAGE) == int.from_bytes(data[1000:1008], "little")
    for addr, size in [(-1, 1), (2 * WASM_PAGE - 3, 4), (0, 2 * WASM_PAGE + 1)]:
        with pytest.raises(MemoryOutOfBounds):
            mem.read(addr, size)


def test_restore_takes_grown_pages_back(sb: tuple[Sandbox, Windows]) -> None:
    box, windows = sb
    box.call("grow", 0, 1)
    box.call("poke", base(0), 1)
    snap = box.snapshot()
    box.call("grow", 0, 3)
    box.call("poke", base(0) + 2 * WASM_PAGE, 2)
    assert box.call("peek", base(0) + 2 * WASM_PAGE) == 2
    box.restore(snap)
    assert windows.pages(0) == 1
    assert box.call("peek", base(0)) == 1
    # KVM mapped the page while it was grown: the restore must make it fault again.
    assert_faults(box, base(0) + 2 * WASM_PAGE)
    box.restore(snap)
    assert box.call("grow", 0, 3)
    assert box.call("peek", base(0) + 2 * WASM_PAGE) == 0  # regrown pages are zero again


def test_hostile_grow_arguments(sb: tuple[Sandbox, Windows]) -> None:
    box, _ = sb
    with pytest.raises(HostFunctionError):
        box.call("grow", 5000, 1)
    assert box.call("grow", 0, 65537) is False  # beyond the Wasm limit
    assert box.call("grow", 0, 1000) is False  # beyond the pool (16 MiB memory)
    assert box.call("grow", 0, 100) is True


def test_pool_is_not_reachable_through_the_identity_map(sb: tuple[Sandbox, Windows]) -> None:
    box, windows = sb
    box.call("grow", 0, 1)
    assert_faults(box, windows.pool_start)  # the page behind window 0
    assert_faults(box, windows.state)


def test_restore_after_grow_cost(sb: tuple[Sandbox, Windows]) -> None:
    """The flush after a restore that takes pages back is bounded (reported, loose)."""
    box, _ = sb
    box.call("grow", 0, 1)
    snap = box.snapshot()
    box.restore(snap)
    costs = []
    for _ in range(5):
        box.call("grow", 0, 2)
        t0 = time.perf_counter()
        box.restore(snap)
        box.call("peek", base(0))
        costs.append(time.perf_counter() - t0)
    assert min(costs) < 0.05


def test_restore_takes_new_windows_back(sb: tuple[Sandbox, Windows]) -> None:
    """A window made after the snapshot needed new upper-level tables (PD, PDPT entry):
    KVM must forget those too."""
    box, windows = sb
    box.call("grow", 0, 1)
    snap = box.snapshot()
    assert box.call("grow", 40, 1)  # PML4 slot of windows 32..63: a new PDPT
    box.call("poke", base(40), 9)
    assert box.call("peek", base(40)) == 9
    box.restore(snap)
    assert windows.pages(40) == 0
    assert_faults(box, base(40))
