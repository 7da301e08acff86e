"""State ring-3 code can change beyond the general registers, and that a restore resets:
the FS/GS bases (WRFSBASE/WRGSBASE run in ring 3 on this project's nested hosts, whatever
CR4.FSGSBASE says) and the data segment selectors. Each is changed by the guest, then
every reset path must give the next call the snapshot's values."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from support import GUESTS

from sandbox import GuestTrap, Sandbox, SandboxPool
from sandbox import x86_64 as x86

pytestmark = pytest.mark.requires_kvm

BASE = 0x1234_5678_9000


@pytest.fixture(scope="module")
def segments_guest(guest_build: ModuleType, guest_dir: Path) -> Path:
    return guest_build.build_guest([GUESTS / "testing" / "segments.c"], guest_dir / "segments.elf")


@pytest.fixture
def sb(segments_guest: Path) -> Iterator[Sandbox]:
    with Sandbox(segments_guest) as box:
        yield box


def _fsgsbase_runs(sb: Sandbox) -> bool:
    """Whether WRFSBASE runs in ring 3 here (it is #UD where CR4.FSGSBASE is clear)."""
    try:
        sb.call("set_fs_base", 0)
    except GuestTrap as trap:
        assert trap.kind == "invalid_opcode"
        sb.restore()
        return False
    return True


def test_fs_and_gs_bases_are_reset_by_restore(sb: Sandbox) -> None:
    if not _fsgsbase_runs(sb):
        pytest.skip("WRFSBASE is #UD in ring 3 on this host: the guest cannot change them")
    sb.restore()
    start = sb.call("get_fs_base"), sb.call("get_gs_base")
    sb.call("set_fs_base", BASE)
    sb.call("set_gs_base", BASE + 0x1000)
    assert sb.call("get_fs_base") == BASE  # it persists between calls...
    assert sb.call("get_gs_base") == BASE + 0x1000
    sb.restore()  # ...until a restore
    assert (sb.call("get_fs_base"), sb.call("get_gs_base")) == start


def test_a_snapshot_carries_the_bases(sb: Sandbox) -> None:
    if not _fsgsbase_runs(sb):
        pytest.skip("WRFSBASE is #UD in ring 3 on this host")
    sb.call("set_fs_base", BASE)
    snap = sb.snapshot()
    sb.call("set_fs_base", 0)
    with Sandbox.from_snapshot(snap) as other:
        assert other.call("get_fs_base") == BASE
    sb.restore(snap)
    assert sb.call("get_fs_base") == BASE


def test_fresh_state_per_call_and_pools_reset_the_bases(segments_guest: Path) -> None:
    with Sandbox(segments_guest, reset="per_call") as per_call:
        if not _fsgsbase_runs(per_call):
            pytest.skip("WRFSBASE is #UD in ring 3 on this host")
        per_call.call("set_fs_base", BASE)
        assert per_call.call("get_fs_base") == 0
    with SandboxPool(segments_guest, size=1) as pool:
        pool.call("set_gs_base", BASE)
        assert pool.call("get_gs_base") == 0


def test_data_selectors_are_reset_by_restore(sb: Sandbox) -> None:
    """On bare metal the guest reads the selectors the runtime loads (SEL_USER_DATA);
    under PVM (this project's nested hosts) it reads the host's, as for LSL/LAR: either
    way, what it changes goes back with a restore."""
    start = sb.call("get_ds"), sb.call("get_gs")
    assert start[0] in (x86.SEL_USER_DATA, 0)
    sb.call("set_data_selectors", 0)  # a null selector: allowed in 64-bit mode
    assert sb.call("get_ds") == 0 and sb.call("get_gs") == 0
    sb.restore()
    assert (sb.call("get_ds"), sb.call("get_gs")) == start
