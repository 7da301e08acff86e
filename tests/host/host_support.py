"""Shared machinery of the function-host tests (tests/host/): the real server started as
a subprocess on a loopback port, the guests the tests deploy, and small helpers. The
fixtures built from them are in tests/host/conftest.py; no tests here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from support import ROOT

TOKEN = "test-token-6f1c2a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HTTP_EXAMPLE = ROOT / "sandbox" / "host" / "examples" / "http_echo.c"

# add_k(a, b) = a + b + K: two builds with different K are two different modules.
ADD_K_SOURCE = textwrap.dedent(
    """\
    #include "sbx.h"
    SBX_EXPORT(add_k, SBX_TAG_I32, SBX_TAG_I32, SBX_TAG_I32) {
        sbx_ret_i32(ret, sbx_arg_i32(args, 0) + sbx_arg_i32(args, 1) + K);
    }
    SBX_EXPORT(hello, SBX_TAG_STR, SBX_TAG_STR) {
        sbx_print("hello from K=%d\\n", K);
        sbx_ret_str(ret, sbx_arg_str(args, 0, 0), strlen(sbx_arg_str(args, 0, 0)));
    }
    """
)


@dataclass
class Guests:
    demo: Path
    http: Path
    add_k0: Path
    add_k1: Path


@dataclass
class Host:
    """A host server process started by `start_host`."""

    proc: subprocess.Popen[bytes]
    data_dir: Path
    log_path: Path
    port: int = 0
    _clients: list[httpx.Client] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kwargs: Any) -> httpx.Client:
        c = httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 15.0), **kwargs)
        self._clients.append(c)
        return c

    def logs(self) -> list[dict[str, Any]]:
        """The host's log records so far; a last line still being written is left out."""
        lines = []
        text = self.log_path.read_text(errors="replace")
        # Split on "\n" only: str.splitlines() also splits on U+2028, U+0085..., which
        # JSON written with ensure_ascii=False may hold inside a string (a request path).
        for line in text[: text.rfind("\n") + 1].split("\n")[:-1]:
            try:
                lines.append(json.loads(line))
            except ValueError:
                lines.append({"msg": line})
        return lines

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        for c in self._clients:
            c.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill9()


def launch_host(
    data_dir: Path, log_path: Path, *, cpus: set[int] | None = None, **settings: object
) -> Host:
    """Starts `python -m sandbox.host` on a free loopback port (settings become
    SANDBOX_HOST_* variables; `cpus`: the CPUs it may run on) and returns it as soon as
    it listens (its functions may still be loading: /readyz 503)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_HOST_")}
    env.update({"SANDBOX_HOST_TOKEN": TOKEN, "SANDBOX_HOST_LOG_JSON": "true"})
    for key, value in settings.items():
        env[f"SANDBOX_HOST_{key.upper()}"] = (
            str(value).lower() if isinstance(value, bool) else str(value)
        )
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sandbox.host", "--port", "0", "--data-dir", str(data_dir)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=env,
            start_new_session=True,  # signals to the test run do not reach it
            preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
        )
    host = Host(proc, data_dir, log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the host exited with {proc.returncode}:\n{log_path.read_text()}")
        listening = [
            r for r in host.logs() if r.get("msg") == "listening" and r.get("pid") == proc.pid
        ]
        if listening:
            host.port = int(listening[-1]["port"])
            return host
        time.sleep(0.01)
    host.kill9()
    raise RuntimeError(f"the host did not listen:\n{log_path.read_text()}")


def start_host(
    data_dir: Path, log_path: Path, *, cpus: set[int] | None = None, **settings: object
) -> Host:
    """`launch_host`, then waits until /readyz answers 200."""
    host = launch_host(data_dir, log_path, cpus=cpus, **settings)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if host.proc.poll() is not None:
            raise RuntimeError(
                f"the host exited with {host.proc.returncode}:\n{log_path.read_text()}"
            )
        try:
            if httpx.get(host.url + "/readyz", timeout=2).status_code == 200:
                return host
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    host.kill9()
    raise RuntimeError(f"the host did not become ready:\n{log_path.read_text()}")


def deploy(
    client: httpx.Client, name: str, module: Path | bytes | None, **manifest: object
) -> httpx.Response:
    """PUT /functions/{name} as multipart (manifest + module file)."""
    files: dict[str, Any] = {"manifest": (None, json.dumps(manifest), "application/json")}
    if module is not None:
        data = module if isinstance(module, bytes) else module.read_bytes()
        files["module"] = ("module.elf", data, "application/octet-stream")
    return client.put(f"/functions/{name}", files=files, headers=AUTH)


def invoke(client: httpx.Client, name: str, *args: object, **kwargs: Any) -> httpx.Response:
    headers = kwargs.pop("headers", AUTH)
    return client.post(f"/functions/{name}/invoke", json={"args": list(args)}, headers=headers)


def wait_for_pool(
    client: httpx.Client, name: str, *, busy: int, queued: int = 0, timeout: float = 10
) -> None:
    """Waits until function `name` has `busy` sandboxes running and `queued` requests
    waiting (so that a test acts once its requests have really arrived)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pool = client.get(f"/functions/{name}", headers=AUTH).json()["pool"]
        if pool["busy"] == busy and pool["queued"] == queued:
            return
        time.sleep(0.01)
    raise AssertionError(f"{name}: pool never reached busy={busy} queued={queued}: {pool}")


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The typed error body, checked to be of the documented shape."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["type"], str) and isinstance(body["error"]["message"], str)
    error: dict[str, Any] = body["error"]
    return error


def stored_state(data_dir: Path) -> tuple[dict[str, dict[str, Any]], set[str], list[str]]:
    """(records by name, blob names, files left in tmp/) of a data dir at rest."""
    records = {
        p.stem: json.loads(p.read_text()) for p in sorted((data_dir / "functions").glob("*.json"))
    }
    blobs = {p.name for p in (data_dir / "blobs").iterdir()}
    tmp = [p.name for p in (data_dir / "tmp").iterdir()]
    return records, blobs, tmp
