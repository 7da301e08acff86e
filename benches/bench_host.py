"""Function host: throughput and latency over HTTP on loopback, (a) of a no-op endpoint
of the server (GET /healthz) and (b) of invoking the demo guest's `add(1, 2)` in fresh
sandbox state (POST /functions/add/invoke; the function deployed with a pool of 8, one
sandbox per connection), measured by the same load generator in alternating rounds of
the same number of requests.

The load generator is an asyncio client (uvloop) that keeps CONNECTIONS HTTP/1.1
keep-alive connections busy with pre-encoded requests and reads each response by its
Content-Length; it costs a small fraction of the server's CPU per request, so the
server is what is measured. The server runs as its own process (`python -m sandbox.host`,
uvicorn + uvloop + httptools, access log off) pinned to a CPU other than the load
generator's where there is one: on this nested-KVM machine a thread handing work to
another CPU costs ~50 us per wake-up, so a one-CPU server is the fastest for both
endpoints.

The issue's target is "(b) >= 50% of (a)'s throughput". A row's ratio is ours /
baseline and its target is met when ratio <= target, so the row reports the time per
request, 1 / throughput: ours = invoke's, baseline = the no-op's, target 2.0; met exactly
when invoke's throughput is at least half the no-op's. The p50/p99 rows compare the
latencies under the same load (no target).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

try:
    from sandbox.guests import BUNDLED_DIR
except ImportError as exc:  # the native extension is not built
    pytest.skip(f"cannot import sandbox ({exc}); see benches/README.md", allow_module_level=True)

THEME = "function-host"
TOKEN = "bench-token"
CONNECTIONS = 8
TARGET = 2.0  # time per request of (b) at most 2x (a)'s: throughput at least 50%


@dataclass
class Round:
    requests: int
    seconds: float
    latencies_us: list[float]


def _request(method: str, path: str, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {TOKEN}\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


async def _connection(
    port: int,
    request: bytes,
    deadline: float,
    budget: list[int],
    latencies: list[float],
    check: bytes,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while budget[0] > 0 and time.perf_counter() < deadline:
            budget[0] -= 1
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length)
            latencies.append((time.perf_counter() - t0) * 1e6)
            if not head.startswith(b"HTTP/1.1 200") or check not in body:
                raise AssertionError(f"unexpected response: {head[:40]!r} {body[:200]!r}")
    finally:
        writer.close()


def load_round(port: int, request: bytes, check: bytes, seconds: float, max_requests: int) -> Round:
    """CONNECTIONS connections for `seconds` or `max_requests` requests in all."""

    async def run() -> Round:
        latencies: list[float] = []
        budget = [max_requests]
        t0 = time.perf_counter()
        await asyncio.gather(
            *(
                _connection(port, request, t0 + seconds, budget, latencies, check)
                for _ in range(CONNECTIONS)
            )
        )
        return Round(len(latencies), time.perf_counter() - t0, latencies)

    try:
        import uvloop

        return uvloop.run(run())
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        return asyncio.run(run())


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The host as a subprocess on a free port, with `add` deployed; yields the port."""
    root = tmp_path_factory.mktemp("bench-host")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_HOST_")}
    env.update(SANDBOX_HOST_TOKEN=TOKEN, SANDBOX_HOST_ACCESS_LOG="false")
    client_cpus = os.sched_getaffinity(0)
    all_cpus = set(range(os.cpu_count() or 1))
    others = sorted(all_cpus - client_cpus)
    server_cpus = {others[0]} if others else client_cpus
    log = root / "host.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sandbox.host", "--port", "0", "--data-dir", str(root / "d")],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
            preexec_fn=lambda: os.sched_setaffinity(0, server_cpus),
        )
    try:
        port = _wait_listening(proc, log)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        manifest = {"entry": "add", "warm": 8, "max_concurrency": 8}
        files = {
            "manifest": (None, json.dumps(manifest)),
            "module": ("demo.elf", (BUNDLED_DIR / "demo.elf").read_bytes()),
        }
        r = httpx.put(f"http://127.0.0.1:{port}/functions/add", files=files, headers=headers)
        assert r.status_code == 201, r.text
        yield port
    finally:
        proc.terminate()
        proc.wait(30)


def _wait_listening(proc: subprocess.Popen[bytes], log: Path) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the host exited:\n{log.read_text()}")
        for line in log.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("msg") == "listening":
                port = int(record["port"])
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                        return port
                except httpx.TransportError:
                    pass
        time.sleep(0.05)
    raise RuntimeError(f"the host did not start:\n{log.read_text()}")


def test_function_host(bench, server: int) -> None:
    s = bench.settings
    n = 1_500 if s.quick else 4_000  # requests per round, spread over the connections
    rounds = 3 if s.quick else 7
    noop = (_request("GET", "/healthz"), b'"ok"')
    add = (_request("POST", "/functions/add/invoke", b'{"args":[1,2]}'), b'"result":3,')
    for request, check in (noop, add):  # warm up: connections, pools, caches
        load_round(server, request, check, 0.3, 2_000)
    rounds_of: dict[str, list[Round]] = {"noop": [], "add": []}

    def one(kind: str, request: bytes, check: bytes) -> Round:
        r = load_round(server, request, check, 60.0, n)
        assert r.requests == n
        rounds_of[kind].append(r)
        return r

    # Rounds alternate (pytest-benchmark times the invoke rounds, the no-op rounds are
    # timed in between), so that both see the same machine.
    _, _, v = bench.versus(
        lambda: one("add", *add),
        lambda: one("noop", *noop),
        rounds=rounds,
        warmup_rounds=1,
    )
    if v is None:  # --benchmark-disable
        return
    add_us, noop_us = v.ours_us / n, v.peer_us / n
    latencies = {k: [x for r in rs[1:] for x in r.latencies_us] for k, rs in rounds_of.items()}
    what = f"GET /healthz, {CONNECTIONS} connections"
    bench.report(
        f"invoke add(1, 2) vs no-op: time per request ({CONNECTIONS} conn.; "
        f"{1e6 / add_us:,.0f} vs {1e6 / noop_us:,.0f} req/s)",
        add_us,
        noop_us,
        what,
        TARGET,
        v.spread,
        readings=[x / n for x in v.peer_readings_us],
        kind="ours",
    )
    for q, label in ((0.5, "p50"), (0.99, "p99")):
        bench.report(
            f"invoke add(1, 2) vs no-op: latency {label}",
            _percentile(latencies["add"], q),
            _percentile(latencies["noop"], q),
            what,
            None,
            key=f"latency_{label}",
            kind="ours",
        )
    bench.benchmark.extra_info["throughput_rps"] = {
        "noop": round(1e6 / noop_us),
        "invoke_add": round(1e6 / add_us),
        "ratio": round(noop_us / add_us, 3),
    }
