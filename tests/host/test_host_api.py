"""The function host driven over HTTP on loopback (a real server in a subprocess):
deploy, invoke, update, delete, traps, timeouts, concurrency limits, HTTP-handler mode,
bad input of every kind, authentication, operations endpoints."""

from __future__ import annotations

import base64
import concurrent.futures
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from host_support import (
    AUTH,
    Guests,
    Host,
    deploy,
    error_of,
    invoke,
    stored_state,
    wait_for_pool,
)

pytestmark = pytest.mark.requires_kvm

MAX_BODY = 64 * 1024
MAX_UPLOAD = 1024 * 1024


HOST_SETTINGS = {  # the module's host (conftest.py)
    "max_body_bytes": MAX_BODY,
    "max_upload_bytes": MAX_UPLOAD,
    "default_warm": 1,
    "keep_versions": 0,  # no earlier versions kept: an update's old blob goes at once
}


@pytest.fixture(scope="module")
def demo_fns(client: httpx.Client, guests: Guests) -> dict[str, str]:
    """Demo-guest functions, one per entry the tests call."""
    entries = {
        "add": {},
        "echo": {},
        "echo-bytes": {"entry": "echo_bytes"},
        "echo-f64": {"entry": "echo_f64"},
        "counter": {},
        "hello": {},
        "noop": {},
        "fault": {"timeout_s": 0.3},
    }
    for name, extra in entries.items():
        manifest = {"entry": name.replace("-", "_"), **extra}
        r = deploy(client, name, guests.demo, **manifest)
        assert r.status_code in (200, 201), r.text
    return {name: name for name in entries}


# -- deploy, invoke, update, delete -----------------------------------------------------


def test_deploy_invoke_update_delete(client: httpx.Client, guests: Guests, host: Host) -> None:
    r = deploy(client, "calc", guests.add_k0, entry="add_k")
    assert r.status_code == 201, r.text
    info = r.json()
    assert info["version"] == 1 and info["signature"] == "add_k(i32, i32) -> i32"
    assert info["params"] == ["i32", "i32"] and info["returns"] == "i32"
    assert info["state"] == "ready"
    first_sha = info["sha256"]

    r = invoke(client, "calc", 2, 3)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["result"] == 5 and body["type"] == "i32"
    assert body["stdout"] == "" and body["stderr"] == "" and body["duration_ms"] > 0

    # Update with a new module: version 2, the new code runs, the old blob is gone.
    r = deploy(client, "calc", guests.add_k1, entry="add_k")
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 2 and r.json()["sha256"] != first_sha
    assert invoke(client, "calc", 2, 3).json()["result"] == 6
    _, blobs, _ = stored_state(host.data_dir)
    assert first_sha not in blobs and r.json()["sha256"] in blobs

    # Update the manifest only (JSON body): the module is kept.
    r = client.put(
        "/functions/calc",
        json={"entry": "hello", "max_concurrency": 2},
        headers=AUTH,
    )
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 3 and r.json()["limits"]["max_concurrency"] == 2
    r = invoke(client, "calc", "hi")
    assert r.json() == {**r.json(), "result": "hi", "stdout": "hello from K=1\n"}

    assert client.get("/functions/calc", headers=AUTH).json()["version"] == 3
    names = [f["name"] for f in client.get("/functions", headers=AUTH).json()["functions"]]
    assert "calc" in names

    r = client.delete("/functions/calc", headers=AUTH)
    assert r.status_code == 204
    assert client.get("/functions/calc", headers=AUTH).status_code == 404
    assert error_of(invoke(client, "calc", 1, 2))["type"] == "FunctionNotFound"
    assert client.delete("/functions/calc", headers=AUTH).status_code == 404
    records, blobs, tmp = stored_state(host.data_dir)
    assert "calc" not in records and tmp == []
    assert blobs == {rec["sha256"] for rec in records.values()}


def test_every_call_runs_in_fresh_state(client: httpx.Client, demo_fns: dict[str, str]) -> None:
    results = [invoke(client, "counter").json()["result"] for _ in range(6)]
    assert results == [1] * 6


def test_values_in_and_out(client: httpx.Client, demo_fns: dict[str, str]) -> None:
    assert invoke(client, "echo", "héllo ✓").json()["result"] == "héllo ✓"
    data = bytes(range(256))
    r = invoke(client, "echo-bytes", base64.b64encode(data).decode())
    assert r.json()["type"] == "bytes" and base64.b64decode(r.json()["result"]) == data
    assert invoke(client, "echo-f64", 1.5).json()["result"] == 1.5
    assert invoke(client, "echo-f64", "NaN").json()["result"] == "NaN"
    assert invoke(client, "echo-f64", "-Infinity").json()["result"] == "-Infinity"
    r = invoke(client, "hello", "host")
    assert (
        r.json()["result"] == "Hello, host!" and r.json()["stdout"] == "guest says: Hello, host!\n"
    )
    r = client.post("/functions/noop/invoke", headers=AUTH)  # no body: no arguments
    assert r.status_code == 200 and r.json()["result"] is None and r.json()["type"] == "void"


# -- traps and timeouts -----------------------------------------------------------------


def test_traps_are_typed_and_the_host_keeps_serving(
    client: httpx.Client, demo_fns: dict[str, str]
) -> None:
    for kind, expected in [
        ("null", "page_fault"),
        ("ud2", "invalid_opcode"),
        ("divzero", "divide_error"),
        ("stack_overflow", "stack_overflow"),
        ("bad_port", "bad_port"),
    ]:
        r = invoke(client, "fault", kind)
        assert r.status_code == 422, r.text
        error = error_of(r)
        assert error["type"] == "GuestTrap" and error["kind"] == expected
        assert error["function"] == "fault"
        # The same function serves the next request from fresh state.
        r = invoke(client, "fault", "abort")
        assert r.status_code == 422 and error_of(r)["type"] == "GuestAbort"
        assert "deliberate abort" in error_of(r)["message"]
        assert invoke(client, "add", 40, 2).json()["result"] == 42
    metrics = client.get("/metrics").text
    assert 'sandbox_host_traps_total{function="fault",kind="page_fault"} ' in metrics


def test_timeout_is_504_and_the_function_recovers(
    client: httpx.Client, demo_fns: dict[str, str]
) -> None:
    t0 = time.monotonic()
    r = invoke(client, "fault", "spin_forever")
    elapsed = time.monotonic() - t0
    assert r.status_code == 504, r.text
    assert error_of(r)["type"] == "CallTimeout"
    assert 0.3 <= elapsed < 2.0
    assert error_of(invoke(client, "fault", "abort"))["type"] == "GuestAbort"
    assert 'sandbox_host_timeouts_total{function="fault"} ' in client.get("/metrics").text


def test_concurrency_limit_answers_429_when_the_queue_is_full(
    client: httpx.Client,
    guests: Guests,
) -> None:
    r = deploy(
        client, "busy", guests.demo, entry="fault", max_concurrency=1, max_queue=1, timeout_s=1
    )
    assert r.status_code == 201, r.text
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        running = pool.submit(invoke, client, "busy", "spin_forever")
        wait_for_pool(client, "busy", busy=1)
        queued = pool.submit(invoke, client, "busy", "spin_forever")
        wait_for_pool(client, "busy", busy=1, queued=1)
        rejected = invoke(client, "busy", "spin_forever")
        assert rejected.status_code == 429, rejected.text
        assert error_of(rejected)["type"] == "QueueFull"
        assert rejected.headers["retry-after"] == "1"
        assert running.result().status_code == 504
        assert queued.result().status_code in (503, 504)  # ran out of time queued or running
    assert error_of(invoke(client, "busy", "abort"))["type"] == "GuestAbort"
    assert 'sandbox_host_rejected_total{function="busy"} 1' in client.get("/metrics").text
    client.delete("/functions/busy", headers=AUTH)


def test_concurrent_invocations_all_succeed(client: httpx.Client, demo_fns: dict[str, str]) -> None:
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: invoke(client, "add", i, i).json()["result"], range(64)))
    assert results == [2 * i for i in range(64)]


# -- HTTP-handler mode ------------------------------------------------------------------


@pytest.fixture(scope="module")
def web(client: httpx.Client, guests: Guests) -> str:
    r = deploy(
        client,
        "web",
        guests.http,
        mode="http",
        public=True,
        timeout_s=0.3,
        environment={"GREETING": "hi there"},
    )
    assert r.status_code in (200, 201), r.text
    r = deploy(client, "web-private", guests.http, mode="http")
    assert r.status_code in (200, 201), r.text
    return "web"


def test_http_mode_passes_the_request_and_returns_the_response(
    client: httpx.Client, web: str
) -> None:
    r = client.get("/functions/web/http/hello", params={"name": "bob"})
    assert r.status_code == 200 and r.text == "hello, bob"
    assert r.headers["content-type"] == "text/plain"
    r = client.post("/functions/web/http/a/b", params={"q": "1"}, content='dé"tails')
    assert r.status_code == 200
    assert r.json() == {"method": "POST", "path": "/a/b", "query": "q=1", "body": 'dé"tails'}
    r = client.delete("/functions/web/http")
    assert r.json()["method"] == "DELETE" and r.json()["path"] == "/"
    assert client.get("/functions/web/http/status/418").status_code == 418
    r = client.get("/functions/web/http/env/GREETING")
    assert r.status_code == 200 and r.text == "hi there"
    assert client.get("/functions/web/http/env/MISSING").status_code == 404


def test_http_mode_failures(client: httpx.Client, web: str) -> None:
    r = client.get("/functions/web/http/crash")
    assert r.status_code == 422 and error_of(r)["kind"] == "page_fault"
    r = client.get("/functions/web/http/spin")
    assert r.status_code == 504
    assert client.get("/functions/web/http/hello").text == "hello, world"
    # A function that answers a status outside 200-599 sent back a bad response.
    r = client.get("/functions/web/http/status/99")
    assert r.status_code == 422 and error_of(r)["type"] == "BadFunctionResponse"
    big = b"x" * (MAX_BODY + 1)
    assert client.put("/functions/web/http/upload", content=big).status_code == 413
    # Mode mismatch both ways.
    r = client.post("/functions/web/invoke", json={"args": []})
    assert r.status_code == 409 and error_of(r)["type"] == "WrongMode"


def test_http_mode_private_function_needs_the_token_which_it_never_sees(
    client: httpx.Client, web: str, demo_fns: dict[str, str]
) -> None:
    assert client.get("/functions/web-private/http/hello").status_code == 401
    r = client.get("/functions/web-private/http/x", headers=AUTH)
    assert r.status_code == 200 and "test-token" not in r.text
    assert client.get("/functions/add/http/x", headers=AUTH).status_code == 409


# -- bad input: 4xx with a clear message, nothing lost ----------------------------------


def test_bad_invocation_bodies(client: httpx.Client, demo_fns: dict[str, str]) -> None:
    url = "/functions/add/invoke"
    cases = [
        (b"{not json", 400, "InvalidJson"),
        (b"[1, 2]", 400, "BadRequest"),
        (b'{"args": 5}', 400, "BadRequest"),
        (b'{"args": [1, 2], "x": 1}', 400, "BadRequest"),
        (b'{"args": [1]}', 400, "ArgumentError"),
        (b'{"args": [1, "2"]}', 400, "ArgumentError"),
        (b'{"args": [1, 2.5]}', 400, "ArgumentError"),
        (b'{"args": [true, 2]}', 400, "ArgumentError"),
        (b'{"args": [2147483648, 0]}', 400, "ArgumentError"),
        (b"[" * 60_000, 400, "InvalidJson"),
    ]
    for body, status, kind in cases:
        r = client.post(url, content=body, headers=AUTH)
        assert r.status_code == status, (body[:40], r.text)
        error = error_of(r)
        assert error["type"] == kind, (body[:40], error)
    assert (
        "add(i32, i32) -> i32"
        in error_of(client.post(url, content=b'{"args":[1]}', headers=AUTH))["message"]
    )
    r = invoke(client, "echo-bytes", "not base64!")
    assert r.status_code == 400 and "base64" in error_of(r)["message"]
    assert invoke(client, "add", 1, 2).json()["result"] == 3


def test_oversized_bodies_are_413(
    client: httpx.Client, host: Host, demo_fns: dict[str, str]
) -> None:
    big = b'{"args": ["' + b"x" * MAX_BODY + b'"]}'
    r = client.post("/functions/echo/invoke", content=big, headers=AUTH)
    assert r.status_code == 413 and error_of(r)["type"] == "BodyTooLarge"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is counted as it comes
        yield b'{"args": ["'
        for _ in range(MAX_BODY // 4096 + 2):
            yield b"x" * 4096
        yield b'"]}'

    r = client.post("/functions/echo/invoke", content=chunks(), headers=AUTH)
    assert r.status_code == 413 and error_of(r)["type"] == "BodyTooLarge"
    r = deploy(client, "huge", b"\x7fELF" + b"\0" * MAX_UPLOAD)
    assert r.status_code == 413, r.text
    assert client.get("/functions/huge", headers=AUTH).status_code == 404
    assert invoke(client, "echo", "still here").json()["result"] == "still here"


def test_garbage_modules_and_bad_manifests_are_refused(
    client: httpx.Client,
    guests: Guests,
    host: Host,
) -> None:
    before = stored_state(host.data_dir)
    cases = [
        (b"garbage", {"entry": "add"}, 422, "InvalidModule"),
        (b"\x7fELF" + bytes(200), {"entry": "add"}, 422, "InvalidModule"),
        (guests.demo.read_bytes()[:5000], {"entry": "add"}, 422, "InvalidModule"),
        (guests.demo, {"entry": "nope"}, 422, "EntryNotFound"),
        (guests.demo, {"entry": "add", "mode": "http"}, 422, "BadEntrySignature"),
        (guests.demo, {"entry": "add", "memory_mib": 3}, 400, "InvalidManifest"),
        (guests.demo, {"entry": "add", "bogus": 1}, 400, "InvalidManifest"),
        (guests.demo, {"entry": "add", "timeout_s": 10_000}, 400, "InvalidManifest"),
        (guests.demo, {"entry": "add", "max_concurrency": 100_000}, 400, "InvalidManifest"),
        (guests.demo, {"entry": "add", "kind": "elf"}, 400, "InvalidManifest"),
        (guests.demo, {"entry": "add", "environment": {"1X": "v"}}, 400, "InvalidManifest"),
        (None, {"entry": "add"}, 400, "ModuleRequired"),
    ]
    for module, manifest, status, kind in cases:
        r = deploy(client, "rejected", module, **manifest)
        assert r.status_code == status, (manifest, r.text)
        assert error_of(r)["type"] == kind, (manifest, r.text)
    files = {"manifest": (None, "{not json"), "module": ("m", b"x")}
    r = client.put("/functions/rejected", files=files, headers=AUTH)
    assert r.status_code == 400 and error_of(r)["type"] == "InvalidManifest"
    r = client.put("/functions/rejected", files={"module": ("m", b"x")}, headers=AUTH)
    assert r.status_code == 400
    r = client.put(
        "/functions/rejected",
        content=b"raw",
        headers={**AUTH, "content-type": "application/octet-stream"},
    )
    assert r.status_code == 415
    assert client.get("/functions/rejected", headers=AUTH).status_code == 404
    assert stored_state(host.data_dir) == before  # nothing stored, nothing lost


def _raw_request(host: Host, request: bytes, body: bytes = b"") -> bytes:
    """The raw response to `request`. With a `body`, the request asks `Expect:
    100-continue` and the body goes only after the server's 100, as an HTTP client
    should (a client that sends its body anyway gets the early answer too: the host
    drops the rest of the body and closes lingering, test_host_unread_body.py)."""
    with socket.create_connection(("127.0.0.1", host.port), timeout=5) as s:
        s.sendall(request)
        data = b""
        if body:
            while b"\r\n\r\n" not in data and (chunk := s.recv(65536)):
                data += chunk
            if data.startswith(b"HTTP/1.1 100"):
                data = data.split(b"\r\n\r\n", 1)[1]
                s.sendall(body)
        while chunk := s.recv(65536):
            data += chunk
        return data


@pytest.mark.parametrize(
    "name",
    [
        "..",
        "../x",
        "..%2f..%2fetc%2fpasswd",
        "%2e%2e",
        "Upper",
        "a.b",
        "-x",
        "a" * 64,
        "a%00b",
        "x%2fy",
    ],
)
def test_path_traversal_and_bad_names_are_refused(
    client: httpx.Client,
    guests: Guests,
    host: Host,
    name: str,
) -> None:
    before = stored_state(host.data_dir)
    body = guests.demo.read_bytes()
    boundary = "b0undary"
    disposition = "Content-Disposition: form-data; name="
    form = (
        (
            f'--{boundary}\r\n{disposition}"manifest"\r\n\r\n{{"entry": "add"}}\r\n'
            f'--{boundary}\r\n{disposition}"module"; filename="m"\r\n\r\n'
        ).encode()
        + body
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = (
        f"PUT /functions/{name} HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH['Authorization']}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(form)}\r\n"
        "Expect: 100-continue\r\nConnection: close\r\n\r\n"
    ).encode()
    status = int(_raw_request(host, head, form).split(b" ", 2)[1])
    assert 400 <= status < 500
    assert stored_state(host.data_dir) == before
    parent = host.data_dir.parent
    assert not (parent / "etc").exists() and not list(parent.glob("*.json"))
    get = f"GET /functions/{name}/invoke HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    assert 400 <= int(_raw_request(host, get).split(b" ", 2)[1]) < 500


def test_tokens(client: httpx.Client, guests: Guests, demo_fns: dict[str, str]) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}):
        for method, url in [
            ("GET", "/functions"),
            ("GET", "/functions/add"),
            ("DELETE", "/functions/add"),
        ]:
            r = client.request(method, url, headers=headers)
            assert r.status_code == 401, (method, url, headers)
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert error_of(r)["type"] == "Unauthorized"
        files = {"manifest": (None, '{"entry": "add"}'), "module": ("m", guests.demo.read_bytes())}
        assert client.put("/functions/x", files=files, headers=headers).status_code == 401
        r = client.put("/functions/x", json={"entry": "add"}, headers=headers)
        assert r.status_code == 401
        # Invocation of a private (or unknown) function: 401, never 404.
        assert invoke(client, "add", 1, 2, headers=headers).status_code == 401
        assert invoke(client, "no-such-fn", headers=headers).status_code == 401
    assert (
        "wrong"
        in error_of(invoke(client, "add", 1, 2, headers={"Authorization": "Bearer x"}))["message"]
    )
    assert invoke(client, "no-such-fn").status_code == 404
    # A public function needs no token.
    assert deploy(client, "pub-add", guests.demo, entry="add", public=True).status_code == 201
    assert invoke(client, "pub-add", 1, 2, headers={}).json()["result"] == 3
    assert client.get("/functions/x", headers=AUTH).status_code == 404


# -- operations -------------------------------------------------------------------------


def test_health_ready_metrics_openapi(client: httpx.Client, demo_fns: dict[str, str]) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    invoke(client, "add", 1, 1)
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    for family in [
        "sandbox_host_http_requests_total",
        "sandbox_host_http_request_duration_seconds_bucket",
        "sandbox_host_invocations_total",
        "sandbox_host_invocation_duration_seconds_count",
        "sandbox_host_pool_size",
        "sandbox_host_pool_idle",
        "sandbox_host_queued",
        "sandbox_host_functions",
    ]:
        assert f"# TYPE {family.removesuffix('_bucket').removesuffix('_count')} " in text, family
    assert 'sandbox_host_invocations_total{function="add",outcome="ok"} ' in text
    assert 'route="/functions/{name}/invoke"' in text
    spec = client.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    for path in [
        "/functions",
        "/functions/{name}",
        "/functions/{name}/invoke",
        "/healthz",
        "/metrics",
    ]:
        assert path in spec["paths"], path
    r = client.get("/nope")
    assert r.status_code == 404 and error_of(r)["type"] == "NotFound"
    r = client.post("/healthz")
    assert r.status_code == 405 and error_of(r)["type"] == "MethodNotAllowed"


def test_function_info_shows_pool_and_limits(
    client: httpx.Client, demo_fns: dict[str, str]
) -> None:
    info = client.get("/functions/add", headers=AUTH).json()
    assert info["spec"]["entry"] == "add" and info["spec"]["kind"] == "native"
    assert info["limits"] == {"timeout_s": 10.0, "max_concurrency": 4, "max_queue": 64, "warm": 1}
    assert info["pool"]["size"] >= 1 and info["pool"]["busy"] == 0


def test_access_log_is_structured(host: Host, client: httpx.Client) -> None:
    client.get("/healthz")
    time.sleep(0.1)
    lines = [r for r in host.logs() if r.get("logger") == "sandbox.host.access"]
    assert lines and {"method", "path", "status", "duration_ms", "ts", "level"} <= set(lines[-1])


def test_no_errors_were_logged(host: Host) -> None:
    """Runs last: nothing above made the host log an error (an unhandled exception, a
    failed background task)."""
    errors = [r for r in host.logs() if r.get("level") not in ("info", "debug", "warning")]
    assert errors == []


def test_support_builds_guests(guests: Guests) -> None:
    """The guests the host tests deploy are built (and differ where they must)."""
    assert guests.demo.is_file() and guests.http.is_file()
    assert guests.add_k0.read_bytes() != guests.add_k1.read_bytes()
