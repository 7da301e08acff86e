"""Python functions in the function host, over HTTP on loopback: deploy a .py module,
invoke its entry with JSON arguments in fresh state, an http-mode handler, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from host_support import AUTH, deploy, error_of, invoke

pytestmark = pytest.mark.requires_kvm

MODULE = b"""
import json

CALLS = []

def total(items, scale=1):
    CALLS.append(1)
    return {"sum": sum(items) * scale, "calls": len(CALLS), "raw": b"ok", "pair": (1, 2)}

def boom():
    raise KeyError("missing")

def spin():
    while True:
        pass

def handle(request):
    doc = {"method": request["method"], "path": request["path"], "len": len(request["body"])}
    return {"status": 201, "headers": {"content-type": "application/json"},
            "body": json.dumps(doc)}
"""


HOST_SETTINGS = {"default_warm": 1}  # the module's host (conftest.py)


def test_invoke_python_function_in_fresh_state(client: httpx.Client) -> None:
    r = deploy(client, "py-total", MODULE, kind="python", entry="total", memory_mib=256)
    assert r.status_code in (200, 201), r.text
    for _ in range(3):
        r = invoke(client, "py-total", [1, 2, 3])
        assert r.status_code == 200, r.text
        assert r.json()["result"] == {"sum": 6, "calls": 1, "raw": "b2s=", "pair": [1, 2]}
        assert r.json()["type"] == "json"


def test_python_errors_are_typed(client: httpx.Client) -> None:
    assert deploy(client, "py-boom", MODULE, kind="python", entry="boom").status_code in (200, 201)
    r = invoke(client, "py-boom")
    assert r.status_code == 422 and "KeyError" in error_of(r)["message"]
    r = deploy(client, "py-spin", MODULE, kind="python", entry="spin", timeout_s=0.5)
    assert r.status_code in (200, 201), r.text
    r = invoke(client, "py-spin")
    assert r.status_code == 504, r.text
    r = deploy(client, "py-none", MODULE, kind="python", entry="absent")
    assert r.status_code == 422 and error_of(r)["type"] == "EntryNotFound"
    r = deploy(client, "py-bad", b"def (:", kind="python", entry="x")
    assert r.status_code == 422 and error_of(r)["type"] == "BadModule"


def test_http_mode_handler(client: httpx.Client) -> None:
    r = deploy(client, "py-http", MODULE, kind="python", entry="handle", mode="http")
    assert r.status_code in (200, 201), r.text
    r = client.post("/functions/py-http/http/some/where", content=b"12345", headers=AUTH)
    assert r.status_code == 201, r.text
    assert r.json() == {"method": "POST", "path": "/some/where", "len": 5}


TOKEN_MODULE = b"""
import random
TOKEN = random.random()  # drawn when the module runs

def token():
    return TOKEN
"""


def test_a_restarted_host_reads_the_module_state_from_disk(
    host_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state after the module ran is saved in the cache directory
    (sandbox.python.statecache); a restarted host reads it instead of running the module
    again (the same TOKEN); a corrupt file is ignored (logged) and the module runs
    again; KVM_SANDBOX_PYTHON_CACHE=0 turns it off."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("KVM_SANDBOX_CACHE", str(cache))

    def token_of_a_new_host() -> float:
        host = host_factory()
        c = host.client()
        found = c.get("/functions/tok", headers=AUTH)
        if found.status_code == 404:
            r = deploy(c, "tok", TOKEN_MODULE, kind="python", entry="token")
            assert r.status_code == 201, r.text
        r = invoke(c, "tok")
        assert r.status_code == 200, r.text
        host.stop()  # waits for the state's background write
        assert host.proc.returncode == 0
        return float(r.json()["result"])

    first = token_of_a_new_host()
    (state,) = (cache / "python-states").glob("*.snap")
    assert token_of_a_new_host() == first  # read, not run again
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0x01
    state.write_bytes(bytes(data))
    second = token_of_a_new_host()
    assert second != first
    assert "ignoring the cached Python state" in (tmp_path / "host.log").read_text()
    assert token_of_a_new_host() == second  # saved again over the corrupt one
    monkeypatch.setenv("KVM_SANDBOX_PYTHON_CACHE", "0")
    assert token_of_a_new_host() != second
