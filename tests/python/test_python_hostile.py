"""Hostile Python: every attack ends in a typed error, and the host and the next caller
are untouched. Real CPython 3.12 for WASI in the real VM."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from sandbox import CallTimeout, GuestProtocolError, Sandbox, SandboxPool
from sandbox.python import PythonCrash, PythonError, PythonSandbox
from sandbox.python.codec import CodecError, decode
from sandbox.wasm.wasi import Preopen

pytestmark = pytest.mark.requires_kvm


def ok(a, b):
    return a + b


def run_error(sb: PythonSandbox, code: str, timeout: float = 20) -> PythonError:
    with pytest.raises(PythonError) as info:
        sb.run(code, timeout=timeout)
    assert not sb.poisoned
    assert sb.call(ok, 1, 2) == 3
    return info.value


def test_infinite_loop_in_a_pool_leaves_the_next_caller_alone(tier: str) -> None:
    def spin():
        while True:
            pass

    with SandboxPool("python", tier=tier, size=1) as pool:
        t0 = time.monotonic()
        with pytest.raises(CallTimeout):
            pool.call(spin, timeout=0.3)
        assert time.monotonic() - t0 < 3
        assert pool.call(ok, 2, 3) == 5


def test_memory_bomb_is_a_memory_error(sb: PythonSandbox) -> None:
    err = run_error(sb, "x = []\nwhile True:\n    x.append(bytearray(10**6))")
    assert err.type_name == "MemoryError"
    assert run_error(sb, "bytearray(10**9)").type_name == "MemoryError"


def test_deep_recursion_is_a_recursion_error(sb: PythonSandbox) -> None:
    err = run_error(sb, "def f(n):\n    return f(n + 1)\nf(0)")
    assert err.type_name == "RecursionError"


def test_c_stack_overflow_is_a_crash_that_restore_clears(sb: PythonSandbox) -> None:
    code = "class A:\n    def __repr__(self):\n        return repr(A())\nrepr(A())"
    with pytest.raises(PythonCrash) as info:
        sb.run(code)
    assert info.value.kind in ("memory_oob", "stack_exhausted")
    assert sb.poisoned
    sb.restore()
    assert sb.call(ok, 1, 2) == 3


def test_crash_with_reset_per_call_recovers_by_itself(tier: str) -> None:
    with Sandbox("python", tier=tier, reset="per_call") as sb:
        with pytest.raises(PythonCrash):
            sb.run("import sys\nsys.setrecursionlimit(10**6)\ndef f(n):\n"
                   "    return list(map(f, [n]))\nf(0)")  # fmt: skip
        assert sb.call(ok, 1, 2) == 3


def test_output_flood_is_bounded(tier: str) -> None:
    def flood():
        while True:
            print("y" * 1000)

    with Sandbox("python", tier=tier) as sb:
        with pytest.raises(CallTimeout):
            sb.call(flood, timeout=1.0)
        assert sb.last_output_truncated
        assert len(sb.last_output) <= sb.config.output_limit
        sb.restore()
        assert sb.call(ok, 1, 2) == 3


def test_files_processes_threads_and_environment(sb: PythonSandbox) -> None:
    assert run_error(sb, "open('/etc/passwd').read()").type_name == "FileNotFoundError"
    assert run_error(sb, "import os\nos.listdir('/')").type_name == "FileNotFoundError"
    assert run_error(sb, "open('../../etc/passwd')").type_name == "FileNotFoundError"
    assert run_error(sb, "import subprocess\nsubprocess.run(['ls'])").type_name == "OSError"
    assert run_error(sb, "import os\nos.fork()").type_name == "AttributeError"
    err = run_error(sb, "import threading\nthreading.Thread(target=print).start()")
    assert err.type_name == "RuntimeError"
    assert sb.run("import os\ndict(os.environ)") == {}
    assert run_error(sb, "import socket\nsocket.create_connection(('127.0.0.1', 80))")


def test_forged_replies_are_protocol_errors(sb: PythonSandbox) -> None:
    # Guest code replaces the runtime's encoder: the host decodes what it wrote.
    forged = {
        "garbage": "b'\\xff' * 100",
        "deep": "b'[\\x01\\x00\\x00\\x00' * 100000 + b'N'",
        "huge count": "b'[\\xff\\xff\\xff\\x7f'",
        "back reference": "b'\\xe9\\x01\\x00\\x00\\x00'",
        "unhashable": "b'<\\x01\\x00\\x00\\x00[\\x00\\x00\\x00\\x00'",
        "long int": "b'l\\xff\\xff\\xff\\x7f'",
    }
    for name, payload in forged.items():
        code = f"import sandbox_guest as g\ng._dumps = lambda value, version: {payload}\n1"
        with pytest.raises(GuestProtocolError):
            sb.run(code)
        assert sb.poisoned, name
        sb.restore()
        assert sb.call(ok, 1, 2) == 3


def test_length_beyond_the_mailbox_and_code_objects(sb: PythonSandbox) -> None:
    code = "import sandbox_guest as g\ng._put = lambda data: g.LENGTH.__setitem__(0, 2**32 - 1)\n1"
    with pytest.raises(GuestProtocolError):
        sb.run(code)
    sb.restore()
    with pytest.raises(PythonError, match="code"):
        sb.run("(lambda: 0).__code__")
    assert sb.call(ok, 1, 2) == 3


def test_host_decoder_directly() -> None:
    assert decode(b"(\x02\x00\x00\x00i\x01\x00\x00\x00N") == (1, None)
    for bad in (b"", b"(", b"(\x05\x00\x00\x00N", b"u\x05\x00\x00\x00\xff\xff\xff\xff\xff", b"NN"):
        with pytest.raises(GuestProtocolError):
            decode(bad)
    with pytest.raises(CodecError):
        decode(b"y" + bytes(16))


def planted():
    """What a previous caller left in the interpreter (builtins outlive modules)."""
    import builtins

    return getattr(builtins, "PLANTED", None)


def test_a_per_call_sandbox_never_starts_from_another_snapshots_state(tier: str) -> None:
    """reset="per_call" keeps, per initial state, the states with a shipped function
    compiled. They were kept per interpreter: a fresh Sandbox("python") whose function
    had been compiled first by a sandbox made from another caller's snapshot started
    its calls from that snapshot's state (it read the other caller's data), and the
    reverse lost the snapshot's own state. Both orders, both ways."""
    with Sandbox("python", tier=tier) as alice:
        alice.run("import builtins; builtins.PLANTED = 'alice-secret'")
        snap = alice.snapshot()
    for first_from_snapshot in (True, False):
        order = ["snapshot", "fresh"] if first_from_snapshot else ["fresh", "snapshot"]
        for which in order:
            if which == "snapshot":
                with Sandbox.from_snapshot(snap, reset="per_call") as sb:
                    assert [sb.call(planted) for _ in range(2)] == ["alice-secret"] * 2
            else:
                with Sandbox("python", reset="per_call", tier=tier) as sb:
                    assert [sb.call(planted) for _ in range(2)] == [None, None]
        snap = alice_again(tier)  # a new snapshot object: nothing compiled for it yet


def alice_again(tier: str) -> Any:
    with Sandbox("python", tier=tier) as alice:
        alice.run("import builtins; builtins.PLANTED = 'alice-secret'")
        return alice.snapshot()


def test_guest_code_that_drops_the_shipped_functions_gets_them_sent_again(
    sb: PythonSandbox,
) -> None:
    """The host sends a function's source once and then only its key; guest code that
    empties the runtime's table of defined functions makes the guest answer "unknown",
    and the host sends the source again (it sent None again until this test)."""
    assert sb.call(_triple, 3) == 9
    sb.run("import sandbox_guest\nsandbox_guest.DEFINED.clear()")
    assert sb.call(_triple, 4) == 12
    assert sb.run("len(sandbox_guest.DEFINED)") == 1


def _triple(x: int) -> int:
    return 3 * x


def test_sandboxes_given_other_directories_never_reach_each_others(
    tier: str, tmp_path: Path
) -> None:
    """Sandboxes given different host directories at one guest path share the
    interpreter (started with an empty one there) but nothing else: each call, and each
    state a per_call sandbox keeps with a function compiled, sees its own directory."""
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    (one / "mine").write_text("one")
    for _ in range(2):  # the second time, the states compiled the first time are found
        for folder, before in ((one, ["mine"]), (two, [])):
            opens = [Preopen(host_path=folder, guest_path="/data", read_only=False)]
            with Sandbox("python", tier=tier, reset="per_call", preopens=opens) as sb:
                assert sb.call(_listing) == before
                assert sb.call(_plant) == sorted([*before, "planted"])
            assert (folder / "planted").exists()
            (folder / "planted").unlink()
        assert sorted(p.name for p in one.iterdir()) == ["mine"]
        assert list(two.iterdir()) == []


def _listing() -> list[str]:
    import os

    return sorted(os.listdir("/data"))


def _plant() -> list[str]:
    import os

    with open("/data/planted", "w") as f:
        f.write("x")
    return sorted(os.listdir("/data"))
