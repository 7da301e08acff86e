"""The public API on the demo guest: every exported function, argument checking, host
functions, output, the lifecycle and the error hierarchy."""

from __future__ import annotations

import ast
import math
import re
import struct
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support import ROOT, U64, run_python, spin_reference

import sandbox
from sandbox import (
    ArgumentError,
    FunctionNotFound,
    GuestAbort,
    GuestNotFound,
    HostFunctionError,
    Sandbox,
    SandboxBusy,
    SandboxClosed,
    SandboxError,
    SandboxPoisoned,
    Signature,
    Tag,
)

kvm = pytest.mark.requires_kvm


def fib_reference(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, (a + b) & U64
    return a


def f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


# -- the demo functions ---------------------------------------------------------------------


@kvm
@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (1, 2, 3),
        (-5, 3, -2),
        (0, 0, 0),
        (2**31 - 1, 1, -(2**31)),  # i32 wraparound
        (-(2**31), -1, 2**31 - 1),
        (2**31 - 1, 2**31 - 1, -2),
    ],
)
def test_add(sb: Sandbox, a: int, b: int, expected: int) -> None:
    assert sb.call("add", a, b) == expected


@kvm
@pytest.mark.parametrize(
    "text",
    ["", "hello", "héllo wörld", "日本語テキスト", "emoji 🎉🐍 and 𝄞", "a\x00b", "x" * 10_000],
)
def test_echo_str(sb: Sandbox, text: str) -> None:
    assert sb.call("echo", text) == text


@kvm
@pytest.mark.parametrize(
    "data", [b"", b"\x00", bytes(range(256)), b"\xff\xfe\x00\x80" * 1000, bytes(200_000)]
)
def test_echo_bytes(sb: Sandbox, data: bytes) -> None:
    result = sb.call("echo_bytes", data)
    assert type(result) is bytes
    assert result == data


@kvm
def test_echo_bytes_accepts_bytes_like(sb: Sandbox) -> None:
    assert sb.call("echo_bytes", bytearray(b"abc")) == b"abc"
    assert sb.call("echo_bytes", memoryview(b"xyz")) == b"xyz"


@kvm
def test_fib(sb: Sandbox) -> None:
    for n in (0, 1, 2, 10, 50, 93, 94, 200):
        assert sb.call("fib", n) == fib_reference(n), n


@kvm
@pytest.mark.parametrize("n", [0, 1, 2, 7, 1000, 100_000])
def test_spin_matches_python(sb: Sandbox, n: int) -> None:
    assert sb.call("spin", n) == spin_reference(n)


@kvm
def test_counter_persists_in_one_sandbox_and_is_fresh_in_another(make_sandbox) -> None:
    first = make_sandbox()
    assert [first.call("counter") for _ in range(5)] == [1, 2, 3, 4, 5]
    second = make_sandbox()
    assert second.call("counter") == 1
    assert first.call("counter") == 6


@kvm
def test_random_differs_between_sandboxes_and_calls(make_sandbox) -> None:
    a, b = make_sandbox(), make_sandbox()
    ra = [a.call("random_u64") for _ in range(4)]
    rb = [b.call("random_u64") for _ in range(4)]
    assert all(0 <= v <= U64 for v in ra + rb)
    assert len(set(ra)) == 4, "one sandbox repeats its random numbers"
    assert ra != rb, "two sandboxes produced the same random sequence"
    assert ra[0] != rb[0]


@kvm
def test_hello_and_last_output(sb: Sandbox) -> None:
    assert sb.call("hello", "world") == "Hello, world!"
    assert sb.last_output == "guest says: Hello, world!\n"
    sb.call("add", 1, 2)
    assert sb.last_output == "", "last_output is the output of the last call only"


@kvm
def test_output_callback(make_sandbox) -> None:
    chunks: list[str] = []
    box = make_sandbox(output=chunks.append)
    assert box.call("hello", "Ünïcode") == "Hello, Ünïcode!"
    assert "".join(chunks) == "guest says: Hello, Ünïcode!\n"


@kvm
@pytest.mark.parametrize("char", ["é", "€", "𝄞"])
def test_hello_long_multibyte_name(sb: Sandbox, char: str) -> None:
    """Regression: the greeting was cut at 255 bytes inside a UTF-8 character, which the
    host rejected as a malformed result (and poisoned)."""
    result = sb.call("hello", char * 200)
    assert result.startswith("Hello, " + char * 3)
    assert set(result[len("Hello, ") :]) == {char}
    assert 250 < len(result.encode()) <= 255
    assert not sb.poisoned


@kvm
def test_print_lines_crosses_the_print_buffer(make_sandbox) -> None:
    chunks: list[str] = []
    box = make_sandbox(output=chunks.append)
    n = 5000  # ~49 KB of text: a dozen flushes of the 4 KiB print buffer
    assert box.call("print_lines", n) == n
    expected = "".join(f"line {i}\n" for i in range(n))
    assert len(chunks) > 5, "the output did not cross the print buffer"
    assert "".join(chunks) == expected
    assert box.last_output == expected
    # The sandbox is in a clean state afterwards.
    assert box.call("print_lines", 3) == 3
    assert box.last_output == "line 0\nline 1\nline 2\n"


FORMATS = [
    "%f",
    "%.0f",
    "%.3f",
    "%.10f",
    "%e",
    "%.3e",
    "%E",
    "%g",
    "%.3g",
    "%.17g",
    "%G",
    "%10.3f",
    "%-12.2f|",
    "%+f",
    "% f",
    "%010.3f",
    "%#.0f",
    "%#g",
    "%.0e",
    "%g%%",
]
VALUES = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    0.5,
    1.5,
    2.5,
    0.125,
    math.pi,
    -math.e,
    0.1,
    0.3,
    1e-5,
    1e-4,
    9.9999,
    999.9995,
    1234.5,
    123456789.125,
    1e15,
    1e16,
    1e-300,
    5e-324,
    1.7976931348623157e308,
    float("inf"),
    float("-inf"),
    float("nan"),
]


@kvm
def test_format_f64_matches_python(sb: Sandbox) -> None:
    mismatches = []
    for fmt in FORMATS:
        for value in VALUES:
            flags = re.match(r"%([-+ #0]*)", fmt).group(1)
            if "0" in flags and not math.isfinite(value):
                continue  # C ignores the 0 flag for inf/nan, Python does not
            expected = (fmt % value)[:127]  # the guest formats into a 128-byte buffer
            got = sb.call("format_f64", fmt, value)
            if got != expected:
                mismatches.append((fmt, value, got, expected))
    assert not mismatches


@kvm
def test_heap_check(sb: Sandbox) -> None:
    expected = sum(16 + i * 97 for i in range(64))
    assert sb.call("heap_check", 64) == expected
    assert sb.call("heap_check", 0) == 0
    # Freed memory is reused: many rounds do not exhaust the heap.
    for _ in range(50):
        assert sb.call("heap_check", 64) == expected


@kvm
@pytest.mark.parametrize(
    ("fn", "value"),
    [
        ("echo_i32", 0),
        ("echo_i32", -1),
        ("echo_i32", 2**31 - 1),
        ("echo_i32", -(2**31)),
        ("echo_u32", 0),
        ("echo_u32", 2**32 - 1),
        ("echo_u32", 2**31),
        ("echo_i64", 2**63 - 1),
        ("echo_i64", -(2**63)),
        ("echo_i64", -1),
        ("echo_u64", 0),
        ("echo_u64", U64),
        ("echo_u64", 2**63),
        ("echo_f64", 0.0),
        ("echo_f64", -0.0),
        ("echo_f64", math.pi),
        ("echo_f64", 5e-324),
        ("echo_f64", 1.7976931348623157e308),
        ("echo_f64", float("inf")),
        ("echo_f64", float("-inf")),
        ("echo_bool", True),
        ("echo_bool", False),
    ],
)
def test_echo_scalars(sb: Sandbox, fn: str, value: object) -> None:
    result = sb.call(fn, value)
    assert type(result) is type(value)
    assert result == value
    if isinstance(value, float):
        assert math.copysign(1, result) == math.copysign(1, value)


@kvm
def test_echo_f64_nan(sb: Sandbox) -> None:
    assert math.isnan(sb.call("echo_f64", float("nan")))


@kvm
@pytest.mark.parametrize("value", [0.1, 1 / 3, 1e-40, 3.4028234663852886e38, 16777217.0, -2.5])
def test_echo_f32_rounds_to_single_precision(sb: Sandbox, value: float) -> None:
    result = sb.call("echo_f32", value)
    assert result == f32(value)
    if value in (0.1, 1 / 3, 16777217.0):
        assert result != value  # really rounded, not passed through as a double


@kvm
def test_echo_f32_special_values(sb: Sandbox) -> None:
    assert sb.call("echo_f32", float("inf")) == float("inf")
    assert sb.call("echo_f32", float("-inf")) == float("-inf")
    assert math.isnan(sb.call("echo_f32", float("nan")))


@kvm
def test_ints_are_accepted_for_floats(sb: Sandbox) -> None:
    assert sb.call("echo_f64", 3) == 3.0
    assert type(sb.call("echo_f32", 2)) is float


@kvm
def test_noop_returns_none(sb: Sandbox) -> None:
    assert sb.call("noop") is None


@kvm
def test_sum_many_32_args(sb: Sandbox) -> None:
    args = [(-1) ** i * (i * 1_000_000_007) for i in range(32)]
    assert sb.call("sum_many", *args) == sum(args)
    assert sb.call("sum_many", *([2**58] * 31), 0) == 31 * 2**58


@kvm
def test_functions_are_described() -> None:
    with Sandbox() as box:
        assert box.functions["add"] == Signature("add", (Tag.I32, Tag.I32), Tag.I32)
        assert box.functions["noop"] == Signature("noop", (), Tag.VOID)
        assert len(box.functions["sum_many"].params) == 32
        assert str(box.functions["echo"]) == "echo(str) -> str"


# -- argument errors ------------------------------------------------------------------------


BAD_CALLS = [
    ("add", (1,)),  # too few
    ("add", (1, 2, 3)),  # too many
    ("noop", (1,)),
    ("sum_many", tuple(range(31))),
    ("add", ("1", 2)),  # str for i32
    ("add", (1.0, 2)),  # float for i32
    ("add", (True, 2)),  # bool for int
    ("add", (None, 2)),
    ("echo_bool", (1,)),  # int for bool
    ("echo_bool", (None,)),
    ("echo_f64", ("1.0",)),
    ("echo_f64", (True,)),
    ("echo", (b"bytes",)),  # bytes for str
    ("echo_bytes", ("str",)),  # str for bytes
    ("add", (2**31, 0)),  # out of range
    ("add", (-(2**31) - 1, 0)),
    ("echo_u32", (-1,)),
    ("echo_u32", (2**32,)),
    ("echo_i64", (2**63,)),
    ("echo_u64", (-1,)),
    ("echo_u64", (2**64,)),
    ("echo_f32", (1e39,)),  # out of range for f32
    ("echo", ("lone \ud800 surrogate",)),  # not UTF-8 encodable
    ("echo_bytes", (bytes(256 * 1024),)),  # does not fit the input buffer
    ("echo", ("x" * (256 * 1024),)),
]


@kvm
@pytest.mark.parametrize(
    ("fn", "args"), BAD_CALLS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_CALLS)]
)
def test_argument_errors(sb: Sandbox, fn: str, args: tuple[object, ...]) -> None:
    with pytest.raises(ArgumentError) as info:
        sb.call(fn, *args)
    assert isinstance(info.value, TypeError)
    assert isinstance(info.value, ValueError)
    assert fn in str(info.value)
    assert not sb.poisoned
    assert sb.call("add", 20, 22) == 42
    assert sb.call("echo", "still fine") == "still fine"


@kvm
def test_huge_int_for_f64_is_an_argument_error(sb: Sandbox) -> None:
    # Regression: this raised OverflowError.
    for value in (10**400, -(10**400)):
        with pytest.raises(ArgumentError, match="out of range for f64"):
            sb.call("echo_f64", value)
    assert sb.call("echo_f64", 2**1000) == float(2**1000)
    assert not sb.poisoned


@kvm
def test_function_not_found(sb: Sandbox) -> None:
    for name in ("no_such_function", "", "ADD", "add\x00"):
        with pytest.raises(FunctionNotFound) as info:
            sb.call(name)
        assert isinstance(info.value, LookupError)
    assert "no_such_function" not in sb.functions
    assert not sb.poisoned
    assert sb.call("add", 1, 1) == 2


# -- host functions -------------------------------------------------------------------------


@kvm
def test_host_function_gets_args_and_returns(make_sandbox) -> None:
    seen: list[tuple[object, ...]] = []

    def shout(text: str) -> str:
        seen.append((text,))
        return text.upper() + "!"

    box = make_sandbox(host_functions={"shout": shout})
    assert box.call("call_host", "shout", "héllo") == "HÉLLO!"
    assert seen == [("héllo",)]
    assert box.call("call_host", "shout", "") == "!"
    assert len(seen) == 2


@kvm
def test_host_function_exception_is_chained_and_does_not_poison(make_sandbox) -> None:
    original = ZeroDivisionError("host side failure")

    def broken(_: str) -> str:
        raise original

    box = make_sandbox(host_functions={"broken": broken, "ok": lambda s: s * 2})
    with pytest.raises(HostFunctionError) as info:
        box.call("call_host", "broken", "x")
    assert info.value.__cause__ is original
    assert not box.poisoned
    assert box.call("call_host", "ok", "ab") == "abab"
    assert box.call("add", 1, 2) == 3


@kvm
def test_host_function_exception_with_long_unicode_message(make_sandbox) -> None:
    def broken(_: str) -> str:
        raise ValueError("€" * 2000)

    box = make_sandbox(host_functions={"broken": broken})
    # Regression: the message was cut inside a UTF-8 character on its way through the
    # guest and came back as a malformed record (GuestProtocolError, poisoned).
    with pytest.raises(HostFunctionError) as info:
        box.call("call_host", "broken", "x")
    assert isinstance(info.value.__cause__, ValueError)
    assert not box.poisoned
    assert box.call("add", 1, 2) == 3


@kvm
def test_unregistered_host_function(make_sandbox) -> None:
    box = make_sandbox(host_functions={"known": str.upper})
    with pytest.raises(HostFunctionError) as info:
        box.call("call_host", "unknown_fn", "x")
    assert "unknown_fn" in str(info.value)
    assert not box.poisoned
    assert box.call("call_host", "known", "a") == "A"


@kvm
@pytest.mark.parametrize("bad_result", [[1, 2], {"a": 1}, object(), 2**64, "x" * (300 * 1024)])
def test_host_function_unsupported_result(make_sandbox, bad_result: object) -> None:
    box = make_sandbox(host_functions={"bad": lambda _: bad_result})
    with pytest.raises(HostFunctionError) as info:
        box.call("call_host", "bad", "x")
    assert isinstance(info.value.__cause__, ArgumentError)
    assert not box.poisoned
    assert box.call("add", 2, 2) == 4


@kvm
def test_host_function_non_str_result_reaches_the_guest(make_sandbox) -> None:
    # The demo's call_host wants a str back and aborts (a guest error) otherwise.
    box = make_sandbox(host_functions={"num": lambda _: 7})
    with pytest.raises(GuestAbort, match="did not return a str"):
        box.call("call_host", "num", "x")
    assert not box.poisoned


@pytest.mark.parametrize(
    "funcs",
    [
        {"f": 42},
        {"f": "not callable"},
        {"": str.upper},
        {"x" * 48: str.upper},
        {1: str.upper},
    ],
)
@kvm  # checked after the guest is prepared, which now needs KVM (for the CPU state)
def test_invalid_host_functions(funcs: dict) -> None:
    with pytest.raises(ArgumentError):
        Sandbox(host_functions=funcs)


@kvm
def test_reentrant_call_from_host_function_is_busy(make_sandbox) -> None:
    inner: list[BaseException] = []
    box: Sandbox

    def reenter(_: str) -> str:
        try:
            box.call("add", 1, 2)
        except SandboxBusy as exc:
            inner.append(exc)
            raise
        return "no error"

    box = make_sandbox(host_functions={"reenter": reenter})
    with pytest.raises(HostFunctionError) as info:
        box.call("call_host", "reenter", "x")
    assert len(inner) == 1
    assert info.value.__cause__ is inner[0]
    assert not box.poisoned
    assert box.call("add", 1, 2) == 3


@kvm
def test_host_function_may_call_another_sandbox(make_sandbox) -> None:
    other = make_sandbox()
    box = make_sandbox(host_functions={"fib": lambda s: str(other.call("fib", int(s)))})
    assert box.call("call_host", "fib", "50") == str(fib_reference(50))


@kvm
def test_close_from_host_function() -> None:
    """Regression: close() from a host function deadlocked on the call's own lock. It
    now closes the sandbox when the call ends. Run in a child so a hang cannot stall
    the suite."""
    code = textwrap.dedent(
        """
        import os, sandbox
        box = {}
        def closer(_):
            box["sb"].close()
            return "closed"
        sb = sandbox.Sandbox(host_functions={"closer": closer})
        box["sb"] = sb
        print(sb.call("call_host", "closer", "x"))
        print("closed" if sb.closed else "open")
        try:
            sb.call("add", 1, 2)
        except sandbox.SandboxClosed:
            print("SandboxClosed")
        """
    )
    result = run_python(code, timeout=20)
    assert result is not None, "the process hung"
    assert result.split() == ["closed", "closed", "SandboxClosed"]


# -- custom guest ---------------------------------------------------------------------------


@kvm
def test_user_guest(make_sandbox, probe_guest: Path) -> None:
    events: list[str] = []
    box = make_sandbox(
        probe_guest,
        host_functions={"add_one": lambda n: events.append(f"host {n}") or n + 1},
        output=lambda text: events.append(f"print {text!r}"),
    )
    assert Path(box.guest_path).resolve() == probe_guest.resolve()
    assert box.call("triple", -14) == -42
    assert box.call("abi_version") == sandbox.abi.ABI_VERSION
    assert box.call("ask_host", 41) == 42
    # Output printed before a host call is flushed with it, before the host runs.
    assert events == ["print 'asking the host\\n'", "host 41"]
    assert box.last_output == "asking the host\n"


@kvm
def test_user_guest_by_str_path(make_sandbox, probe_guest: Path) -> None:
    assert make_sandbox(str(probe_guest)).call("triple", 5) == 15


# -- lifecycle ------------------------------------------------------------------------------


@kvm
def test_context_manager_closes() -> None:
    with Sandbox() as box:
        assert not box.closed
        assert box.call("add", 1, 2) == 3
    assert box.closed
    with pytest.raises(SandboxClosed):
        box.call("add", 1, 2)


@kvm
def test_close_is_idempotent_and_call_after_close() -> None:
    box = Sandbox()
    box.close()
    box.close()
    assert box.closed
    with pytest.raises(SandboxClosed):
        box.call("add", 1, 2)
    with pytest.raises(SandboxClosed):
        box.call("no_such_function")
    box.close()


@kvm
def test_close_of_poisoned_sandbox() -> None:
    box = Sandbox()
    with pytest.raises(sandbox.GuestTrap):
        box.call("fault", "ud2")
    with pytest.raises(SandboxPoisoned):
        box.call("add", 1, 2)
    box.close()
    with pytest.raises(SandboxClosed):
        box.call("add", 1, 2)


@kvm
def test_close_from_another_thread_cancels_the_call() -> None:
    box = Sandbox()
    errors: list[BaseException] = []
    started = threading.Event()

    def run() -> None:
        started.set()
        try:
            box.call("fault", "spin_forever", timeout=30)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    started.wait()
    time.sleep(0.1)
    box.close()
    thread.join(10)
    assert not thread.is_alive()
    assert box.closed
    assert len(errors) == 1 and isinstance(errors[0], (sandbox.CallCancelled, SandboxClosed))


def test_guest_not_found() -> None:
    # Resolved before KVM is touched.
    for guest in ("no-such-guest", "/no/such/dir/guest.elf", Path("/no/such/guest.elf")):
        with pytest.raises(GuestNotFound) as info:
            Sandbox(guest)
        assert isinstance(info.value, FileNotFoundError)


@kvm
def test_unclosed_sandbox_does_not_hang_interpreter_exit() -> None:
    # Nothing was ever closed in this process: the teardown runs from __del__ at exit.
    out = run_python(
        "import sandbox\nsb = sandbox.Sandbox()\nprint(sb.call('add', 1, 2), flush=True)\n",
        timeout=20,
    )
    assert out is not None, "the interpreter hung at exit"
    assert out.strip() == "3"


# -- the error hierarchy --------------------------------------------------------------------


def _exported_errors() -> list[type[BaseException]]:
    return [
        obj
        for name in sandbox.__all__
        if isinstance(obj := getattr(sandbox, name), type) and issubclass(obj, BaseException)
    ]


def test_every_runtime_error_is_importable_from_the_package() -> None:
    """`from sandbox import PythonError` (or WasmTrap, ...) works like the core's errors:
    every error class of sandbox.errors, and the trap-kind enums, are exported."""
    import enum

    from sandbox import errors

    defined = {
        name
        for name, obj in vars(errors).items()
        if isinstance(obj, type)
        and obj.__module__ == errors.__name__
        and (issubclass(obj, SandboxError) or issubclass(obj, enum.Enum))
    }
    assert {"PythonError", "WasmTrap", "TrapKind"} <= defined
    assert defined <= set(sandbox.__all__), defined - set(sandbox.__all__)


def test_every_error_is_a_sandbox_error() -> None:
    errors = _exported_errors()
    assert len(errors) >= 15
    for cls in errors:
        assert issubclass(cls, SandboxError), cls
    assert issubclass(ArgumentError, TypeError) and issubclass(ArgumentError, ValueError)
    assert issubclass(FunctionNotFound, LookupError)
    assert issubclass(GuestNotFound, FileNotFoundError)
    assert issubclass(sandbox.CallTimeout, TimeoutError)
    assert issubclass(sandbox.ConfigError, ValueError)
    assert issubclass(sandbox.GuestProtocolError, sandbox.GuestTrap)


def test_sandbox_error_is_never_raised_directly() -> None:
    """No `SandboxError(...)` is constructed anywhere in the package."""
    offenders = []
    for path in (ROOT / "sandbox").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, (ast.Name, ast.Attribute))
                and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr)
                == "SandboxError"
            ):
                offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders


@kvm
def test_raised_errors_are_specific(make_sandbox) -> None:
    box = make_sandbox(host_functions={"boom": lambda _: 1 / 0})
    raised: list[SandboxError] = []
    for fn, args in [
        ("nope", ()),
        ("add", ("x", 1)),
        ("fault", ("abort",)),
        ("call_host", ("boom", "x")),
        ("call_host", ("missing", "x")),
        ("fault", ("null",)),
        ("add", (1, 2)),
    ]:
        with pytest.raises(SandboxError) as info:
            box.call(fn, *args)
        raised.append(info.value)
    box.close()
    with pytest.raises(SandboxError) as info:
        box.call("add", 1, 2)
    raised.append(info.value)
    kinds = [type(e) for e in raised]
    assert SandboxError not in kinds
    assert kinds == [
        FunctionNotFound,
        ArgumentError,
        GuestAbort,
        HostFunctionError,
        HostFunctionError,
        sandbox.GuestTrap,
        SandboxPoisoned,
        SandboxClosed,
    ]


@pytest.mark.requires_kvm
@pytest.mark.parametrize(
    "make",
    [
        lambda: Sandbox(config={"memory_size": 3}),  # type: ignore[arg-type]
        lambda: Sandbox(42),  # type: ignore[arg-type]
        lambda: Sandbox.from_snapshot(42),  # type: ignore[arg-type]
    ],
    ids=["config-dict", "guest-int", "snapshot-int"],
)
def test_wrong_argument_types_are_argument_errors(make: Callable[[], object]) -> None:
    with pytest.raises(ArgumentError):
        make()


@pytest.mark.requires_kvm
def test_restore_takes_a_snapshot(sb: Sandbox) -> None:
    with pytest.raises(ArgumentError, match="takes a Snapshot"):
        sb.restore("x")  # type: ignore[arg-type]
    assert sb.call("add", 1, 2) == 3


def test_import_leaves_the_pool_and_the_guest_kinds_until_used() -> None:
    """`import sandbox` maps no asyncio and no Wasm or Python kind (every shared library a
    process maps makes KVM_CREATE_VM slower); asking for them imports them."""
    code = textwrap.dedent(
        """
        import sys
        import sandbox
        from sandbox import Sandbox, kinds
        lazy = ("asyncio", "sandbox.pool", "sandbox.wasm", "sandbox.python")
        print(*(name in sys.modules for name in lazy))
        with Sandbox() as sb:
            assert sb.call("add", 1, 2) == 3
        print(*(name in sys.modules for name in lazy))
        print(kinds.is_kind("python"), kinds.is_kind("wasm"), "sandbox.python" in sys.modules)
        print(sandbox.SandboxPool.__module__, sandbox.WasmSandbox.__module__)
        print(kinds.factory("python").__name__, "sandbox.python" in sys.modules)
        print("PythonSandbox" in dir(sandbox), hasattr(sandbox, "NoSuchName"))
        print(sandbox.pool.ensure_fd_limit.__name__, sandbox.wasm.__name__)
        """
    )
    out = run_python(code, timeout=60)
    assert out is not None
    assert out.splitlines() == [
        "False False False False",
        "False False False False",
        "True False False",
        "sandbox.pool sandbox.wasm.sandbox",
        "PythonSandbox True",
        "True False",
        "ensure_fd_limit sandbox.wasm",
    ]


def test_a_kind_registered_by_the_user_stays_when_the_builtin_one_is_imported() -> None:
    code = textwrap.dedent(
        """
        import sys
        import sandbox
        from sandbox import kinds
        def mine(*args, **kwargs):
            return "mine"
        kinds.register("wasm", mine)
        kinds.register("python", mine)  # not as a constructor: Sandbox("python") is a path
        sandbox.WasmSandbox, sandbox.PythonSandbox  # import both built-in kinds
        print("sandbox.wasm" in sys.modules, "sandbox.python" in sys.modules)
        print(kinds.factory("wasm") is mine, kinds.factory("python") is mine)
        print(kinds.is_kind("python"), sandbox.Sandbox.from_wasm(b""))
        """
    )
    out = run_python(code, timeout=60)
    assert out is not None
    assert out.splitlines() == ["True True", "True True", "False mine"]


def test_an_unknown_guest_kind_names_the_known_ones() -> None:
    with pytest.raises(ArgumentError, match=r"no guest kind 'cobol'.*python, wasm"):
        sandbox.kinds.factory("cobol")


def test_a_native_extension_of_another_version_is_refused_at_import() -> None:
    """The extension compiles in the version it was built for; a package of another
    version (sandbox/_version.py changed, the extension not rebuilt) does not import."""
    code = textwrap.dedent(
        """
        import sys, types
        stale = types.ModuleType("sandbox._version")
        stale.__version__ = "0.0.0-not-this-one"
        sys.modules["sandbox._version"] = stale
        try:
            import sandbox
        except ImportError as exc:
            print(exc)
        """
    )
    out = run_python(code, timeout=60)
    assert out is not None
    assert re.fullmatch(
        r"sandbox's native extension was built for version \S+, the package is "
        r"0\.0\.0-not-this-one: reinstall the package to rebuild it\n",
        out,
    ), out
