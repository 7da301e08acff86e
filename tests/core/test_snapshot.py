"""Snapshot and restore: nothing leaks across a restore, restores work after every kind of
fault, per-call reset, reseeding, and the on-disk format (round trip and rejection of
corrupt, truncated and foreign files)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from support import drain, fd_count

from sandbox import (
    ArgumentError,
    CallTimeout,
    FunctionNotFound,
    GuestAbort,
    GuestTrap,
    Sandbox,
    SandboxClosed,
    SandboxConfig,
    SandboxPoisoned,
    Snapshot,
    SnapshotError,
)
from sandbox._native import ffi
from sandbox.cpu import cpu_setup
from sandbox.snapshot import MAGIC

pytestmark = pytest.mark.requires_kvm

FAULTS = [
    "null",
    "wild_write",
    "exec_data",
    "ud2",
    "divzero",
    "stack_overflow",
    "bad_port",
    "privileged",
    "abort",
    "spin_forever",
]


@pytest.fixture
def snapped(sb: Sandbox) -> tuple[Sandbox, Snapshot]:
    assert sb.call("counter") == 1
    return sb, sb.snapshot()


def test_restore_resets_globals_and_heap(snapped: tuple[Sandbox, Snapshot]) -> None:
    sb, snap = snapped
    assert sb.call("counter") == 2
    assert sb.call("dirty_pages", 5) == 5
    assert [sb.call("heap_byte", i) for i in range(5)] == [1, 2, 3, 4, 5]
    sb.restore(snap)
    assert [sb.call("heap_byte", i) for i in range(5)] == [0] * 5
    assert sb.call("counter") == 2  # the snapshot was taken after one call


XMM15_OFFSET = 160 + 15 * 16  # in the XSAVE area's legacy region (SDM 10.5.1, FXSAVE layout)


def _xmm15(xsave: object) -> int:
    return int.from_bytes(ffi.buffer(xsave)[XMM15_OFFSET : XMM15_OFFSET + 8], "little")


def test_restore_resets_sse_state(snapped: tuple[Sandbox, Snapshot]) -> None:
    """MXCSR is callee-saved in the SysV ABI: a value set by one call persists to the next.
    The vector registers are caller-saved and the SDK zeroes them before every return, so
    a call that traps is what leaves one set for the restore to undo."""
    sb, snap = snapped
    default_mxcsr = sb.call("get_mxcsr")
    sb.call("set_mxcsr", 0x7F80)  # round toward zero, exceptions masked
    assert sb.call("get_mxcsr") == 0x7F80  # persists
    with pytest.raises(GuestTrap):
        sb.call("set_xmm15_then_trap", 0xDEADBEEF)
    assert _xmm15(sb._machine.vcpu.get_xsave()) == 0xDEADBEEF  # still in the vCPU
    sb.restore(snap)
    assert sb.call("get_mxcsr") == default_mxcsr
    assert sb.call("get_xmm15") == 0


def test_vector_registers_do_not_persist_between_calls(sb: Sandbox) -> None:
    """The SDK zeroes xmm0-15 before every return (they are caller-saved: no guest code
    may expect a value in one from an earlier call), so a snapshot taken between calls
    holds the vector registers of a new vCPU."""
    sb.call("set_xmm15", 0xDEADBEEF)
    assert sb.call("get_xmm15") == 0
    assert _xmm15(sb.snapshot().cpu.xsave) == 0


def test_from_snapshot_loads_the_snapshots_sse_state(sb: Sandbox) -> None:
    """from_snapshot skips KVM_SET_XSAVE when the snapshot holds a new vCPU's FPU/SSE
    state, and loads it otherwise."""
    setup = cpu_setup()
    sb.call("add", 1, 2)
    plain = sb.snapshot()
    assert setup.is_reset_xsave(plain.cpu.xsave)  # the common case: no ioctl
    default_mxcsr = sb.call("get_mxcsr")
    sb.call("set_mxcsr", 0x7F80)
    rounded = sb.snapshot()
    assert not setup.is_reset_xsave(rounded.cpu.xsave)
    with Sandbox.from_snapshot(rounded) as other:
        assert other.call("get_mxcsr") == 0x7F80
    with Sandbox.from_snapshot(plain) as other:
        assert other.call("get_mxcsr") == default_mxcsr
        assert other.call("get_xmm15") == 0


@pytest.mark.parametrize("native", [True, False], ids=["native", "pagemap"])
def test_memory_reset_copies_back_every_written_page(native: bool) -> None:
    """Both ways of finding the written pages (PAGEMAP_SCAN, or the /proc/self/pagemap
    entries of kernels before 6.7) restore every page, including more separate runs of
    pages than one native scan returns (64)."""
    from sandbox import memory as memory_mod

    memory_mod.use_pagemap_entries(not native)
    try:
        sb = Sandbox(config=SandboxConfig(memory_size=(14 if native else 12) << 20))
        mem = sb.memory
        mem.reset()
        image = mem.image
        # 200 runs of one page, outside the pages nobody writes (the host never writes
        # the system tables or the read-only image: resets leave those alone).
        stable = sb.layout.stable_ranges(mem.image.read)
        pages = [
            page
            for page in range(0, mem.size // memory_mod.PAGE, 3)
            if not any(a <= page * memory_mod.PAGE < a + n for a, n in stable)
        ][:200]
        for page in pages:
            addr = page * memory_mod.PAGE + 5
            mem.view[addr] = (mem.view[addr] + 1) % 256
        assert any(mem.view[p * 4096 + 5] != image.read(p * 4096 + 5, 1)[0] for p in pages)
        # The pages are private copies from now on (restored pages stay mapped), so every
        # later reset copies them too.
        written = mem.written_ranges()
        assert len(written) > 64
        assert mem.reset() == sum(length for _, length in written)
        assert bytes(mem.view) == image.read(0, mem.size)
        assert sb.call("add", 2, 3) == 5
        sb.close()
    finally:
        memory_mod.use_pagemap_entries(False)


def test_restore_default_is_the_start_state(sb: Sandbox) -> None:
    assert [sb.call("counter") for _ in range(3)] == [1, 2, 3]
    sb.restore()
    assert sb.call("counter") == 1


def test_snapshot_is_independent_of_later_writes(snapped: tuple[Sandbox, Snapshot]) -> None:
    sb, snap = snapped
    for _ in range(3):
        sb.call("dirty_pages", 3)
        sb.call("counter")
    with Sandbox.from_snapshot(snap) as other:
        assert other.call("counter") == 2
        assert other.call("heap_byte", 0) == 0


@pytest.mark.parametrize("kind", FAULTS)
def test_restore_after_each_fault(snapped: tuple[Sandbox, Snapshot], kind: str) -> None:
    sb, snap = snapped
    with pytest.raises((GuestTrap, GuestAbort, CallTimeout)):
        sb.call("fault", kind, timeout=0.2)
    sb.restore(snap)
    assert not sb.poisoned
    assert sb.call("add", 2, 3) == 5
    assert sb.call("counter") == 2
    assert sb.call("echo", "still here") == "still here"


def test_snapshot_of_poisoned_or_closed_sandbox_is_refused(sb: Sandbox) -> None:
    with pytest.raises(GuestTrap):
        sb.call("fault", "null")
    with pytest.raises(SandboxPoisoned):
        sb.snapshot()
    sb.close()
    with pytest.raises(SandboxClosed):
        sb.snapshot()
    with pytest.raises(SandboxClosed):
        sb.restore()


def test_restored_sandboxes_get_different_random_numbers(snapped: tuple[Sandbox, Snapshot]) -> None:
    sb, snap = snapped
    sb.call("random_u64")
    seen = set()
    for _ in range(5):
        sb.restore(snap)
        seen.add(sb.call("random_u64"))
    with Sandbox.from_snapshot(snap) as a, Sandbox.from_snapshot(snap) as b:
        seen.add(a.call("random_u64"))
        seen.add(b.call("random_u64"))
    assert len(seen) == 7


def test_one_snapshot_serves_many_sandboxes(snapped: tuple[Sandbox, Snapshot]) -> None:
    _, snap = snapped
    boxes = [Sandbox.from_snapshot(snap) for _ in range(10)]
    try:
        assert [b.call("counter") for b in boxes] == [2] * 10
        boxes[0].call("dirty_pages", 4)
        assert all(b.call("heap_byte", 0) == 0 for b in boxes[1:])
    finally:
        for b in boxes:
            b.close()


def test_restore_into_a_sandbox_from_another_snapshot(snapped: tuple[Sandbox, Snapshot]) -> None:
    sb, snap = snapped
    with Sandbox() as other:
        other.call("dirty_pages", 2)
        other.restore(snap)  # maps the other snapshot's memory
        assert other.call("counter") == 2
        assert other.call("heap_byte", 0) == 0
        other.restore(snap)  # and now restores it cheaply
        assert other.call("counter") == 2


def test_restore_refuses_another_layout(sb: Sandbox) -> None:
    with (
        Sandbox(config=SandboxConfig(memory_size=32 << 20)) as other,
        pytest.raises(ArgumentError),
    ):
        sb.restore(other.snapshot())


def test_per_call_reset_runs_every_call_fresh() -> None:
    with Sandbox(reset="per_call") as sb:
        assert [sb.call("counter") for _ in range(3)] == [1, 1, 1]
        sb.call("dirty_pages", 3)
        assert sb.call("heap_byte", 0) == 0
        with pytest.raises(GuestTrap):
            sb.call("fault", "null")
        assert sb.call("add", 1, 1) == 2  # the next call starts fresh, trap or not
    with pytest.raises(ArgumentError):
        Sandbox(reset="sometimes")  # type: ignore[arg-type]


def test_save_and_load_round_trip(snapped: tuple[Sandbox, Snapshot], tmp_path: Path) -> None:
    sb, snap = snapped
    sb.call("dirty_pages", 2)
    path = tmp_path / "demo.snap"
    sb.snapshot().save(path)
    with Sandbox.from_snapshot(path) as loaded:
        assert loaded.call("counter") == 2
        assert loaded.call("heap_byte", 1) == 2
        assert loaded.call("echo", "é") == "é"
    loaded_snap = Snapshot.load(path)
    assert loaded_snap.functions.keys() == sb.functions.keys()
    # A saved file is much smaller than the guest memory: holes stay holes.
    assert path.stat().st_size < sb.layout.mem_size // 4


def _saved(snap: Snapshot, tmp_path: Path) -> bytes:
    path = tmp_path / "good.snap"
    snap.save(path)
    return path.read_bytes()


def _load_bytes(data: bytes, tmp_path: Path) -> None:
    path = tmp_path / "bad.snap"
    path.write_bytes(data)
    Snapshot.load(path)


def test_corrupt_snapshot_files_are_rejected(
    snapped: tuple[Sandbox, Snapshot], tmp_path: Path
) -> None:
    _, snap = snapped
    good = _saved(snap, tmp_path)
    cases = {
        "empty": b"",
        "garbage": os.urandom(4096),
        "bad magic": b"NOTASNAP" + good[8:],
        "truncated": good[: len(good) // 2],
        "truncated by one": good[:-1],
        "flipped byte": good[:100] + bytes([good[100] ^ 1]) + good[101:],
        "flipped memory byte": good[:-100] + bytes([good[-100] ^ 0x80]) + good[-99:],
    }
    for name, data in cases.items():
        with pytest.raises(SnapshotError):  # noqa: PT012
            print(name)
            _load_bytes(data, tmp_path)
        # the process is unharmed and the good file still loads
    with Sandbox.from_snapshot(tmp_path / "good.snap") as sb:
        assert sb.call("counter") == 2


def test_foreign_format_version_is_rejected(
    snapped: tuple[Sandbox, Snapshot], tmp_path: Path
) -> None:
    _, snap = snapped
    good = _saved(snap, tmp_path)
    data = bytearray(good)
    struct.pack_into("<I", data, len(MAGIC), 3)  # 1 and 2 are this runtime's
    with pytest.raises(SnapshotError, match="format version"):
        _load_bytes(bytes(data), tmp_path)


def test_missing_snapshot_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Sandbox.from_snapshot(tmp_path / "nope.snap")


def test_snapshot_restore_cycles_leak_nothing(snapped: tuple[Sandbox, Snapshot]) -> None:
    sb, snap = snapped
    for _ in range(50):
        sb.call("dirty_pages", 2)
        sb.restore(snap)
    drain()
    before = fd_count()
    for _ in range(500):
        sb.call("dirty_pages", 2)
        sb.restore(snap)
    for _ in range(100):
        with Sandbox.from_snapshot(snap) as other:
            other.call("add", 1, 2)
    drain()
    assert fd_count() <= before


REG_NAMES = [
    "rax",
    "rbx",
    "rcx",
    "rdx",
    "rsi",
    "rdi",
    "rsp",
    "rbp",
    "r8",
    "r9",
    "r10",
    "r11",
    "r12",
    "r13",
    "r14",
    "r15",
    "rip",
    "rflags",
]


def test_restore_resets_general_registers(snapped: tuple[Sandbox, Snapshot]) -> None:
    sb, snap = snapped
    before = {name: getattr(snap.cpu.regs, name) for name in REG_NAMES}
    sb.call("fib", 77)
    with pytest.raises(GuestTrap):
        sb.call("fault", "divzero")  # stops mid-function with arbitrary registers
    sb.restore(snap)
    again = sb.snapshot()  # nothing ran since the restore
    after = {name: getattr(again.cpu.regs, name) for name in REG_NAMES}
    assert after == before
    assert again.cpu.sregs.cs.selector == snap.cpu.sregs.cs.selector
    assert again.cpu.sregs.fs.base == snap.cpu.sregs.fs.base == 0
    assert sb.call("counter") == 2


@pytest.mark.requires_kvm
def test_call_encoders_are_shared_and_bounded(monkeypatch) -> None:
    """The sandboxes of one snapshot share its call encoders: one per function name
    (made once) and per encoder a layer passes (checked once); a name the guest lacks is
    never added, and past SHARED_ENCODERS_MAX a sandbox keeps its own, so what callers
    pass cannot grow the shared table without bound."""
    import sandbox.sandbox as sandbox_module
    from sandbox.abi import CallEncoder

    with Sandbox() as base:
        snap = base.snapshot()
    first, second = Sandbox.from_snapshot(snap), Sandbox.from_snapshot(snap)
    try:
        assert snap.call_encoders == {}
        assert first.call("add", 1, 2) == 3
        shared = snap.call_encoders["add"]
        assert second.call("add", 2, 3) == 5
        assert snap.call_encoders == {"add": shared}  # made once, used by both
        index = list(first.functions).index("add")
        own = CallEncoder(first.functions["add"], index)
        assert first.call(own, 3, 4) == 7 and second.call(own, 4, 5) == 9
        assert snap.call_encoders == {"add": shared, own: own}
        with pytest.raises(FunctionNotFound):
            second.call("no_such_function")
        assert len(snap.call_encoders) == 2
        monkeypatch.setattr(sandbox_module, "SHARED_ENCODERS_MAX", 2)
        for i in range(5):  # a caller that makes a new encoder for every call
            assert first.call(CallEncoder(first.functions["add"], index), i, 1) == i + 1
        assert len(snap.call_encoders) == 2
    finally:
        first.close()
        second.close()
