"""Wasm functions in the function host, over HTTP on loopback: deploy a module, invoke its
exports in fresh state (numbers in, numbers out; traps as typed errors), an http-mode WASI
command (request on stdin, response on stdout), restart persistence, bad modules."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from host_support import AUTH, ROOT, deploy, error_of, invoke, start_host

wasmtime = pytest.importorskip("wasmtime")
pytestmark = pytest.mark.requires_kvm

MODULE = """(module
  (memory 1)
  (global $n (mut i32) (i32.const 0))
  (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
  (func (export "scale") (param f64 i64) (result f64)
    (f64.mul (local.get 0) (f64.convert_i64_s (local.get 1))))
  (func (export "bump") (result i32)
    (global.set $n (i32.add (global.get $n) (i32.const 1))) (global.get $n))
  (func (export "oob") (result i32) (i32.load (i32.const 70000)))
  (func (export "pair") (result i32 i32) (i32.const 1) (i32.const 2)))"""


HOST_SETTINGS = {"default_warm": 1}  # the module's host (conftest.py)


@pytest.fixture(scope="module")
def module() -> bytes:
    return bytes(wasmtime.wat2wasm(MODULE))


def test_invoke_wasm_exports_in_fresh_state(client: httpx.Client, module: bytes) -> None:
    for entry in ("add", "scale", "bump", "oob"):
        r = deploy(client, f"w-{entry}", module, kind="wasm", entry=entry, memory_mib=32)
        assert r.status_code in (200, 201), r.text
    r = invoke(client, "w-add", 40, 2)
    assert r.status_code == 200 and r.json()["result"] == 42 and r.json()["type"] == "i32"
    assert invoke(client, "w-scale", 1.5, 4).json()["result"] == 6.0
    assert [invoke(client, "w-bump").json()["result"] for _ in range(3)] == [1, 1, 1]
    info = client.get("/functions/w-add", headers=AUTH).json()
    assert info["params"] == ["i32", "i32"] and info["returns"] == "i32"


def test_wasm_errors_are_typed(client: httpx.Client, module: bytes) -> None:
    r = invoke(client, "w-oob")
    assert r.status_code == 422
    err = error_of(r)
    assert err["type"] == "GuestTrap" and err["kind"] == "memory_oob"
    assert "out of bounds memory access" in err["message"]
    assert invoke(client, "w-add", 1, 2).json()["result"] == 3  # the host keeps serving
    r = invoke(client, "w-add", 1, "x")
    assert r.status_code == 400
    r = deploy(client, "w-bad", b"\0asm garbage", kind="wasm", entry="add")
    assert r.status_code == 422 and error_of(r)["type"] == "InvalidModule"
    r = deploy(client, "w-pair", module, kind="wasm", entry="pair")
    assert r.status_code == 422 and error_of(r)["type"] == "BadEntrySignature"
    r = deploy(client, "w-none", module, kind="wasm", entry="nope")
    assert r.status_code == 422 and error_of(r)["type"] == "EntryNotFound"
    for name in ("w-bad", "w-pair", "w-none"):
        assert client.get(f"/functions/{name}", headers=AUTH).status_code == 404


@pytest.mark.skipif(shutil.which("clang") is None, reason="clang is needed for wasm32-wasi")
def test_http_mode_wasi_command(client: httpx.Client, tmp_path: Path) -> None:
    wasm = tmp_path / "http.wasm"
    proc = subprocess.run(
        [
            "clang",
            "--target=wasm32-wasi",
            "-O2",
            str(ROOT / "tests" / "wasm" / "programs" / "wasi_http.c"),
            "-o",
            str(wasm),
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"clang cannot build for wasm32-wasi: {proc.stderr[:200]}")
    r = deploy(
        client,
        "w-http",
        wasm,
        kind="wasm",
        mode="http",
        entry="_start",
        memory_mib=64,
        environment={"GREETING": "hi"},
    )
    assert r.status_code in (200, 201), r.text
    r = client.post("/functions/w-http/http/some/where", content=b"12345", headers=AUTH)
    assert r.status_code == 201, r.text
    assert r.text.startswith("path=/some/where bytes=") and r.text.endswith(" greeting=hi")
    r = client.post("/functions/w-http/http/fail", content=b"", headers=AUTH)
    assert r.status_code == 422 and "asked to fail" in error_of(r)["message"]
    r = client.get("/functions/w-http/http/again", headers=AUTH)
    assert r.status_code == 201 and "path=/again" in r.text


def test_wasm_functions_survive_a_restart(tmp_path: Path, module: bytes) -> None:
    server = start_host(tmp_path / "data", tmp_path / "host.log")
    try:
        c = server.client()
        assert deploy(c, "w-keep", module, kind="wasm", entry="add").status_code == 201
    finally:
        server.stop()
    server = start_host(tmp_path / "data", tmp_path / "host2.log")
    try:
        r = invoke(server.client(), "w-keep", 2, 3)
        assert r.status_code == 200 and r.json()["result"] == 5
    finally:
        server.stop()


PRINTER = """(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "to stdout\\n")
  (data (i32.const 200) "to stderr\\n")
  ;; iovecs at 0 (stdout) and 16 (stderr); bytes written at 32
  (data (i32.const 0) "\\64\\00\\00\\00\\0a\\00\\00\\00")
  (data (i32.const 16) "\\c8\\00\\00\\00\\0a\\00\\00\\00")
  (func (export "speak") (result i32)
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 32)))
    (drop (call $fd_write (i32.const 2) (i32.const 16) (i32.const 1) (i32.const 32)))
    (i32.const 7)))"""


def test_invoke_reports_wasi_output(client: httpx.Client) -> None:
    module = bytes(wasmtime.wat2wasm(PRINTER))
    assert deploy(client, "w-speak", module, kind="wasm", entry="speak").status_code == 201
    for _ in range(2):  # each request's own output, not the last one's too
        doc = invoke(client, "w-speak").json()
        assert (doc["result"], doc["stdout"], doc["stderr"]) == (7, "to stdout\n", "to stderr\n")
