"""Re-entrant use of a sandbox from inside its own call: a host function, the output
callback (a mid-call flush and the flush with the result), a Wasm import and a WASI
program's import call `call()`, `snapshot()`, `restore()` or `close()` on the sandbox that
is calling them. The first three raise SandboxBusy at once (the callback sees it; if it
lets it propagate, the call raises HostFunctionError with it as __cause__); `close()` is
deferred: the call finishes with its result, then the sandbox is closed.

Nothing may hang: every call runs on a thread joined with a time limit, so a deadlock
fails the test (and the deadlocked sandbox is abandoned, never closed, since closing it
would wait for the lock forever)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from sandbox import HostFunctionError, Sandbox, SandboxBusy, SandboxClosed

pytestmark = pytest.mark.requires_kvm

LIMIT = 5.0  # seconds a call may take before the test calls it a deadlock
ACTIONS = ["call", "snapshot", "restore"]


def guarded(fn: Callable[[], Any]) -> dict[str, Any]:
    """Runs fn() on a thread; {"result": ...} or {"error": ...}; fails on a deadlock."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["result"] = fn()
        except BaseException as exc:
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True, name="reentry-call")
    thread.start()
    thread.join(LIMIT)
    if thread.is_alive():
        pytest.fail(f"the call did not finish within {LIMIT} s: deadlocked in a re-entrant call")
    return out


class Reentry:
    """What a callback does: one action on the sandbox, recording what it raised."""

    def __init__(self, action: str, *, catch: bool = True) -> None:
        self.action = action
        self.catch = catch
        self.sandbox: Sandbox | None = None
        self.seen: list[str] = []
        self.slowest = 0.0

    def __call__(self, *args: object) -> Any:
        sb = self.sandbox
        assert sb is not None
        start = time.monotonic()
        try:
            if self.action == "call":  # the demo guest's add, or the Wasm module's run
                sb.call("add", 1, 2) if "add" in sb.functions else sb.call("run")
            elif self.action == "snapshot":
                sb.snapshot()
            elif self.action == "restore":
                sb.restore()
            elif self.action == "close":
                sb.close()
            else:
                raise AssertionError(self.action)
            self.seen.append("returned")
        except SandboxBusy:
            self.seen.append("busy")
            if not self.catch:
                raise
        except Exception as exc:
            self.seen.append(f"{type(exc).__name__}: {exc}")
            if not self.catch:
                raise
        finally:
            self.slowest = max(self.slowest, time.monotonic() - start)
        return "done" if args else None


def finish(sb: Sandbox) -> None:
    sb.close()
    assert sb.closed


# -- native guests: host function, output callback ----------------------------------------


@pytest.mark.parametrize("action", ACTIONS)
def test_host_function_gets_sandbox_busy(action: str) -> None:
    hook = Reentry(action)
    sb = Sandbox(host_functions={"hook": hook})
    hook.sandbox = sb
    out = guarded(lambda: sb.call("call_host", "hook", "x"))
    assert out == {"result": "done"}
    assert hook.seen == ["busy"]
    assert hook.slowest < 1.0  # at once, not after a wait
    assert sb.call("add", 1, 2) == 3  # not poisoned, not locked
    finish(sb)


@pytest.mark.parametrize("action", ACTIONS)
def test_sandbox_busy_propagates_as_host_function_error(action: str) -> None:
    hook = Reentry(action, catch=False)
    sb = Sandbox(host_functions={"hook": hook})
    hook.sandbox = sb
    out = guarded(lambda: sb.call("call_host", "hook", "x"))
    assert isinstance(out.get("error"), HostFunctionError), out
    assert isinstance(out["error"].__cause__, SandboxBusy)
    assert sb.call("add", 1, 2) == 3
    finish(sb)


@pytest.mark.parametrize("flush", ["mid_call", "with_result"])
@pytest.mark.parametrize("action", ACTIONS)
def test_output_callback_gets_sandbox_busy(action: str, flush: str) -> None:
    hook = Reentry(action)
    sb = Sandbox(output=hook)
    hook.sandbox = sb
    if flush == "mid_call":  # 1000 lines overflow the guest's 4 KiB print buffer
        out = guarded(lambda: sb.call("print_lines", 1000))
        assert out == {"result": 1000}
    else:
        out = guarded(lambda: sb.call("hello", "you"))
        assert out == {"result": "Hello, you!"}
    assert hook.seen and set(hook.seen) == {"busy"}
    assert hook.slowest < 1.0
    assert sb.call("add", 1, 2) == 3
    finish(sb)


@pytest.mark.parametrize("source", ["host_function", "output_mid_call", "output_with_result"])
def test_close_from_inside_is_deferred_to_the_end_of_the_call(source: str) -> None:
    hook = Reentry("close")
    if source == "host_function":
        sb = Sandbox(host_functions={"hook": hook})
        call: Callable[[], Any] = lambda: sb.call("call_host", "hook", "x")  # noqa: E731
        expected: object = "done"
    elif source == "output_mid_call":
        sb = Sandbox(output=hook)
        call, expected = (lambda: sb.call("print_lines", 1000)), 1000
    else:
        sb = Sandbox(output=hook)
        call, expected = (lambda: sb.call("hello", "you")), "Hello, you!"
    hook.sandbox = sb
    out = guarded(call)
    assert out == {"result": expected}
    assert set(hook.seen) == {"returned"}
    assert sb.closed
    with pytest.raises(SandboxClosed):
        sb.call("add", 1, 2)


def test_cancel_from_inside_does_not_hang() -> None:
    """cancel() from the call's own host function: whatever it decides (the call is
    cancelled, or the request is ignored), it returns promptly and the sandbox is left
    consistent."""
    sb = Sandbox(host_functions={"hook": lambda _: sb.cancel() or "done"})
    start = time.monotonic()
    out = guarded(lambda: sb.call("call_host", "hook", "x"))
    assert time.monotonic() - start < 3.0
    assert out.get("result") == "done" or type(out.get("error")).__name__ == "CallCancelled"
    if sb.poisoned:
        sb.restore()
    assert sb.call("add", 1, 2) == 3
    finish(sb)


# -- Wasm: an import, and a WASI program's import ---------------------------------------

WASM = """
(module
  (import "host" "hook" (func $hook))
  (memory (export "memory") 1)
  (func (export "run") (result i32) (call $hook) (i32.const 7))
)
"""

WASI = """
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "host" "hook" (func $hook))
  (memory (export "memory") 1)
  (data (i32.const 16) "after\\n")
  (func (export "run") (result i32)
    (call $hook)
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 6))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.const 7))
)
"""


def wasm_sandbox(text: str, hook: Reentry) -> Sandbox:
    wasmtime = pytest.importorskip("wasmtime")
    sb = Sandbox.from_wasm(bytes(wasmtime.wat2wasm(text)), imports={"host": {"hook": hook}})
    hook.sandbox = sb
    return sb


@pytest.mark.parametrize("module", ["import", "wasi"])
@pytest.mark.parametrize("action", ACTIONS)
def test_wasm_import_gets_sandbox_busy(action: str, module: str) -> None:
    hook = Reentry(action)
    sb = wasm_sandbox(WASM if module == "import" else WASI, hook)
    out = guarded(lambda: sb.call("run"))
    assert out == {"result": 7}
    assert hook.seen == ["busy"]
    assert hook.slowest < 1.0
    if module == "wasi":
        assert sb.last_output == "after\n"
    finish(sb)


@pytest.mark.parametrize("action", ACTIONS)
def test_wasm_import_busy_propagates_as_host_function_error(action: str) -> None:
    hook = Reentry(action, catch=False)
    sb = wasm_sandbox(WASM, hook)
    out = guarded(lambda: sb.call("run"))
    assert isinstance(out.get("error"), HostFunctionError), out
    assert isinstance(out["error"].__cause__, SandboxBusy)
    finish(sb)


@pytest.mark.parametrize("module", ["import", "wasi"])
def test_wasm_close_from_inside_is_deferred(module: str) -> None:
    hook = Reentry("close")
    sb = wasm_sandbox(WASM if module == "import" else WASI, hook)
    out = guarded(lambda: sb.call("run"))
    assert out == {"result": 7}
    assert hook.seen == ["returned"]
    if module == "wasi":  # the WASI context lived until the call ended
        assert sb.last_output == "after\n"
    assert sb.closed
    with pytest.raises(SandboxClosed):
        sb.call("run")
