"""Host function errors with hostile text: an exception whose message holds a lone
surrogate, a huge message, a __str__ or __repr__ that raises or returns a non-string.
Whatever the host function raised, call() raises HostFunctionError with it as __cause__
(never UnicodeEncodeError, RuntimeError, ...), and the sandbox stays usable.

Issue 11: a lone surrogate in the message made UnicodeEncodeError escape call()."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sandbox import HostFunctionError, Sandbox, SandboxPool

pytestmark = pytest.mark.requires_kvm


class StrRaises(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ refuses")


class ReprRaises(Exception):
    def __repr__(self) -> str:
        raise RuntimeError("__repr__ refuses")


class BothRaise(StrRaises, ReprRaises):
    pass


class StrNotAString(Exception):
    def __str__(self) -> str:
        return 42  # type: ignore[return-value]


class StrSurrogate(Exception):
    def __str__(self) -> str:
        return "bad \udcff text"


def raiser(make: Callable[[], BaseException]) -> Callable[..., Any]:
    def fn(*args: object) -> Any:
        raise make()

    return fn


CASES = {
    "lone_surrogate": lambda: ValueError("\udcff"),
    "surrogate_pair_halves": lambda: ValueError("a\ud800b\udc00c"),
    "huge_message": lambda: ValueError("x" * 10_000_000),
    "huge_multibyte_message": lambda: ValueError("€" * 1_000_000),
    "nul_bytes": lambda: ValueError("a\0b"),
    "str_raises": StrRaises,
    "repr_raises": ReprRaises,
    "str_and_repr_raise": BothRaise,
    "str_not_a_string": StrNotAString,
    "str_returns_surrogate": StrSurrogate,
    "no_args": ValueError,
}


@pytest.mark.parametrize("case", CASES)
def test_host_function_error_text_is_always_a_host_function_error(case: str) -> None:
    make = CASES[case]
    with Sandbox(host_functions={"bad": raiser(make)}) as sb:
        for _ in range(2):  # and again: nothing was left half-done
            with pytest.raises(HostFunctionError) as info:
                sb.call("call_host", "bad", "x")
            assert type(info.value.__cause__) is type(make())
            str(info.value)  # the error itself can be shown
        assert not sb.poisoned
        assert sb.call("add", 1, 2) == 3
        assert sb.call("echo", "still fine") == "still fine"


@pytest.mark.parametrize("case", ["lone_surrogate", "str_raises", "repr_raises"])
def test_pool_host_function_error_text(case: str) -> None:
    with SandboxPool(size=1, host_functions={"bad": raiser(CASES[case])}) as pool:
        with pytest.raises(HostFunctionError):
            pool.call("call_host", "bad", "x")
        assert pool.call("add", 1, 2) == 3


WASM = """
(module
  (import "host" "bad" (func $bad))
  (func (export "run") (result i32) (call $bad) (i32.const 1))
  (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
)
"""


@pytest.mark.parametrize("case", ["lone_surrogate", "str_raises", "repr_raises", "huge_message"])
def test_wasm_import_error_text(case: str) -> None:
    wasmtime = pytest.importorskip("wasmtime")
    imports = {"host": {"bad": raiser(CASES[case])}}
    with Sandbox.from_wasm(bytes(wasmtime.wat2wasm(WASM)), imports=imports) as sb:
        with pytest.raises(HostFunctionError):
            sb.call("run")
        assert sb.call("add", 1, 2) == 3
