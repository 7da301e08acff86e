"""Wasm functions in the "auto" tier, with the real host on loopback: a deploy answers
without waiting for the native compile (made slow here by a C compiler that sleeps),
the function serves from the interpreter meanwhile, and once the compile is done the
pool's sandboxes move to native code after their calls, never during one; a compile
that fails or times out leaves the function on the interpreter, with the reason logged
and shown.

Which code serves a call is told apart by recursion depth: depth(20000) exhausts the
interpreter's 12,000-frame call stack but not a compiled guest's native stack."""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from host_support import AUTH, deploy, error_of, invoke

wasmtime = pytest.importorskip("wasmtime")
pytestmark = [
    pytest.mark.requires_kvm,
    pytest.mark.skipif(
        shutil.which("wasm2c") is None or shutil.which("gcc") is None,
        reason="the AOT tier needs wasm2c and gcc",
    ),
]

COMPILE_SLEEP_S = 8.0


def _module(export: str = "depth") -> bytes:
    """A module of its own per test run (a random constant), so that its native code
    is never cached yet."""
    salt = secrets.randbelow(1 << 30)
    return bytes(
        wasmtime.wat2wasm(
            f"""(module
  (func $d (export "{export}") (param i32) (result i32)
    (if (result i32) (i32.eqz (local.get 0)) (then (i32.const 0))
      (else (i32.add (i32.const 1) (call $d (i32.sub (local.get 0) (i32.const 1)))))))
  (func (export "salt") (result i32) (i32.const {salt})))"""
        )
    )


@pytest.fixture(scope="module")
def aot_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache directory whose AOT runtime objects are already built (as after a
    machine's first compile), so that a compile costs wasm2c and cc of the module."""
    from sandbox.wasm import aot
    from sandbox.wasm.module import load

    root = tmp_path_factory.mktemp("aot-cache")
    old = os.environ.get("KVM_SANDBOX_CACHE")
    os.environ["KVM_SANDBOX_CACHE"] = str(root)
    try:
        aot.compile_module(load(_module()))
    finally:
        if old is None:
            del os.environ["KVM_SANDBOX_CACHE"]
        else:
            os.environ["KVM_SANDBOX_CACHE"] = old
    return root


@pytest.fixture
def slow_cc(tmp_path: Path) -> Iterator[Path]:
    """A C compiler that takes COMPILE_SLEEP_S longer to compile a module's C."""
    path = tmp_path / "slow-cc"
    gcc = shutil.which("gcc")
    path.write_text(
        f'#!/bin/sh\ncase "$*" in *module.c*) sleep {COMPILE_SLEEP_S};; esac\nexec {gcc} "$@"\n'
    )
    path.chmod(0o755)
    yield path


def _info(client: httpx.Client, name: str) -> dict[str, Any]:
    info: dict[str, Any] = client.get(f"/functions/{name}", headers=AUTH).json()
    return info


def _wait_code(client: httpx.Client, name: str, timeout: float = 180) -> dict[str, Any]:
    """The function's `wasm` info once its compile has ended, either way."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        wasm: dict[str, Any] = _info(client, name)["wasm"]
        if wasm["code"] == "native" or wasm["compile_problem"]:
            return wasm
        time.sleep(0.1)
    raise AssertionError(f"{name}: the compile did not end in {timeout} s")


def _logs(host: Any, msg: str, name: str) -> list[dict[str, Any]]:
    return [
        r for r in host.logs() if r.get("msg", "").startswith(msg) and r.get("function") == name
    ]


def test_auto_answers_at_once_then_moves_the_pool_to_native_code(
    host_factory: Any, aot_cache: Path, slow_cc: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KVM_SANDBOX_CACHE", str(aot_cache))
    monkeypatch.setenv("CC", str(slow_cc))
    host = host_factory(default_warm=2)
    client = host.client()
    started = time.monotonic()
    r = deploy(client, "deep", _module(), kind="wasm", entry="depth", memory_mib=32)
    deployed_s = time.monotonic() - started
    assert r.status_code in (200, 201), r.text
    assert deployed_s < COMPILE_SLEEP_S, f"the deploy waited for the compile ({deployed_s:.1f} s)"
    # Meanwhile: the interpreter serves.
    assert _info(client, "deep")["wasm"] == {
        "tier": "auto",
        "code": "interpreter",
        "compile_problem": None,
    }
    assert invoke(client, "deep", 100).json()["result"] == 100
    r = invoke(client, "deep", 20000)
    assert r.status_code == 422 and error_of(r)["kind"] == "stack_exhausted"
    wasm = _wait_code(client, "deep")
    assert wasm["code"] == "native", wasm
    assert time.monotonic() - started >= COMPILE_SLEEP_S
    # Pooled interpreter sandboxes finish the call they are given, then are replaced:
    # at most one call per warm sandbox still runs in the interpreter.
    results = [invoke(client, "deep", 20000) for _ in range(6)]
    codes = [r.status_code for r in results]
    first_native = codes.index(200)
    assert first_native <= 2 and all(c == 200 for c in codes[first_native:]), codes
    assert all(r.json()["result"] == 20000 for r in results[first_native:])
    assert [error_of(r)["kind"] for r in results[:first_native]] == [
        "stack_exhausted"
    ] * first_native
    assert _logs(host, "Wasm function runs native code", "deep")
    # A new version starts in native code at once (the compiled guest is cached).
    r = deploy(client, "deep", _module(), kind="wasm", entry="depth", memory_mib=32)
    assert r.status_code in (200, 201), r.text


def test_a_failed_compile_leaves_the_function_on_the_interpreter(
    host_factory: Any, aot_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A module the C compiler refuses (a throw of an exnref, whose payload is beyond
    wasm2c's exnref: guests/aot/aot.h): the function runs in the interpreter, the
    reason is logged and shown."""
    monkeypatch.setenv("KVM_SANDBOX_CACHE", str(aot_cache))
    host = host_factory(default_warm=1)
    client = host.client()
    salt = secrets.randbelow(1 << 30)
    data = bytes(
        wasmtime.wat2wasm(
            f"""(module (tag $t (param exnref))
  (func (export "salt") (result i32) (i32.const {salt}))
  (func (export "boom") (throw $t (ref.null exn))))"""
        )
    )
    r = deploy(client, "odd", data, kind="wasm", entry="salt", memory_mib=32)
    assert r.status_code in (200, 201), r.text
    wasm = _wait_code(client, "odd")
    assert wasm["code"] == "interpreter"
    assert "payload over 256 bytes" in wasm["compile_problem"]
    assert invoke(client, "odd").json()["result"] == salt
    (record,) = _logs(host, "Wasm function stays on the interpreter", "odd")
    assert "payload over 256 bytes" in record["msg"]


def test_a_compile_past_its_time_limit_leaves_the_function_on_the_interpreter(
    host_factory: Any, aot_cache: Path, slow_cc: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KVM_SANDBOX_CACHE", str(aot_cache))
    monkeypatch.setenv("CC", str(slow_cc))
    host = host_factory(default_warm=1, aot_compile_timeout_s=2)
    client = host.client()
    started = time.monotonic()
    r = deploy(client, "slow", _module(), kind="wasm", entry="depth", memory_mib=32)
    assert r.status_code in (200, 201), r.text
    wasm = _wait_code(client, "slow")
    assert wasm["code"] == "interpreter"
    assert "timed out after 2 s" in wasm["compile_problem"]
    assert time.monotonic() - started < COMPILE_SLEEP_S + 30
    r = invoke(client, "slow", 20000)
    assert r.status_code == 422 and error_of(r)["kind"] == "stack_exhausted"
    assert invoke(client, "slow", 10).json()["result"] == 10
    assert _logs(host, "Wasm function stays on the interpreter", "slow")
