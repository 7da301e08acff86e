"""Python sandboxes: calls, values, errors, output, state, host functions, pools, the
decorator, packages and directories. Real CPython 3.12 for WASI in the real VM."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections import namedtuple
from enum import IntEnum
from math import sqrt
from pathlib import Path

import pytest
from python_support import make_wheel

from sandbox import (
    ArgumentError,
    CallCancelled,
    CallTimeout,
    FunctionNotFound,
    HostFunctionError,
    Sandbox,
    SandboxPoisoned,
    SandboxPool,
)
from sandbox.python import PythonError, PythonExit, PythonSandbox, sandboxed
from sandbox.wasm import aot
from sandbox.wasm.wasi import Preopen

pytestmark = pytest.mark.requires_kvm

SCALE = 10


def add(a, b):
    return a + b


def uses_module_and_helper(x):
    return json.dumps({"v": helper(x), "r": sqrt(16), "s": SCALE})


def helper(x):
    return x * SCALE


def raises(n):
    if n > 0:
        return raises(n - 1)
    raise ValueError(f"bad value {n}")


def test_call_a_function_and_its_dependencies(sb: PythonSandbox) -> None:
    assert isinstance(sb, Sandbox)
    assert sb.call(add, 1, 2) == 3
    assert sb.call(add, a="x", b="y") == "xy"
    assert json.loads(sb.call(uses_module_and_helper, 4)) == {"v": 40, "r": 4.0, "s": 10}
    assert sb.python_version.startswith("3.12")


def test_nested_function_with_closure(sb: PythonSandbox) -> None:
    offset = 100

    def inner(x):
        return x + offset

    assert sb.call(inner, 1) == 101


def test_run_and_call_by_name(sb: PythonSandbox) -> None:
    assert sb.run("x = 21\nx * 2") == 42
    assert sb.run("def double(v):\n    return v * 2") is None
    assert sb.call("double", 5) == 10
    with pytest.raises(FunctionNotFound):
        sb.call("nothing_here")


VALUES = [
    None,
    True,
    False,
    0,
    -(2**63),
    2**200,
    -(3**150),
    1.5,
    -0.0,
    math.inf,
    -math.inf,
    "héllo \U0001f600",
    "lone \udc80 surrogate",
    b"\x00\xff" * 10,
    [1, [2, [3]]],
    (1, "a", (None,)),
    {1, 2, 3},
    frozenset({"x"}),
    {"a": 1, "$": 2},
    {1: "one", (2, 3): [4], None: b""},
]


@pytest.mark.parametrize("value", VALUES, ids=[repr(v)[:20] for v in VALUES])
def test_values_round_trip(sb: PythonSandbox, value: object) -> None:
    def echo(v):
        return v

    got = sb.call(echo, value)
    assert got == value and type(got) is type(value)


def test_nan_and_subclasses(sb: PythonSandbox) -> None:
    def echo(v):
        return v

    assert math.isnan(sb.call(echo, math.nan))
    Point = namedtuple("Point", "x y")

    class Color(IntEnum):
        RED = 1

    assert sb.call(echo, Point(1, 2)) == (1, 2)
    assert sb.call(echo, Color.RED) == 1 and type(sb.call(echo, Color.RED)) is int
    assert sb.call(echo, bytearray(b"ab")) == b"ab"


def test_what_cannot_be_sent(sb: PythonSandbox) -> None:
    with pytest.raises(ArgumentError, match="object"):
        sb.call(add, object(), 1)
    lock = threading.Lock()

    def uses_lock():
        return lock.locked()

    with pytest.raises(ArgumentError, match="'lock'.*Pass it as an argument"):
        sb.call(uses_lock)
    with pytest.raises(ArgumentError, match="lambda"):
        sb.call(lambda: 1)
    counter = 0

    def bump():
        nonlocal counter
        counter += 1

    with pytest.raises(ArgumentError, match="nonlocal"):
        sb.call(bump)

    def gives_generator():
        return (i for i in range(3))

    with pytest.raises(PythonError, match="generator") as info:
        sb.call(gives_generator)
    assert info.value.type_name == "TypeError"

    def gives_complex():
        return 1j

    with pytest.raises(PythonError, match="complex"):
        sb.call(gives_complex)
    assert sb.call(add, 2, 2) == 4  # none of that hurt the sandbox


def test_python_error_carries_type_message_and_traceback(sb: PythonSandbox) -> None:
    with pytest.raises(PythonError) as info:
        sb.call(raises, 2)
    err = info.value
    assert err.type_name == "ValueError" and err.module == "builtins"
    assert err.message == "bad value 0"
    assert __file__ in err.guest_traceback
    assert 'raise ValueError(f"bad value {n}")' in err.guest_traceback
    line = raises.__code__.co_firstlineno + 3
    assert f"line {line}, in raises" in err.guest_traceback
    assert not sb.poisoned
    assert sb.call(add, 1, 1) == 2


def test_system_exit_and_os_exit(sb: PythonSandbox) -> None:
    def leave(code):
        import sys

        sys.exit(code)

    with pytest.raises(PythonExit) as info:
        sb.call(leave, 3)
    assert info.value.code == 3 and info.value.unwound and not sb.poisoned

    def hard_exit():
        import os

        os._exit(7)

    with pytest.raises(PythonExit) as info:
        sb.call(hard_exit)
    assert info.value.code == 7 and not info.value.unwound and sb.poisoned
    with pytest.raises(SandboxPoisoned):
        sb.call(add, 1, 2)
    sb.restore()
    assert sb.call(add, 1, 2) == 3


def test_output_captured_per_call_and_streamed(tier: str) -> None:
    seen: list[str] = []
    with Sandbox("python", tier=tier, output=seen.append) as sb:

        def talk(n):
            import sys

            print("out", n)
            print("err", n, file=sys.stderr)
            return n

        assert sb.call(talk, 1) == 1
        assert sb.last_output == "out 1\n" and sb.last_stderr == "err 1\n"
        sb.call(add, 1, 2)
        assert sb.last_output == "" and sb.last_stderr == ""

        def big():
            for _ in range(3000):
                print("x" * 99)

        sb.call(big)
        assert len(sb.last_output) == 300_000 and not sb.last_output_truncated
    assert "out 1\n" in seen and "err 1\n" in seen
    assert sum(len(s) for s in seen) >= 300_000 + 12


def test_timeout_and_restore(sb: PythonSandbox) -> None:
    def spin():
        while True:
            pass

    t0 = time.monotonic()
    # The messages name the Python function, not the interpreter's export.
    with pytest.raises(CallTimeout, match=r"^spin did not finish within 0\.3 s$"):
        sb.call(spin, timeout=0.3)
    assert time.monotonic() - t0 < 3
    assert sb.poisoned
    sb.restore()
    assert sb.call(add, 1, 2) == 3

    def nap():
        import time

        time.sleep(30)

    with pytest.raises(CallTimeout, match=r"^nap did not finish"):
        sb.call(nap, timeout=0.3)
    sb.restore()
    sb.run("def forever():\n    while True:\n        pass\n")
    with pytest.raises(CallTimeout, match=r"^forever did not finish"):
        sb.call("forever", timeout=0.3)
    sb.restore()
    with pytest.raises(CallTimeout, match=r"^the code of <sandbox> did not finish"):
        sb.run("while True:\n    pass\n", timeout=0.3)


def test_cancel_from_another_thread(sb: PythonSandbox) -> None:
    def spin():
        while True:
            pass

    timer = threading.Timer(0.3, sb.cancel)
    timer.start()
    with pytest.raises(CallCancelled, match=r"^spin was cancelled$"):
        sb.call(spin, timeout=10)
    # Restored and called again at once, while cancel() may still be in its kick
    # loop: the next call is not cancelled or timed out by it.
    sb.restore()
    assert sb.call(add, 2, 3) == 5
    assert not sb.poisoned
    timer.join()


def test_state_kept_or_reset(tier: str) -> None:
    def count():
        global calls
        calls = globals().get("calls", 0) + 1
        return calls

    with Sandbox("python", tier=tier) as sb:
        assert [sb.call(count) for _ in range(3)] == [1, 2, 3]
        snap = sb.snapshot()
        assert sb.call(count) == 4
        sb.restore(snap)
        assert sb.call(count) == 4
        other = Sandbox.from_snapshot(snap)
        assert other.call(count) == 4
        other.close()
    with Sandbox("python", tier=tier, reset="per_call") as fresh:
        assert [fresh.call(count) for _ in range(3)] == [1, 1, 1]
        fresh.run("y = 5")
        assert fresh.run("globals().get('y')") is None


def test_host_functions(tier: str) -> None:
    table = {"a": 1}

    def lookup(key):
        return table[key]

    def fetch_a():
        from sandbox_guest import host

        return host.lookup("a") + 1

    def fetch_missing():
        from sandbox_guest import host

        return host.lookup("zz")

    def call_unknown():
        from sandbox_guest import host

        return host.nope()

    with Sandbox("python", tier=tier, host_functions={"lookup": lookup}) as sb:
        assert sb.call(fetch_a) == 2
        with pytest.raises(HostFunctionError) as info:
            sb.call(fetch_missing)
        assert isinstance(info.value.__cause__, KeyError)
        with pytest.raises(HostFunctionError, match="no host function 'nope'"):
            sb.call(call_unknown)
        assert sb.call(fetch_a) == 2


def test_host_function_calling_back_is_refused(tier: str) -> None:
    holder: list[PythonSandbox] = []

    def reenter():
        return holder[0].call(add, 1, 2)

    def go():
        from sandbox_guest import host

        return host.reenter()

    with Sandbox("python", tier=tier, host_functions={"reenter": reenter}) as sb:
        holder.append(sb)
        with pytest.raises(HostFunctionError, match="SandboxBusy"):
            sb.call(go)
        assert sb.call(add, 1, 2) == 3


def test_pool_and_async(tier: str) -> None:
    def state(x):
        global seen
        seen = globals().get("seen", []) + [x]
        return seen

    with SandboxPool("python", tier=tier, size=2) as pool:
        assert pool.call(add, 1, 2) == 3
        assert pool.call(state, 1) == [1]
        assert pool.call(state, 2) == [2]  # fresh state every call

        async def main() -> list[int]:
            return list(await asyncio.gather(*(pool.acall(add, i, i) for i in range(6))))

        assert asyncio.run(main()) == [0, 2, 4, 6, 8, 10]


def test_sandboxed_decorator(tier: str) -> None:
    @sandboxed(size=2, timeout=5, tier=tier)
    def square(x):
        return x * x

    try:
        assert square(7) == 49
        assert asyncio.run(square.acall(8)) == 64
        assert square.func(3) == 9
    finally:
        square.close()


def test_preopened_directories(tier: str, tmp_path: Path) -> None:
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    (ro / "in.txt").write_text("input")

    def work():
        text = open("/in/in.txt").read()  # noqa: SIM115
        with open("/out/result.txt", "w") as f:
            f.write(text.upper())
        try:
            open("/in/new.txt", "w")  # noqa: SIM115
        except OSError as exc:
            return type(exc).__name__
        return "written"

    opens = [
        Preopen(host_path=ro, guest_path="/in"),
        Preopen(host_path=rw, guest_path="/out", read_only=False),
    ]
    with Sandbox("python", tier=tier, preopens=opens) as sb:
        assert sb.call(work) in ("PermissionError", "OSError")
    assert (rw / "result.txt").read_text() == "INPUT"
    assert not (ro / "new.txt").exists()


def test_packages_from_a_local_wheel(
    tier: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A cache of its own for the packages; the compiled guest's stays shared (linked)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "wasm-aot").symlink_to(aot.cache_dir())
    monkeypatch.setenv("KVM_SANDBOX_CACHE", str(tmp_path / "cache"))
    wheel = make_wheel(
        tmp_path,
        "greeter",
        "1.0",
        {"greeter/__init__.py": "def greet(n):\n    return f'hello {n}'\n"},
    )

    def use():
        import greeter

        return greeter.greet("vm")

    with Sandbox("python", tier=tier, packages=[wheel]) as sb:
        assert sb.call(use) == "hello vm"
        assert sb.run("import sys; 'greeter' in sys.modules")  # imported into the snapshot

    def writes():
        open("/packages/x.py", "w")  # noqa: SIM115

    with Sandbox("python", tier=tier, packages=[wheel]) as sb, pytest.raises(PythonError):
        sb.call(writes)
    with pytest.raises(ArgumentError, match="No such file"):
        Sandbox("python", tier=tier, packages=[str(tmp_path / "missing-0.1-py3-none-any.whl")])
    with pytest.raises(ArgumentError, match="pip could not install"):
        Sandbox("python", tier=tier, packages=["./not-a-project-dir"])
