"""Guest faults: every `fault` kind of the demo guest, the hostile guest's malformed
records, and page permissions probed from ring 3. A trap poisons the sandbox (the next
call raises SandboxPoisoned), a guest error does not, and the host always survives."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from support import ROOT, run_python

from sandbox import (
    CallTimeout,
    GuestAbort,
    GuestProtocolError,
    GuestTrap,
    HostFunctionError,
    Sandbox,
    SandboxError,
    SandboxPoisoned,
)
from sandbox import x86_64 as x86
from sandbox.layout import GDT, IDT, PML4, STUBS

pytestmark = pytest.mark.requires_kvm


# A harmless call per guest, and its result.
SIMPLE_CALL = {"add": ((1, 2), 3), "ok": ((), 42), "triple": ((1,), 3)}


def assert_poisoned_then_fresh_works(box: Sandbox) -> None:
    fn = next(name for name in SIMPLE_CALL if name in box.functions)
    args, expected = SIMPLE_CALL[fn]
    assert box.poisoned
    for _ in range(2):
        with pytest.raises(SandboxPoisoned):
            box.call(fn, *args)
    with Sandbox(box.guest_path) as fresh:
        assert fresh.call(fn, *args) == expected


def trap(box: Sandbox, fn: str, *args: object) -> GuestTrap:
    with pytest.raises(GuestTrap) as info:
        box.call(fn, *args)
    assert type(info.value) is not SandboxError
    return info.value


# -- the demo guest's faults ----------------------------------------------------------------


def test_null_dereference(sb: Sandbox) -> None:
    exc = trap(sb, "fault", "null")
    assert exc.kind == "page_fault"
    assert exc.vector == x86.VECTOR_PAGE_FAULT
    assert exc.address == 0
    assert not exc.error_code & x86.PF_PRESENT  # page 0 is not mapped
    assert exc.error_code & x86.PF_USER
    assert not exc.error_code & x86.PF_WRITE
    assert sb.layout.region_of(exc.rip) == "guest image"
    assert_poisoned_then_fresh_works(sb)


def test_wild_write_to_page_tables(sb: Sandbox) -> None:
    exc = trap(sb, "fault", "wild_write")
    assert exc.kind == "page_fault"
    assert exc.address == PML4 == 0x1000
    assert exc.error_code & x86.PF_WRITE
    assert exc.error_code & x86.PF_PRESENT  # mapped, but supervisor-only
    assert exc.error_code & x86.PF_USER
    assert "write" in str(exc)
    assert_poisoned_then_fresh_works(sb)


def test_execute_data(sb: Sandbox) -> None:
    exc = trap(sb, "fault", "exec_data")
    assert exc.kind == "page_fault"
    assert exc.error_code & x86.PF_INSTRUCTION
    assert exc.address == exc.rip  # it faulted fetching the "code" itself
    assert sb.layout.region_of(exc.address) == "stack"
    assert "instruction fetch" in str(exc)
    assert_poisoned_then_fresh_works(sb)


@pytest.mark.parametrize(
    ("kind", "expected_kind", "vector"),
    [
        ("ud2", "invalid_opcode", 6),
        ("divzero", "divide_error", 0),
        ("privileged", "general_protection", 13),
    ],
)
def test_cpu_exceptions(sb: Sandbox, kind: str, expected_kind: str, vector: int) -> None:
    exc = trap(sb, "fault", kind)
    assert exc.kind == expected_kind
    assert exc.vector == vector
    assert exc.rip is not None and sb.layout.region_of(exc.rip) == "guest image"
    assert_poisoned_then_fresh_works(sb)


def test_stack_overflow(sb: Sandbox) -> None:
    exc = trap(sb, "fault", "stack_overflow")
    assert exc.kind == "stack_overflow"
    assert exc.vector == x86.VECTOR_PAGE_FAULT
    assert exc.address is not None
    assert sb.layout.guard_page <= exc.address < sb.layout.stack_base  # in the guard
    assert_poisoned_then_fresh_works(sb)


def test_bad_port(sb: Sandbox) -> None:
    exc = trap(sb, "fault", "bad_port")
    assert exc.kind == "bad_port"
    assert exc.vector is None
    assert_poisoned_then_fresh_works(sb)


def test_spin_forever_times_out(sb: Sandbox) -> None:
    with pytest.raises(CallTimeout):
        sb.call("fault", "spin_forever", timeout=0.05)
    assert_poisoned_then_fresh_works(sb)


def test_abort_does_not_poison(sb: Sandbox) -> None:
    with pytest.raises(GuestAbort) as info:
        sb.call("fault", "abort")
    assert info.value.guest_message == "deliberate abort (abort)"
    assert str(info.value) == "deliberate abort (abort)"
    assert not sb.poisoned
    assert sb.call("add", 1, 2) == 3
    with pytest.raises(GuestAbort, match="unknown fault kind: nonsense"):
        sb.call("fault", "nonsense")
    assert sb.call("counter") == 1
    assert sb.call("counter") == 2


@pytest.mark.parametrize("char", ["é", "€", "𝄞"])
def test_long_unicode_abort_message(sb: Sandbox, char: str) -> None:
    """Regression: the SDK cut the message at 1023 bytes inside a UTF-8 character and
    the host rejected the record as malformed (and poisoned)."""
    with pytest.raises(GuestAbort) as info:
        sb.call("fault", char * 600)
    message = info.value.guest_message
    assert message.startswith("unknown fault kind: " + char * 3)
    assert set(message[len("unknown fault kind: ") :]) == {char}
    assert 1000 < len(message.encode()) <= 1024
    assert not sb.poisoned
    assert sb.call("add", 1, 2) == 3


def test_long_ascii_abort_message_is_truncated(sb: Sandbox) -> None:
    with pytest.raises(GuestAbort) as info:
        sb.call("fault", "k" * 5000)
    assert info.value.guest_message.startswith("unknown fault kind: kkk")
    assert 900 < len(info.value.guest_message) <= 1024
    assert not sb.poisoned


def test_many_traps_in_a_row_leave_the_host_alive() -> None:
    kinds = [
        "null",
        "wild_write",
        "exec_data",
        "ud2",
        "divzero",
        "privileged",
        "stack_overflow",
        "bad_port",
    ] * 5
    for kind in kinds:
        with Sandbox() as box, pytest.raises(GuestTrap):
            box.call("fault", kind)
    with Sandbox() as box:
        assert box.call("fib", 10) == 55


def test_trap_in_a_subprocess_exits_cleanly() -> None:
    """The host process survives a trap and exits normally afterwards."""
    out = run_python(
        textwrap.dedent(
            """
            import sandbox
            with sandbox.Sandbox() as sb:
                try:
                    sb.call("fault", "null")
                except sandbox.GuestTrap as exc:
                    print(exc.kind)
            print("alive")
            """
        ),
        timeout=30,
    )
    assert out is not None and out.split() == ["page_fault", "alive"]


# -- host-side errors while the guest waits -------------------------------------------------


def test_keyboard_interrupt_in_host_function(make_sandbox) -> None:
    """Regression: a BaseException from a host function left the guest stopped inside
    the host call, unpoisoned, and the next call got the old call's leftovers. The guest
    cannot go on mid-call: the sandbox is poisoned."""

    def interrupted(_: str) -> str:
        raise KeyboardInterrupt

    box = make_sandbox(host_functions={"interrupted": interrupted})
    with pytest.raises(KeyboardInterrupt):
        box.call("call_host", "interrupted", "x")
    assert box.poisoned
    with pytest.raises(SandboxPoisoned, match="KeyboardInterrupt"):
        box.call("add", 1, 2)


def test_output_callback_exception_mid_call(make_sandbox) -> None:
    """Regression: an exception from the output callback during a mid-call flush left
    the guest mid-call, unpoisoned, and the next call got the old call's result."""
    raised: list[int] = []

    def output(_: str) -> None:
        if not raised:
            raised.append(1)
            raise RuntimeError("output sink failed")

    box = make_sandbox(output=output)
    with pytest.raises(RuntimeError, match="output sink failed"):
        box.call("print_lines", 2000)  # flushes mid-call
    assert box.poisoned
    with pytest.raises(SandboxPoisoned):
        box.call("add", 1, 2)


def test_output_callback_exception_after_the_call(make_sandbox) -> None:
    """Output flushed with the result: the guest is already back in its loop, so the
    exception reaches the caller and the sandbox stays usable."""

    def output(_: str) -> None:
        raise RuntimeError("output sink failed")

    box = make_sandbox(output=output)
    with pytest.raises(RuntimeError):
        box.call("hello", "x")
    assert not box.poisoned
    assert box.call("add", 1, 2) == 3


# -- the hostile guest ----------------------------------------------------------------------

# Every function of hostile.c (read from the source, so new ones are tested too), and
# which of them write a malformed record rather than misusing the CPU or the ports.
HOSTILE_SOURCE = ROOT / "guests" / "testing" / "hostile.c"
HOSTILE = sorted(set(re.findall(r"^SBX_EXPORT\((\w+)", HOSTILE_SOURCE.read_text(), re.M)) - {"ok"})
MALFORMED_RECORDS = {
    "size_past_buffer",
    "len_past_record",
    "offset_overflow",
    "unknown_tag",
    "wrong_tag",
    "bad_utf8",
    "record_offset_outside",
    "print_past_record",
    "unknown_status",
    "host_call_too_many_args",
    "host_call_name_past_record",
}


def test_hostile_guest_exports_what_we_test(hostile_guest: Path) -> None:
    with Sandbox(hostile_guest) as box:
        assert set(box.functions) == set(HOSTILE) | {"ok"}
    assert set(HOSTILE) >= MALFORMED_RECORDS


@pytest.mark.parametrize("fn", HOSTILE)
def test_hostile_guest_is_rejected(hostile_guest: Path, fn: str) -> None:
    with Sandbox(hostile_guest) as box:
        with pytest.raises(GuestTrap) as info:
            box.call(fn)
        if fn in MALFORMED_RECORDS:
            assert type(info.value) is GuestProtocolError
            assert info.value.kind == "malformed_record"
        assert_poisoned_then_fresh_works(box)


def test_hostile_trap_port_cannot_fake_a_trap_report(hostile_guest: Path) -> None:
    with Sandbox(hostile_guest) as box:
        exc = trap(box, "trap_port")
        # Ring 3 may not use the stubs' port: the CPU refuses the `out` itself.
        assert exc.kind == "general_protection"


def test_hostile_guest_ok(hostile_guest: Path) -> None:
    with Sandbox(hostile_guest) as box:
        assert box.call("ok") == 42
        assert box.call("ok") == 42
        assert not box.poisoned


# -- page permissions, probed from ring 3 (user guest) --------------------------------------


@pytest.fixture
def probe(probe_guest: Path):
    with Sandbox(probe_guest, host_functions={"add_one": lambda n: n + 1}) as box:
        yield box


def test_probe_reads_and_writes_its_own_memory(probe: Sandbox) -> None:
    layout = probe.layout
    for addr in (layout.heap_base, layout.heap_base + 4096 * 10, layout.out_buf + 8192):
        probe.call("poke", addr)
        assert probe.call("peek", addr) == 0x5A5A
    assert probe.call("peek", layout.in_buf) != 0  # the call record: readable
    assert probe.call("peek", layout.boot_info) & 0xFFFF_FFFF == 1  # abi_version
    assert not probe.poisoned


@pytest.mark.parametrize(
    ("what", "address", "access"),
    [
        ("null page", lambda lay: 0, "read"),
        ("PML4", lambda lay: PML4, "read"),
        ("GDT", lambda lay: GDT, "read"),
        ("IDT", lambda lay: IDT, "read"),
        ("exception stubs", lambda lay: STUBS, "read"),
        ("leaf page tables", lambda lay: lay.page_tables_end - 8, "read"),
        ("stack guard", lambda lay: lay.stack_base - 8, "read"),
        ("end of memory", lambda lay: lay.mem_size, "read"),
        ("far away", lambda lay: 1 << 40, "read"),
        ("input buffer", lambda lay: lay.in_buf, "write"),
        ("boot info", lambda lay: lay.boot_info, "write"),
        ("reply buffer", lambda lay: lay.reply_buf, "write"),
        ("PML4", lambda lay: PML4, "write"),
        ("guest code", lambda lay: lay.image_base + 0x1000, "write"),
    ],
)
def test_probe_cannot_touch(probe: Sandbox, what: str, address, access: str) -> None:
    addr = address(probe.layout)
    exc = trap(probe, "peek" if access == "read" else "poke", addr)
    assert exc.kind in ("page_fault", "stack_overflow"), what
    assert exc.address == addr, what
    assert bool(exc.error_code & x86.PF_WRITE) == (access == "write"), what
    assert probe.poisoned


@pytest.mark.parametrize(
    ("what", "address"),
    [
        ("heap", lambda lay: lay.heap_base),
        ("output buffer", lambda lay: lay.out_buf),
        ("input buffer", lambda lay: lay.in_buf),
        ("stack", lambda lay: lay.stack_top - 4096),
        ("exception stubs", lambda lay: STUBS),
    ],
)
def test_probe_cannot_execute(probe: Sandbox, what: str, address) -> None:
    addr = address(probe.layout)
    exc = trap(probe, "jump", addr)
    assert exc.kind == "page_fault", what
    assert exc.address == addr, what
    assert exc.error_code & x86.PF_INSTRUCTION, what


def test_probe_can_execute_its_code(probe: Sandbox) -> None:
    entry = probe.call("entry_of_triple")
    assert probe.layout.region_of(entry) == "guest image"
    # Calling it with garbage arguments would be undefined; reading its code is fine.
    assert probe.call("peek", entry) != 0
    assert probe.call("triple", 3) == 9


def test_host_function_in_user_guest_error(probe_guest: Path) -> None:
    def fail(n: int) -> int:
        raise OSError("disk on fire")

    with Sandbox(probe_guest, host_functions={"add_one": fail}) as box:
        with pytest.raises(HostFunctionError) as info:
            box.call("ask_host", 1)
        assert isinstance(info.value.__cause__, OSError)
        assert box.call("triple", 2) == 6
