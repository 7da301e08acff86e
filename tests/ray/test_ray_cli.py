"""`python -m sandbox serve --ray ADDRESS --store DIR` against the session's cluster: it
starts the host on Ray Serve, serves a deploy and an invocation, and stops on SIGTERM.
(Runs before test_ray_serve.py, and shuts its Serve instance down when it stops.)"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox.guests import BUNDLED_DIR
from sandbox.ray.catalog import ClusterStore

ray = pytest.importorskip("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_ray_starts_serves_and_stops(cluster: Any, tmp_path: Path) -> None:
    port, store = _free_port(), tmp_path / "store"
    cmd = [sys.executable, "-m", "sandbox", "serve", "--ray", cluster.address,
           "--store", str(store), "--port", str(port), "--max-replicas", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        auth = {"authorization": f"Bearer {ClusterStore(store).token()}"}
        files = {
            "manifest": (None, json.dumps({"entry": "add"}), "application/json"),
            "module": ("demo.elf", (BUNDLED_DIR / "demo.elf").read_bytes()),
        }
        r = httpx.put(f"{url}/functions/add", files=files, headers=auth, timeout=30)
        assert r.status_code == 201, r.text
        r = httpx.post(f"{url}/functions/add/invoke", json={"args": [2, 3]}, headers=auth)
        assert r.json()["result"] == 5
        assert ClusterStore(store).entries()["add"].revision == 1  # published
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        assert code == 0, proc.stderr.read() if proc.stderr else ""


def test_serve_ray_refuses_a_missing_store(cluster: Any) -> None:
    cmd = [sys.executable, "-m", "sandbox", "serve", "--ray", cluster.address]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--store" in done.stderr


def test_store_without_ray_is_refused(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "sandbox", "serve", "--store", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--ray" in done.stderr


def test_serve_ray_at_an_address_where_nothing_answers_fails_at_once(tmp_path: Path) -> None:
    """ray.init retries an unreachable address for minutes: the CLI checks it first."""
    address = f"127.0.0.1:{_free_port()}"
    cmd = [sys.executable, "-m", "sandbox", "serve", "--ray", address, "--store", str(tmp_path)]
    started = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 30
    assert done.returncode == 1
    assert f"nothing answers at {address}" in done.stderr and "Traceback" not in done.stderr


def test_the_pool_refuses_an_address_where_nothing_answers() -> None:
    from sandbox.ray.pool import connect

    address = f"127.0.0.1:{_free_port()}"
    with pytest.raises(ConnectionError, match=f"nothing answers at {address}"):
        connect(address)
