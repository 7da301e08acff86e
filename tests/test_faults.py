"""Guest faults: every `fault` kind of the demo guest, the hostile guest's malformed
records, and page permissions probed from ring 3. A trap poisons the sandbox (the next
call raises SandboxPoisoned), a guest error does not, and the host always survives."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

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

from test_sandbox import _run_python

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
    assert exc.address is not None and exc.address < sb.layout.stack_base
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


@pytest.mark.xfail(
    strict=True,
    raises=GuestProtocolError,
    reason="BUG: sbx_abort cuts its message at 1023 bytes inside a UTF-8 character; the "
    "host rejects the abort record as malformed (GuestProtocolError, poisoned) instead "
    "of raising GuestAbort",
)
def test_long_unicode_abort_message(sb: Sandbox) -> None:
    with pytest.raises(GuestAbort) as info:
        sb.call("fault", "€" * 600)
    assert info.value.guest_message.startswith("unknown fault kind: €€€")
    assert not sb.poisoned


def test_long_ascii_abort_message_is_truncated(sb: Sandbox) -> None:
    with pytest.raises(GuestAbort) as info:
        sb.call("fault", "k" * 5000)
    assert info.value.guest_message.startswith("unknown fault kind: kkk")
    assert 900 < len(info.value.guest_message) <= 1024
    assert not sb.poisoned


def test_many_traps_in_a_row_leave_the_host_alive() -> None:
    kinds = ["null", "wild_write", "exec_data", "ud2", "divzero", "privileged",
             "stack_overflow", "bad_port"] * 5
    for kind in kinds:
        with Sandbox() as box:
            with pytest.raises(GuestTrap):
                box.call("fault", kind)
    with Sandbox() as box:
        assert box.call("fib", 10) == 55


def test_trap_in_a_subprocess_exits_cleanly() -> None:
    """The host process survives a trap and exits normally afterwards."""
    out = _run_python(
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


@pytest.mark.xfail(
    strict=True,
    raises=GuestAbort,
    reason="BUG: a BaseException (KeyboardInterrupt) raised by a host function leaves "
    "the guest stopped inside the host call without poisoning the sandbox: the next "
    "call resumes the old one and gets its result",
)
def test_keyboard_interrupt_in_host_function(make_sandbox) -> None:
    def interrupted(_: str) -> str:
        raise KeyboardInterrupt

    box = make_sandbox(host_functions={"interrupted": interrupted})
    with pytest.raises(KeyboardInterrupt):
        box.call("call_host", "interrupted", "x")
    if not box.poisoned:
        assert box.call("add", 1, 2) == 3  # not the previous call's leftovers
        assert box.call("add", 5, 5) == 10


@pytest.mark.xfail(
    strict=True,
    raises=GuestProtocolError,
    reason="BUG: an exception from the output= callback during a mid-call print flush "
    "leaves the guest stopped mid-call without poisoning: the next call gets the old "
    "call's result",
)
def test_output_callback_exception_mid_call(make_sandbox) -> None:
    raised: list[int] = []

    def output(_: str) -> None:
        if not raised:
            raised.append(1)
            raise RuntimeError("output sink failed")

    box = make_sandbox(output=output)
    with pytest.raises(RuntimeError):
        box.call("print_lines", 2000)  # flushes mid-call
    if not box.poisoned:
        assert box.call("add", 1, 2) == 3


# -- the hostile guest ----------------------------------------------------------------------

HOSTILE = [
    ("size_past_buffer", GuestProtocolError),
    ("len_past_record", GuestProtocolError),
    ("offset_overflow", GuestProtocolError),
    ("unknown_tag", GuestProtocolError),
    ("wrong_tag", GuestProtocolError),
    ("bad_utf8", GuestProtocolError),
    ("record_offset_outside", GuestProtocolError),
    ("print_past_record", GuestProtocolError),
    ("unknown_status", GuestProtocolError),
    ("host_call_too_many_args", GuestProtocolError),
    ("host_call_name_past_record", GuestProtocolError),
    ("in_port", GuestTrap),
    ("byte_out", GuestTrap),
    ("trap_port", GuestTrap),
]


def test_hostile_guest_exports_what_we_test(hostile_guest: Path) -> None:
    with Sandbox(hostile_guest) as box:
        assert set(box.functions) == {name for name, _ in HOSTILE} | {"ok"}


@pytest.mark.parametrize(("fn", "error"), HOSTILE, ids=[name for name, _ in HOSTILE])
def test_hostile_guest_is_rejected(hostile_guest: Path, fn: str, error: type[GuestTrap]) -> None:
    with Sandbox(hostile_guest) as box:
        with pytest.raises(error) as info:
            box.call(fn)
        assert isinstance(info.value, GuestTrap)
        if error is GuestProtocolError:
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
        ("null page", lambda l: 0, "read"),
        ("PML4", lambda l: PML4, "read"),
        ("GDT", lambda l: GDT, "read"),
        ("IDT", lambda l: IDT, "read"),
        ("exception stubs", lambda l: STUBS, "read"),
        ("leaf page tables", lambda l: l.page_tables_end - 8, "read"),
        ("stack guard", lambda l: l.stack_base - 8, "read"),
        ("end of memory", lambda l: l.mem_size, "read"),
        ("far away", lambda l: 1 << 40, "read"),
        ("input buffer", lambda l: l.in_buf, "write"),
        ("boot info", lambda l: l.boot_info, "write"),
        ("reply buffer", lambda l: l.reply_buf, "write"),
        ("PML4", lambda l: PML4, "write"),
        ("guest code", lambda l: l.image_base + 0x1000, "write"),
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
        ("heap", lambda l: l.heap_base),
        ("output buffer", lambda l: l.out_buf),
        ("input buffer", lambda l: l.in_buf),
        ("stack", lambda l: l.stack_top - 4096),
        ("exception stubs", lambda l: STUBS),
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
