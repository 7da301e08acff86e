"""Function host: throughput and latency over HTTP on loopback, driven by Debian's `wrk`,
against the anchor of a minimal ASGI app (uvicorn + uvloop + httptools, access log off)
on another port that returns the same JSON as an invocation of `add(1, 2)`.

Measured in alternating rounds of the same length, in one run, at 8 and at 64
connections: (a) the anchor, (b) a fresh-state native `add` (the demo guest, pool of
8), (c) a Wasm `add` (pool of 8), (d) a Wasm http-mode function (a WASI command,
tests/wasm/programs/wasi_http.c, json convention; skipped without clang). The host and
the anchor each run as one process pinned to the same CPU, wrk (one thread) on the
other CPU where there is one.

A row's ratio is ours / baseline with time per request (1 / throughput): target 1/0.6
for native `add`, 1/0.5 for Wasm `add` and 1/0.35 for Wasm http mode at 8 connections
(the issue's ">= 0.6x the anchor's throughput", ...). p50/p99 rows compare latencies
under the same load (no target). CPU rows compare the server process's CPU time per
request (user + system, all threads, from /proc/<pid>/stat over each round): with the
server on one CPU, that is what bounds its throughput, and it is much steadier than
req/s on a shared machine.

A second reference, the floor, is the same minimal app making the same fresh-state
guest call per request (`add(1, 2)` in a `reset="per_call"` demo or Wasm sandbox, on the
event loop's thread): no host can be cheaper than HTTP plus the call, so the gap between
the host and the floor is what the host itself costs (routing, auth, JSON, pools,
metrics), and the gap between the floor and the anchor is the guest call's (VM exits:
~37 us each under nested KVM).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

try:
    from sandbox.guests import BUNDLED_DIR
except ImportError as exc:  # the native extension is not built
    pytest.skip(f"cannot import sandbox ({exc}); see benches/README.md", allow_module_level=True)

if shutil.which("wrk") is None:
    pytest.skip("wrk is not installed (scripts/install-deps installs it)", allow_module_level=True)

THEME = "function-host"
TOKEN = "bench-token"
ROOT = Path(__file__).resolve().parents[1]
ADD_JSON = b'{"result":3,"type":"i32","stdout":"","stderr":"","duration_ms":0.1}'
WASM_ADD = """(module (func (export "add") (param i32 i32) (result i32)
  (i32.add (local.get 0) (local.get 1))))"""
ANCHOR_APP = f"""
BODY = {ADD_JSON!r}
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({{"type": "http.response.start", "status": 200, "headers": HEADERS}})
    await send({{"type": "http.response.body", "body": BODY}})
"""
FLOOR_APP = f"""
import os
from sandbox import Sandbox
from sandbox.guests import BUNDLED_DIR

BODY = {ADD_JSON!r}
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]
NATIVE = Sandbox(str(BUNDLED_DIR / "demo.elf"), reset="per_call")
WASM = Sandbox.from_wasm(bytes.fromhex(os.environ["FLOOR_WASM"]), reset="per_call")

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    sandbox = WASM if scope["path"] == "/wasm" else NATIVE
    if sandbox.call("add", 1, 2, timeout=10.0) != 3:
        raise AssertionError("wrong result")
    await send({{"type": "http.response.start", "status": 200, "headers": HEADERS}})
    await send({{"type": "http.response.body", "body": BODY}})
"""
WRK_SCRIPT = """
wrk.method = "{method}"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {token}"
"""
TARGETS = {"native add": 1 / 0.6, "wasm add": 1 / 0.5, "wasm http": 1 / 0.35}
FLOORS = {"native add": "native floor", "wasm add": "wasm floor"}


def _cpus() -> tuple[set[int], set[int]]:
    """(server CPUs, client CPUs)."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) >= 2:
        return {allowed[-1]}, set(allowed[:-1])
    return set(allowed), set(allowed)


def _spawn(
    cmd: list[str], log: Path, env: dict[str, str], cpus: set[int]
) -> subprocess.Popen[bytes]:
    with open(log, "wb") as err:
        return subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
            preexec_fn=lambda: os.sched_setaffinity(0, cpus),
        )


def _cpu_s(pid: int) -> float:
    """CPU time (user + system, all threads) of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_port(proc: subprocess.Popen[bytes], log: Path, path: str) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited:\n{log.read_text()}")
        text = log.read_text(errors="replace")
        port = None
        for line in text.splitlines():
            try:
                record = json.loads(line)
                if record.get("msg") == "listening":
                    port = int(record["port"])
            except ValueError:
                m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
                if m:
                    port = int(m.group(1))
        if port:
            try:
                if httpx.get(f"http://127.0.0.1:{port}{path}").status_code == 200:
                    return port
            except httpx.TransportError:
                pass
        time.sleep(0.05)
    raise RuntimeError(f"the server did not start:\n{log.read_text()}")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[str, int]]]:
    """The host (with the functions deployed), the anchor and the floor; yields (URL,
    server pid) per scenario."""
    root = tmp_path_factory.mktemp("bench-host")
    server_cpus, _ = _cpus()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_HOST_")}
    env.update(SANDBOX_HOST_TOKEN=TOKEN, SANDBOX_HOST_ACCESS_LOG="false")
    host_log, anchor_log = root / "host.log", root / "anchor.log"
    host = _spawn(
        [sys.executable, "-m", "sandbox.host", "--port", "0", "--data-dir", str(root / "d")],
        host_log,
        env,
        server_cpus,
    )
    (root / "anchor_app.py").write_text(ANCHOR_APP)
    anchor = _spawn(
        [sys.executable, "-m", "uvicorn", "anchor_app:app", "--port", "0", "--loop", "uvloop",
         "--http", "httptools", "--no-access-log", "--log-level", "info",
         "--app-dir", str(root)],
        anchor_log,
        env,
        server_cpus,
    )  # fmt: skip
    wasmtime = pytest.importorskip("wasmtime")
    wasm_add = bytes(wasmtime.wat2wasm(WASM_ADD))
    (root / "floor_app.py").write_text(FLOOR_APP)
    floor_log = root / "floor.log"
    floor = _spawn(
        [sys.executable, "-m", "uvicorn", "floor_app:app", "--port", "0", "--loop", "uvloop",
         "--http", "httptools", "--no-access-log", "--log-level", "info",
         "--app-dir", str(root)],
        floor_log,
        {**env, "FLOOR_WASM": wasm_add.hex()},
        server_cpus,
    )  # fmt: skip
    try:
        port = _wait_port(host, host_log, "/readyz")
        anchor_port = _wait_port(anchor, anchor_log, "/")
        floor_port = _wait_port(floor, floor_log, "/")
        base = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {TOKEN}"}

        def put(name: str, manifest: dict[str, object], module: bytes) -> None:
            files = {"manifest": (None, json.dumps(manifest)), "module": ("m", module)}
            r = httpx.put(f"{base}/functions/{name}", files=files, headers=headers, timeout=60)
            assert r.status_code == 201, r.text

        pool = {"warm": 8, "max_concurrency": 8}
        put("add", {"entry": "add", **pool}, (BUNDLED_DIR / "demo.elf").read_bytes())
        urls = {
            "anchor": (f"http://127.0.0.1:{anchor_port}/", anchor.pid),
            "native floor": (f"http://127.0.0.1:{floor_port}/native", floor.pid),
            "wasm floor": (f"http://127.0.0.1:{floor_port}/wasm", floor.pid),
            "native add": (f"{base}/functions/add/invoke", host.pid),
        }
        put("wadd", {"kind": "wasm", "entry": "add", **pool}, wasm_add)
        urls["wasm add"] = (f"{base}/functions/wadd/invoke", host.pid)
        wasm = root / "http.wasm"
        source = ROOT / "tests" / "wasm" / "programs" / "wasi_http.c"
        built = subprocess.run(
            ["clang", "--target=wasm32-wasi", "-O2", str(source), "-o", str(wasm)],
            capture_output=True,
        ) if shutil.which("clang") else None  # fmt: skip
        if built is not None and built.returncode == 0:
            manifest = {"kind": "wasm", "mode": "http", "entry": "_start", "memory_mib": 64}
            put("whttp", {**manifest, **pool}, wasm.read_bytes())
            urls["wasm http"] = (f"{base}/functions/whttp/http/x", host.pid)
        yield urls
    finally:
        for proc in (host, anchor, floor):
            proc.terminate()
            proc.wait(30)


def _wrk(
    url: str, connections: int, seconds: float, script: Path, pid: int | None = None
) -> tuple[float, float, float, float]:
    """(requests/s, p50 us, p99 us, server CPU us per request) of one wrk round."""
    _, client_cpus = _cpus()
    cpu0 = _cpu_s(pid) if pid else 0.0
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url]
    out = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        preexec_fn=lambda: os.sched_setaffinity(0, client_cpus),
    ).stdout
    cpu = _cpu_s(pid) - cpu0 if pid else 0.0
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    if re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        raise AssertionError(f"wrk saw errors:\n{out}")

    def pct(p: str) -> float:
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        assert m, out
        return float(m.group(1)) * {"us": 1.0, "ms": 1e3, "s": 1e6}[m.group(2)]

    return rps, pct("50"), pct("99"), cpu * 1e6 / max(total, 1)


def test_function_host(bench, servers: dict[str, tuple[str, int]], tmp_path: Path) -> None:
    quick = bench.settings.quick
    seconds = 1 if quick else 5
    rounds = 2 if quick else 3
    scripts = {}
    for name in servers:
        body = "" if name == "wasm http" else '{"args":[1,2]}'
        method = "POST"
        path = tmp_path / f"{name.replace(' ', '_')}.lua"
        path.write_text(WRK_SCRIPT.format(method=method, body=body, token=TOKEN))
        scripts[name] = path
    results: dict[tuple[str, int], list[tuple[float, float, float, float]]] = {}

    def run() -> None:
        for connections in (8, 64):
            for name, (url, _) in servers.items():  # warm-up
                _wrk(url, connections, 1, scripts[name])
            for _ in range(rounds):
                for name, (url, pid) in servers.items():
                    results.setdefault((name, connections), []).append(
                        _wrk(url, connections, seconds, scripts[name], pid)
                    )

    bench.benchmark.pedantic(run, rounds=1, iterations=1)
    summary: dict[str, object] = {}
    for connections in (8, 64):
        anchor = results[("anchor", connections)]
        anchor_rps = statistics.median(r[0] for r in anchor)
        anchor_cpu = statistics.median(r[3] for r in anchor)
        for name in servers:
            if name == "anchor" or name.endswith("floor"):
                continue
            ours = results[(name, connections)]
            rps = statistics.median(r[0] for r in ours)
            ratios = [a[0] / o[0] for a, o in zip(anchor, ours, strict=True)]
            bench.report(
                f"{name} vs minimal ASGI app: time per request ({connections} conn.; "
                f"{rps:,.0f} vs {anchor_rps:,.0f} req/s)",
                1e6 / rps,
                1e6 / anchor_rps,
                f"uvicorn+uvloop app, same JSON, {connections} connections",
                TARGETS[name] if connections == 8 else None,
                (max(ratios) - min(ratios)) / statistics.median(ratios) if ratios else 0.0,
                key=f"{name}_{connections}".replace(" ", "_"),
                kind="peer",
            )
            for i, label in ((1, "p50"), (2, "p99")):
                bench.report(
                    f"{name} vs minimal ASGI app: latency {label} ({connections} conn.)",
                    statistics.median(r[i] for r in ours),
                    statistics.median(r[i] for r in anchor),
                    f"uvicorn+uvloop app, {connections} connections",
                    None,
                    key=f"{name}_{connections}_{label}".replace(" ", "_"),
                    kind="peer",
                )
            cpu = statistics.median(r[3] for r in ours)
            bench.report(
                f"{name} vs minimal ASGI app: server CPU per request ({connections} conn.)",
                cpu,
                anchor_cpu,
                "uvicorn+uvloop app, CPU time of the server process per request",
                None,
                key=f"{name}_{connections}_cpu".replace(" ", "_"),
                kind="peer",
            )
            floor = results.get((FLOORS.get(name, ""), connections))
            floor_cpu = statistics.median(r[3] for r in floor) if floor else None
            if floor:
                bench.report(
                    f"{name} vs minimal ASGI app + the guest call: server CPU per request "
                    f"({connections} conn.)",
                    cpu,
                    floor_cpu,
                    "the anchor making the same fresh-state call inline (the floor)",
                    None,
                    key=f"{name}_{connections}_floor_cpu".replace(" ", "_"),
                    kind="peer",
                )
            summary[f"{name} @{connections}"] = {
                "rps": round(rps),
                "anchor_rps": round(anchor_rps),
                "ratio": round(rps / anchor_rps, 3),
                "p50_us": round(statistics.median(r[1] for r in ours)),
                "p99_us": round(statistics.median(r[2] for r in ours)),
                "cpu_us": round(cpu, 1),
                "anchor_cpu_us": round(anchor_cpu, 1),
                "floor_cpu_us": None if floor_cpu is None else round(floor_cpu, 1),
                "floor_rps": None if not floor else round(statistics.median(r[0] for r in floor)),
            }
    bench.benchmark.extra_info["throughput"] = summary
    print(json.dumps(summary, indent=1))
