"""The function host's durability and lifecycle, with real server processes: functions
survive a restart; kill -9 in the middle of an upload, or at a random moment of a stream
of deployments, never leaves a torn or half-registered function and loses nothing that
was acknowledged; SIGTERM drains in-flight requests; a second SIGINT exits at once."""

from __future__ import annotations

import hashlib
import json
import random
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from host_support import (
    AUTH,
    Guests,
    deploy,
    invoke,
    stored_state,
    wait_for_pool,
)

pytestmark = pytest.mark.requires_kvm


def check_consistent(data_dir: Path) -> dict[str, dict[str, Any]]:
    """Every record is whole and refers to a blob of the right content (its earlier
    versions, kept for rollback, too); no blob is unreferenced; tmp/ is empty (checked
    with the host stopped, after a restart)."""
    records, blobs, tmp = stored_state(data_dir)
    assert tmp == []
    referenced = set()
    for name, rec in records.items():
        assert rec["name"] == name
        for version in [rec, *rec.get("previous", [])]:
            blob = (data_dir / "blobs" / version["sha256"]).read_bytes()
            assert hashlib.sha256(blob).hexdigest() == version["sha256"]
            assert len(blob) == version["size"]
            referenced.add(version["sha256"])
    assert blobs == referenced
    return records


def test_functions_survive_a_restart(host_factory: Any, guests: Guests) -> None:
    host = host_factory()
    c = host.client()
    assert deploy(c, "calc", guests.add_k0, entry="add_k").status_code == 201
    assert deploy(c, "calc", guests.add_k1, entry="add_k", max_queue=7).status_code == 200
    assert deploy(c, "web", guests.http, mode="http", public=True).status_code == 201
    assert deploy(c, "gone", guests.demo, entry="add").status_code == 201
    assert c.delete("/functions/gone", headers=AUTH).status_code == 204
    before = {f["name"]: f for f in c.get("/functions", headers=AUTH).json()["functions"]}
    host.stop()
    assert host.proc.returncode == 0
    check_consistent(host.data_dir)

    host = host_factory(warm_on_start=False)
    c = host.client()
    after = {f["name"]: f for f in c.get("/functions", headers=AUTH).json()["functions"]}
    assert set(after) == {"calc", "web"}
    for name in after:
        for key in ("version", "sha256", "spec", "created_at", "updated_at", "signature"):
            assert after[name][key] == before[name][key], (name, key)
    assert after["calc"]["version"] == 2 and after["calc"]["limits"]["max_queue"] == 7
    assert invoke(c, "calc", 2, 3).json()["result"] == 6
    assert c.get("/functions/web/http/hello").text == "hello, world"
    assert c.get("/functions/gone", headers=AUTH).status_code == 404


def _multipart_head(port: int, name: str, size: int, boundary: str) -> bytes:
    return (
        f"PUT /functions/{name} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: {AUTH['Authorization']}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {size}\r\n\r\n"
    ).encode()


def test_kill_9_in_the_middle_of_an_upload(host_factory: Any, guests: Guests) -> None:
    host = host_factory()
    c = host.client()
    assert deploy(c, "keep", guests.demo, entry="add").status_code == 201
    assert deploy(c, "victim", guests.add_k0, entry="add_k").status_code == 201
    records_before = check_consistent(host.data_dir)

    # Half of an update of "victim" and half of a new function, sent slowly, then kill -9.
    module = guests.add_k1.read_bytes() + bytes(400_000)
    boundary = "slowb0undary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="manifest"\r\n\r\n'
            f'{{"entry": "add_k"}}\r\n--{boundary}\r\nContent-Disposition: form-data; '
            f'name="module"; filename="m.elf"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        + module
        + f"\r\n--{boundary}--\r\n".encode()
    )
    socks = []
    for name in ("victim", "newcomer"):
        s = socket.create_connection(("127.0.0.1", host.port))
        s.sendall(_multipart_head(host.port, name, len(body), boundary))
        for i in range(0, len(body) // 2, 50_000):
            s.sendall(body[i : i + 50_000])
            time.sleep(0.01)
        socks.append(s)
    time.sleep(0.2)
    host.kill9()
    for s in socks:
        s.close()

    host = host_factory()
    c = host.client()
    assert check_consistent(host.data_dir) == records_before
    assert c.get("/functions/newcomer", headers=AUTH).status_code == 404
    assert c.get("/functions/victim", headers=AUTH).json()["version"] == 1
    assert invoke(c, "victim", 2, 3).json()["result"] == 5
    assert invoke(c, "keep", 2, 3).json()["result"] == 5


def test_kill_9_at_random_moments_of_a_deployment_stream(host_factory: Any, guests: Guests) -> None:
    rng = random.Random(7)
    modules = [guests.add_k0, guests.add_k1]
    acked: dict[str, int] = {}  # name -> highest acknowledged version
    data_dir = None
    for round_ in range(3):
        host = host_factory(data_dir)
        data_dir = host.data_dir
        c = host.client(timeout=5)
        stop = threading.Event()

        def stream(c: httpx.Client = c, stop: threading.Event = stop, round_: int = round_) -> None:
            i = 0
            while not stop.is_set():
                name = "f" if i % 2 == 0 else f"g{round_}-{i}"
                try:
                    r = deploy(c, name, modules[i % 2], entry="add_k", warm=0)
                except httpx.HTTPError:
                    return
                if r.status_code in (200, 201):
                    acked[name] = max(acked.get(name, 0), r.json()["version"])
                i += 1

        thread = threading.Thread(target=stream)
        thread.start()
        time.sleep(rng.uniform(0.3, 0.8))
        host.kill9()
        stop.set()
        thread.join(10)
    assert acked, "nothing was deployed before the kills"

    host = host_factory(data_dir)
    c = host.client()
    records = check_consistent(host.data_dir)
    listed = {f["name"]: f for f in c.get("/functions", headers=AUTH).json()["functions"]}
    assert set(listed) == set(records)
    for name, version in acked.items():  # nothing acknowledged was lost
        assert name in listed, name
        assert listed[name]["version"] >= version
    for name, info in listed.items():  # and everything listed runs
        assert info["state"] == "ready"
        k = 0 if info["sha256"] == hashlib.sha256(modules[0].read_bytes()).hexdigest() else 1
        assert invoke(c, name, 2, 3).json()["result"] == 5 + k


def test_sigterm_drains_in_flight_requests(host_factory: Any, guests: Guests) -> None:
    host = host_factory(drain_timeout_s=5)
    c = host.client()
    assert deploy(c, "spin", guests.demo, entry="spin").status_code == 201
    n = 600_000_000  # ~0.5 s of guest work
    result: list[httpx.Response] = []
    t = threading.Thread(target=lambda: result.append(invoke(c, "spin", n)))
    t.start()
    wait_for_pool(c, "spin", busy=1)
    host.signal(signal.SIGTERM)
    t.join(10)
    assert result and result[0].status_code == 200, result
    assert isinstance(result[0].json()["result"], int)
    assert host.wait(10) == 0
    messages = [r.get("msg") for r in host.logs()]
    assert "draining" in messages and "pools closed" in messages
    with pytest.raises(httpx.TransportError):
        httpx.get(host.url + "/healthz", timeout=1)


def test_drain_limit_cancels_what_is_left(host_factory: Any, guests: Guests) -> None:
    host = host_factory(drain_timeout_s=0.5)
    c = host.client()
    assert deploy(c, "forever", guests.demo, entry="fault", timeout_s=30).status_code == 201
    t = threading.Thread(target=lambda: _swallow(invoke, c, "forever", "spin_forever"))
    t.start()
    wait_for_pool(c, "forever", busy=1)
    t0 = time.monotonic()
    host.signal(signal.SIGTERM)
    assert host.wait(10) == 0
    assert time.monotonic() - t0 < 5  # not the 30 s of the call
    t.join(10)


def test_second_sigint_forces_exit(host_factory: Any, guests: Guests) -> None:
    host = host_factory(drain_timeout_s=30)
    c = host.client()
    assert deploy(c, "forever", guests.demo, entry="fault", timeout_s=30).status_code == 201
    t = threading.Thread(target=lambda: _swallow(invoke, c, "forever", "spin_forever"))
    t.start()
    wait_for_pool(c, "forever", busy=1)
    host.signal(signal.SIGINT)
    time.sleep(0.3)
    assert host.proc.poll() is None  # draining: waiting for the call
    t0 = time.monotonic()
    host.signal(signal.SIGINT)
    assert host.wait(10) == 130
    assert time.monotonic() - t0 < 3
    t.join(10)


def _swallow(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except httpx.HTTPError:
        pass


def test_record_files_are_plain_json(host_factory: Any, guests: Guests) -> None:
    host = host_factory()
    assert deploy(host.client(), "calc", guests.add_k0, entry="add_k").status_code == 201
    record = json.loads((host.data_dir / "functions" / "calc.json").read_text())
    assert record["format"] == 1 and record["spec"]["entry"] == "add_k"
    assert (host.data_dir / "token").exists() is False  # the token came from the environment
