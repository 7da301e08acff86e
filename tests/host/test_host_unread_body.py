"""Requests the host answers before reading their body (refused from the head: a bad
name, no credentials, a wrong content type, a Content-Length over the limit), sent by
raw-socket clients that write the whole body before reading the reply, without
`Expect: 100-continue` (as curl and Python's http.client do): the reply arrives intact,
never lost to a TCP reset; the unread rest of a body is discarded within
max_upload_bytes and discard_timeout_s; an endless or trickling sender is cut off. A
real server on loopback; every loop is bounded in count and time."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import httpx
from host_support import AUTH

MAX_UPLOAD = 2 * 1024 * 1024
SETTINGS: dict[str, Any] = {"max_body_bytes": 64 * 1024, "max_upload_bytes": MAX_UPLOAD}


def _head(path: str, length: int | None, *, close: bool, auth: bool = True, **extra: str) -> bytes:
    lines = [f"PUT {path} HTTP/1.1", "Host: x"]
    if auth:
        lines.append(f"Authorization: {AUTH['Authorization']}")
    lines.append("Content-Type: " + extra.pop("ctype", "multipart/form-data; boundary=b0undary"))
    lines.append(
        f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    )
    if close:
        lines.append("Connection: close")
    if "expect" in extra:
        lines.append("Expect: " + extra.pop("expect"))
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _reply(s: socket.socket, timeout: float = 10) -> tuple[int, dict[str, Any]]:
    """Reads one response (to the end of the stream if it says `Connection: close`,
    else by its Content-Length): its status and JSON body. A reset on the way raises."""
    s.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, f"closed before a full response head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line)
    length = int(headers[b"content-length"])
    to_eof = headers.get(b"connection") == b"close"
    while (to_eof or len(body) < length) and (chunk := s.recv(65536)):
        body += chunk
    assert len(body) == length, (head, body)
    return int(head.split(b" ", 2)[1]), json.loads(body)


# Requests refused from their head, with a body of ~1 MB: (path, head options, status, type).
REFUSED: list[tuple[str, dict[str, Any], int, str]] = [
    ("/functions/Upper", {}, 400, "InvalidName"),
    ("/functions/a.b", {}, 400, "InvalidName"),
    ("/functions/fine", {"auth": False}, 401, "Unauthorized"),
    ("/functions/fine", {"ctype": "application/octet-stream"}, 415, "UnsupportedMediaType"),
    ("/functions/..%2f..%2fetc", {}, 413, "BodyTooLarge"),  # not an upload path: 64 KiB
]


def test_a_refused_upload_sent_whole_without_expect_gets_its_reply(host_factory: Any) -> None:
    """20 uploads of ~1 MB (below max_upload_bytes) to names refused from the head,
    each written whole before the reply is read: every reply arrives with its JSON
    error. With `Connection: close` the stream then ends cleanly (no reset); without,
    the same connection goes on to serve the next request."""
    host = host_factory(**SETTINGS)
    body = b"x" * 1_000_000
    for i in range(20):
        path, options, status, kind = REFUSED[i % len(REFUSED)]
        close = i % 2 == 0
        with socket.create_connection(("127.0.0.1", host.port), timeout=10) as s:
            s.sendall(_head(path, len(body), close=close, **options) + body)
            got, error = _reply(s)
            assert (got, error["error"]["type"]) == (status, kind), (i, path, error)
            if not close and status != 413:  # (a 413 closes) the body was dropped: the
                # next request on the connection is read as one
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert _reply(s) == (200, {"status": "ok"})
    # Asked for 100-continue and answered instead: the body may never come, so the
    # connection ends after the reply, without waiting for discard_timeout_s (10 s).
    with socket.create_connection(("127.0.0.1", host.port), timeout=10) as s:
        s.sendall(_head("/functions/Upper", len(body), close=False, expect="100-continue"))
        t0 = time.monotonic()
        assert _reply(s)[0] == 400
        assert s.recv(1) == b"" and time.monotonic() - t0 < 2
    assert httpx.get(host.url + "/healthz").status_code == 200


def test_a_trickling_body_is_cut_off_and_frees_its_connection(host_factory: Any) -> None:
    """The head, then a byte now and then (never a pause of body_timeout_s): the reply
    comes at once, the rest of the body is discarded for discard_timeout_s at most, then
    the connection is closed. Meanwhile other requests are served, and afterwards the
    connection's place under max_connections is free again."""
    host = host_factory(**SETTINGS, discard_timeout_s=1.0, body_timeout_s=5.0, max_connections=2)
    with socket.create_connection(("127.0.0.1", host.port), timeout=10) as slow:
        slow.sendall(_head("/functions/Upper", 1_000_000, close=False) + b"x" * 1000)
        answered = time.monotonic()
        status, error = _reply(slow)
        assert (status, error["error"]["type"]) == (400, "InvalidName")
        other = httpx.get(host.url + "/healthz", headers={"Connection": "close"})
        assert other.status_code == 200  # the second of two connections, served meanwhile
        cut = _trickle_until_cut(slow, b"x" * 10, every=0.05, rounds=100)  # 5 s at most
        assert cut is not None, "a trickling body was never cut off"
        assert 0.9 <= cut - answered < 3.0, cut - answered
    time.sleep(0.1)
    pair = [socket.create_connection(("127.0.0.1", host.port), timeout=10) for _ in range(2)]
    for s in pair:  # both places free: neither gets the 503 of the connection cap
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    for s in pair:
        assert _reply(s) == (200, {"status": "ok"})
        s.close()
    text = httpx.get(host.url + "/metrics").text
    assert 'sandbox_host_connections_refused_total{reason="discard_timeout"} 1.0' in text


def _send_until_cut(s: socket.socket, total: int | None, limit: int) -> int:
    """Sends a body (of `total` bytes, or chunked and endless if None) until the
    server closes or `limit` bytes went; the bytes it got out."""
    sent = 0
    s.settimeout(10)
    try:
        while sent < min(total or limit, limit):
            piece = b"y" * 65536
            s.sendall(piece if total is not None else b"10000\r\n" + piece + b"\r\n")
            sent += len(piece)
    except OSError:  # the server closed: a reset or a broken pipe
        pass
    return sent


def test_a_body_over_the_maximum_is_refused_without_being_read(host_factory: Any) -> None:
    """A Content-Length of 64 MiB (max_upload_bytes: 2 MiB) is refused with 413 from its
    head; the host reads at most 2 MiB of it before closing, and the reply is there to
    be read. An endless chunked body to a refused name: its 400 comes at once, and the
    host stops reading after max_upload_bytes. Nothing hangs."""
    host = host_factory(**SETTINGS)
    declared = 64 * 1024 * 1024
    for close in (True, False):
        with socket.create_connection(("127.0.0.1", host.port), timeout=10) as s:
            s.sendall(_head("/functions/big", declared, close=close))
            t0 = time.monotonic()
            sent = _send_until_cut(s, declared, declared)
            # Loopback socket buffers hold some MB; the host stopped far from 64 MiB.
            assert sent < declared // 2 and time.monotonic() - t0 < 5, sent
            status, error = _reply(s)
            assert (status, error["error"]["type"]) == (413, "BodyTooLarge")
    with socket.create_connection(("127.0.0.1", host.port), timeout=10) as s:
        s.sendall(_head("/functions/Upper", None, close=False))
        sent = _send_until_cut(s, None, 256 * 1024 * 1024)
        assert sent < 64 * 1024 * 1024, sent
        status, error = _reply(s)
        assert (status, error["error"]["type"]) == (400, "InvalidName")
    assert httpx.get(host.url + "/healthz").status_code == 200
    text = httpx.get(host.url + "/metrics").text
    assert 'sandbox_host_connections_refused_total{reason="discard_bytes"}' in text


def test_an_accepted_upload_that_trickles_is_cut_off_by_the_rate(host_factory: Any) -> None:
    """An upload the host reads (a valid name, credentials, content type) whose body
    comes a little at a time, never pausing body_timeout_s: without a bound on its
    average rate it held its connection for as long as the sender liked (hours for a
    2 MiB body at a few bytes a second). With min_body_rate it is closed once the body
    is slower than the rate after body_timeout_s of grace; other requests are served
    meanwhile."""
    host = host_factory(**SETTINGS, body_timeout_s=1.0, min_body_rate=2000)
    with socket.create_connection(("127.0.0.1", host.port), timeout=10) as slow:
        slow.sendall(_head("/functions/trickle", 1_000_000, close=False) + b"z" * 100)
        began = time.monotonic()
        assert httpx.get(host.url + "/healthz").status_code == 200  # served meanwhile
        # 100 bytes every 0.1 s (1,000 B/s), 10 s at most
        cut = _trickle_until_cut(slow, b"z" * 100, every=0.1, rounds=100)
        assert cut is not None, "a trickling upload was never cut off"
        # Allowed: 1 s + bytes / 2,000 B/s, with 1,000 B/s arriving: ~2 s.
        assert 1.5 <= cut - began < 5.0, cut - began
    assert httpx.get(host.url + "/healthz").status_code == 200
    text = httpx.get(host.url + "/metrics").text
    assert 'sandbox_host_connections_refused_total{reason="body_rate"} 1.0' in text


def _trickle_until_cut(s: socket.socket, piece: bytes, every: float, rounds: int) -> float | None:
    """Sends `piece` every `every` seconds, `rounds` times at most, until the server
    closes the connection (a send fails, or a read sees the end): when it did, or None."""
    for _ in range(rounds):
        try:
            s.sendall(piece)
        except OSError:
            return time.monotonic()
        time.sleep(every)
        if _closed(s):
            return time.monotonic()
    return None


def _closed(s: socket.socket) -> bool:
    """Whether the server has closed `s` (a read without waiting sees the end)."""
    s.setblocking(False)
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        s.setblocking(True)
        s.settimeout(10)
