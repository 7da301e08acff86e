"""Hostile guests vs. resets: every way a call can end with the vCPU in the middle of an
instruction (port `in` and `out` of each size, string I/O with and without `rep`, a host
function or output callback that escapes mid-call, a CPU exception, a timeout), followed
by every way the runtime resets a sandbox (restore(), restore(snapshot), per-call resets,
pool handoffs, sandboxes made from snapshots, a closed sandbox's machine taken over by a
new sandbox of the same or another snapshot, Wasm sandboxes). After the reset, the next
call must start exactly from the snapshot: same registers, same memory, same results, and
nothing the hostile guest planted may run (guests/testing/pending_io.c explains the plant:
an instruction KVM completes after the new registers are loaded resumes the guest where
*it* chose, with the next caller's call record).

Issue 11: KVM's API wants every pending I/O exit completed before vCPU state changes."""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import GUESTS, drain

from sandbox import CallTimeout, GuestTrap, Sandbox, SandboxPool, Snapshot, _reaper, machines
from sandbox._native import ffi
from sandbox.machine import SEED_OFFSET as BOOT_INFO_SEED_OFFSET

pytestmark = pytest.mark.requires_kvm

SOURCE = GUESTS / "testing" / "pending_io.c"
# Every pend_* function of the guest (read from the source, so new kinds are tested too).
PENDING = sorted(re.findall(r"^PENDING\((\w+),", SOURCE.read_text(), re.M))


class Escape(BaseException):
    """Raised by this file's host function or output callback: not an Exception, so it
    leaves call() at once while the guest waits in its `out`."""


# kind -> (guest function, what the call raises, seconds of time limit)
KINDS: dict[str, tuple[str, type[BaseException], float]] = {
    **{k: (f"pend_{k}", GuestTrap, 10.0) for k in PENDING},
    "host_call_escapes": ("host_call", Escape, 10.0),
    "output_escapes": ("print_flood", Escape, 10.0),
    "cpu_exception": ("ud2", GuestTrap, 10.0),  # control: pending `out` of a ring-0 stub
    "timeout": ("spin", CallTimeout, 0.05),  # control: nothing pending
}
STATE_FIELDS = [
    "rsp",
    "rflags",
    "rbx",
    "rbp",
    "r12",
    "r13",
    "r14",
    "r15",
    "xmm8",
    "xmm13",
    "xmm15",
    "mxcsr_fcw",
    "image_checksum",
    "heap_checksum",
    "calls_seen",
    "data_word",
]


def describe(state: object) -> dict[str, int] | object:
    """The `state` result by field (so a mismatch says which one), or as it is."""
    if not isinstance(state, bytes) or len(state) != 8 * len(STATE_FIELDS):
        return state
    return dict(zip(STATE_FIELDS, struct.unpack(f"<{len(STATE_FIELDS)}Q", state), strict=True))


class Harness:
    """Host functions and an output callback for the guest: `leak` records what the
    planted code would steal; `boom` and the callback raise Escape while armed."""

    def __init__(self) -> None:
        self.leaked: list[object] = []
        self.armed = False

    @property
    def host_functions(self) -> dict[str, Callable[..., Any]]:
        return {"leak": self._leak, "boom": self._boom}

    def output(self, text: str) -> None:
        if self.armed:
            raise Escape

    def _leak(self, secret: object) -> str:
        self.leaked.append(secret)
        return ""

    def _boom(self, value: int) -> int:
        if self.armed:
            raise Escape
        return value


@dataclass
class Subject:
    """One reset path: `call` runs a guest function (through the sandbox or the pool),
    `reset` is the explicit reset (a no-op where the next call resets), `reference` is
    what `state` returns as the first call from the state the reset returns to."""

    call: Callable[..., Any]
    reset: Callable[[], None]
    reference: bytes
    sandbox: Sandbox | None = None  # for host-side checks of the restore paths
    target: Snapshot | None = None  # the state the reset returns to


@pytest.fixture(scope="module")
def initial_state(pending_guest: Path) -> bytes:
    with Sandbox(pending_guest) as fresh:
        state = fresh.call("state")
    assert isinstance(state, bytes)
    return state


@pytest.fixture(scope="module")
def initial_snapshot(pending_guest: Path) -> Snapshot:
    """The start state as a fresh, never-run sandbox reports it."""
    with Sandbox(pending_guest) as fresh:
        return fresh.snapshot()


@pytest.fixture(scope="module")
def snap(pending_guest: Path) -> Snapshot:
    """A snapshot between calls, after one call changed the guest's state."""
    with Sandbox(pending_guest) as box:
        box.call("scribble")
        return box.snapshot()


@pytest.fixture(scope="module")
def snap_state(snap: Snapshot) -> bytes:
    with Sandbox.from_snapshot(snap) as fresh:
        state = fresh.call("state")
    assert isinstance(state, bytes)
    return state


@pytest.fixture(scope="module")
def snap_file(snap: Snapshot, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("snap") / "pending.snap"
    snap.save(path)
    return path


@pytest.fixture
def harness() -> Harness:
    return Harness()


PATHS = [
    "restore",
    "restore_snapshot",
    "from_snapshot_restore",
    "per_call",
    "from_snapshot_per_call",
    "pool",
    "pool_snapshot",
    "reuse_same",  # the hostile sandbox closed; its machine taken by a sandbox of its snapshot
    "reuse_other",  # ... by a sandbox of another snapshot
]
RESTORE_PATHS = PATHS[:3]


def reuse_subject(
    stack: ExitStack, harness: Harness, first: Snapshot, then: Snapshot, reference: bytes
) -> Subject:
    """A sandbox of `first`; the reset closes it and makes one of `then`, which must take
    over its machine (parked by machines.py; no spares are made)."""
    h = harness
    current = [Sandbox.from_snapshot(first, host_functions=h.host_functions, output=h.output)]
    stack.callback(lambda: current[0].close())

    def reset() -> None:
        current[0].close()
        _reaper.drain()
        assert machines.idle_count() == 1
        current[0] = Sandbox.from_snapshot(then, host_functions=h.host_functions, output=h.output)
        assert machines.idle_count() == 0

    return Subject(lambda *a, **k: current[0].call(*a, **k), reset, reference)


@pytest.fixture
def subject_for(
    request: pytest.FixtureRequest,
    pending_guest: Path,
    harness: Harness,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[[str], Subject]]:
    stack = ExitStack()

    def make(path: str) -> Subject:
        g, h = pending_guest, harness
        if path.startswith("reuse"):
            first: Snapshot = request.getfixturevalue("snap")
            then, reference = first, request.getfixturevalue("snap_state")
            if path == "reuse_other":
                then = request.getfixturevalue("initial_snapshot")
                reference = request.getfixturevalue("initial_state")
            drain()  # after the fixtures' sandboxes: no machine idle
            monkeypatch.setattr(machines, "SPARES", False)
            stack.callback(drain)
            return reuse_subject(stack, h, first, then, reference)
        if path == "restore":
            sb = stack.enter_context(Sandbox(g, host_functions=h.host_functions, output=h.output))
            sb.call("scribble")
            target = request.getfixturevalue("initial_snapshot")
            initial = request.getfixturevalue("initial_state")
            return Subject(sb.call, sb.restore, initial, sb, target)
        snap: Snapshot = request.getfixturevalue("snap")
        reference: bytes = request.getfixturevalue("snap_state")
        if path == "restore_snapshot":
            sb = stack.enter_context(Sandbox(g, host_functions=h.host_functions, output=h.output))
            sb.call("scribble")
            sb.call("scribble")
            return Subject(sb.call, lambda: sb.restore(snap), reference, sb, snap)
        if path == "from_snapshot_restore":
            sb = stack.enter_context(
                Sandbox.from_snapshot(snap, host_functions=h.host_functions, output=h.output)
            )
            return Subject(sb.call, sb.restore, reference, sb, snap)
        if path == "from_snapshot_per_call":
            sb = stack.enter_context(
                Sandbox.from_snapshot(
                    request.getfixturevalue("snap_file"),
                    host_functions=h.host_functions,
                    output=h.output,
                    reset="per_call",
                )
            )
            return Subject(sb.call, lambda: None, reference)
        if path == "pool_snapshot":
            pool = stack.enter_context(
                SandboxPool(snapshot=snap, size=1, host_functions=h.host_functions)
            )
            return Subject(pool.call, lambda: None, reference)
        reference = request.getfixturevalue("initial_state")
        if path == "per_call":
            sb = stack.enter_context(
                Sandbox(g, host_functions=h.host_functions, output=h.output, reset="per_call")
            )
            return Subject(sb.call, lambda: None, reference)
        if path == "pool":
            pool = stack.enter_context(SandboxPool(g, size=1, host_functions=h.host_functions))
            return Subject(pool.call, lambda: None, reference)
        raise AssertionError(path)

    with stack:
        yield make


def stop_mid_instruction(subject: Subject, harness: Harness, kind: str) -> None:
    fn, raises, limit = KINDS[kind]
    harness.armed = True
    try:
        with pytest.raises(raises):
            subject.call(fn, timeout=limit)
    finally:
        harness.armed = False


def matrix(paths: list[str]) -> list[Any]:
    """Every way to stop mid-instruction, on every path (a pool takes no output
    callback)."""
    return [
        pytest.param(path, kind, id=f"{kind}-{path}")
        for kind in KINDS
        for path in paths
        if not (path.startswith("pool") and kind == "output_escapes")
    ]


MATRIX = matrix(PATHS)


@pytest.mark.parametrize(("path", "kind"), MATRIX)
def test_next_call_starts_exactly_from_the_snapshot(
    subject_for: Callable[[str], Subject], harness: Harness, path: str, kind: str
) -> None:
    subject = subject_for(path)
    stop_mid_instruction(subject, harness, kind)
    subject.reset()
    # Registers at entry, MXCSR, vector registers, and checksums of the image and heap.
    assert describe(subject.call("state", timeout=10)) == describe(subject.reference)
    assert subject.call("echo", "secret", timeout=10) == "secret"
    assert subject.call("ok", timeout=10) == 42
    assert harness.leaked == []


@pytest.mark.parametrize(
    "path", ["pool", "pool_snapshot", "per_call", "restore", "reuse_same", "reuse_other"]
)
def test_planted_code_never_sees_the_next_callers_record(
    subject_for: Callable[[str], Subject], harness: Harness, path: str
) -> None:
    """The attack of issue 11: a guest traps on an `in` after planting code behind it;
    the next caller's secret must neither come back forged nor reach a host function."""
    subject = subject_for(path)
    stop_mid_instruction(subject, harness, "in32")
    subject.reset()
    assert subject.call("echo", "secret", timeout=10) == "secret"
    assert harness.leaked == []
    assert subject.call("ok", timeout=10) == 42
    # And again, in case the plant waits for a second caller.
    stop_mid_instruction(subject, harness, "in32")
    subject.reset()
    assert subject.call("ok", timeout=10) == 42
    assert subject.call("echo", "another secret", timeout=10) == "another secret"
    assert harness.leaked == []


def test_one_hostile_call_does_not_break_a_pool_slot_for_good(
    subject_for: Callable[[str], Subject], harness: Harness
) -> None:
    """A pending `rep ins` that every reset leaves pending again would make each later
    call of that pool slot trap: one hostile caller would take the slot for good."""
    subject = subject_for("pool")
    stop_mid_instruction(subject, harness, "rep_insb")
    assert [subject.call("ok", timeout=10) for _ in range(5)] == [42] * 5


REG_NAMES = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp"]
REG_NAMES += [f"r{i}" for i in range(8, 16)] + ["rip", "rflags"]
XSAVE_FIELDS = {"fcw": (0, 2), "mxcsr": (24, 4), "xmm": (160, 256)}


def cpu_view(snap: Snapshot) -> dict[str, object]:
    cpu = snap.cpu
    view: dict[str, object] = {name: int(getattr(cpu.regs, name)) for name in REG_NAMES}
    sregs = cpu.sregs
    for seg in ("cs", "ss"):
        s = getattr(sregs, seg)
        view[seg] = (int(s.selector), int(s.dpl), int(s.l), int(s.db), int(s.type))
    for reg in ("cr0", "cr3", "cr4", "efer"):
        view[reg] = int(getattr(sregs, reg))
    view["gdt"] = (int(sregs.gdt.base), int(sregs.gdt.limit))
    view["idt"] = (int(sregs.idt.base), int(sregs.idt.limit))
    view["tr"] = (int(sregs.tr.base), int(sregs.tr.selector))
    if cpu.xsave is not None:
        area = bytes(ffi.buffer(cpu.xsave))
        for name, (off, size) in XSAVE_FIELDS.items():
            view[name] = area[off : off + size]
    return view


def memory_differences(got: Snapshot, want: Snapshot) -> list[int]:
    """Addresses of the 4 KiB pages that differ (the boot info's random seed aside)."""
    seed = got.layout.boot_info + BOOT_INFO_SEED_OFFSET
    a, b = got.image.readonly, want.image.readonly
    assert len(a) == len(b)
    pages = []
    for start in range(0, len(a), 1 << 20):
        end = start + (1 << 20)
        if a[start:end] == b[start:end]:
            continue
        for page in range(start, end, 4096):
            x, y = bytearray(a[page : page + 4096]), bytearray(b[page : page + 4096])
            if page <= seed < page + 4096:
                x[seed - page : seed - page + 8] = y[seed - page : seed - page + 8]
            if x != y:
                pages.append(page)
    return pages


RESTORE_MATRIX = matrix(RESTORE_PATHS)


@pytest.mark.parametrize(("path", "kind"), RESTORE_MATRIX)
def test_restore_loads_exactly_the_snapshot(
    subject_for: Callable[[str], Subject], harness: Harness, path: str, kind: str
) -> None:
    """Host-side view of the same invariant: right after the restore (nothing ran), the
    sandbox's registers, FPU/SSE state and every page of memory are the target's."""
    subject = subject_for(path)
    assert subject.sandbox is not None and subject.target is not None
    stop_mid_instruction(subject, harness, kind)
    subject.reset()
    now = subject.sandbox.snapshot()
    assert cpu_view(now) == cpu_view(subject.target)
    assert [hex(p) for p in memory_differences(now, subject.target)] == []


def test_pending_guest_exports_every_kind(pending_guest: Path) -> None:
    """The matrix above covers every instruction kind the guest has."""
    with Sandbox(pending_guest) as box:
        pend = {name[len("pend_") :] for name in box.functions if name.startswith("pend_")}
    assert pend == set(PENDING)
    assert {"in8", "in16", "in32", "out8", "out16", "insb", "rep_insb", "outsb"} <= pend


# -- Wasm sandboxes: an import that escapes mid-call, a timeout -------------------------

WASM = """
(module
  (import "host" "boom" (func $boom))
  (memory (export "memory") 1)
  (global $g (mut i32) (i32.const 0))
  (func (export "poke_then_boom")
    (i32.store (i32.const 64) (i32.const 7))
    (global.set $g (i32.const 5))
    (call $boom))
  (func (export "poke_then_spin")
    (i32.store (i32.const 64) (i32.const 7))
    (global.set $g (i32.const 5))
    (loop (br 0)))
  (func (export "peek") (result i32 i32) (i32.load (i32.const 64)) (global.get $g))
)
"""


@pytest.mark.parametrize("how", ["per_call", "restore", "from_snapshot_per_call"])
@pytest.mark.parametrize("stop", ["import_escapes", "timeout"])
def test_wasm_reset_after_a_call_stopped_mid_way(how: str, stop: str) -> None:
    wasmtime = pytest.importorskip("wasmtime")
    armed = [True]

    def boom() -> None:
        if armed[0]:
            raise Escape

    module = bytes(wasmtime.wat2wasm(WASM))
    imports = {"host": {"boom": boom}}
    reset = "none" if how == "restore" else "per_call"
    with ExitStack() as stack:
        sb = stack.enter_context(Sandbox.from_wasm(module, imports=imports, reset=reset))
        if how == "from_snapshot_per_call":
            assert sb.instantiated is not None
            sb = stack.enter_context(Sandbox.from_snapshot(sb.instantiated, reset="per_call"))
        for _ in range(2):
            if stop == "import_escapes":
                with pytest.raises(Escape):
                    sb.call("poke_then_boom", timeout=10)
            else:
                with pytest.raises(CallTimeout):
                    sb.call("poke_then_spin", timeout=0.05)
            if how == "restore":
                sb.restore()
            assert sb.call("peek", timeout=10) == (0, 0)
