"""Running the host: uvicorn on uvloop + httptools (with the connection limits of
connections.py), with a fixed shutdown order.

The socket accepts at once; /readyz answers 503 "starting" until the functions are
loaded. On the first SIGTERM or SIGINT: /readyz turns 503 "draining" and new
invocations get 503, while the socket still accepts (so that a load balancer sees the
503 instead of refused connections) until the invocations in flight are done, at most
`drain_timeout_s`; then the listening socket closes, idle connections close, what is
left of the drain time goes to requests still running, the rest are cancelled, and the
app's lifespan closes every pool (cancelling the guest calls still running). The
process then exits without waiting for threads (a module's start-up still running on
its deploy thread ends with the process). A second SIGINT exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from types import FrameType

import uvicorn

from ..cachedir import flush_all
from .app import create_app
from .config import HostConfig
from .connections import ConnectionLimits, protocol_class
from .logs import configure_logging
from .state import HostState

CACHE_FLUSH_S = 10.0  # seconds a stopping host waits for the disk caches' writes

log = logging.getLogger("sandbox.host")


class HostServer(uvicorn.Server):
    """uvicorn's server, telling the app when draining starts."""

    def __init__(self, config: uvicorn.Config, host: HostState) -> None:
        super().__init__(config)
        self.host_state = host

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            log.info("draining", extra={"signal": signal.Signals(sig).name})
            self.host_state.begin_drain()
            self.drain_started = time.monotonic()
        elif sig == signal.SIGINT:
            log.warning("second SIGINT: exiting without waiting")
        super().handle_exit(sig, frame)

    drain_started = 0.0

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Keeps accepting (readyz: 503) while invocations finish, then uvicorn's
        shutdown with what is left of the drain time."""
        limit = self.host_state.config.drain_timeout_s
        deadline = (self.drain_started or time.monotonic()) + limit
        registry = self.host_state.registry
        while registry.busy() and time.monotonic() < deadline and not self.force_exit:
            await asyncio.sleep(0.02)
        left = max(0.0, deadline - time.monotonic())
        self.config.timeout_graceful_shutdown = left  # type: ignore[assignment]
        await super().shutdown(sockets)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket (IPv6 if `host` is an IPv6 address). Raises OSError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(config: HostConfig) -> int:
    """Runs the host until SIGTERM/SIGINT; returns the exit status. Raises OSError if
    the address cannot be bound, TokenError if no token can be had, StoreError if the
    data directory is unusable or in use by another host."""
    configure_logging(config.log_level, json_lines=config.log_json)
    app = create_app(config)
    app.state.host.registry.store.lock()  # before listening: fail fast, with a clear error
    sock = bind(config.host, config.port)
    limits = ConnectionLimits(config, app.state.host.metrics.refused)
    uv_config = uvicorn.Config(
        app,
        loop="uvloop",
        http=protocol_class(limits),
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        # Floats are fine: they go to asyncio.timeout and call_later (annotated int).
        timeout_graceful_shutdown=config.drain_timeout_s,  # type: ignore[arg-type]
        timeout_keep_alive=config.keep_alive_s,  # type: ignore[arg-type]
        backlog=2048,
    )
    server = HostServer(uv_config, app.state.host)
    app.state.host.metrics.connections = lambda: len(server.server_state.connections)
    address, port = sock.getsockname()[:2]
    log.info(
        "listening",
        extra={
            "host": address,
            "port": port,
            "pid": os.getpid(),
            "url": f"http://{address}:{port}",
        },
    )
    # uvicorn re-raises the signals it caught once it is done; these handlers make that
    # a no-op, so that a drained shutdown exits with status 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    server.run(sockets=[sock])
    if server.force_exit:
        logging.shutdown()
        os._exit(130)  # guest calls may still be running on pool threads: do not join them
    if not server.started or app.state.host.start_error is not None:
        return 1
    # The disk caches' files being written (a Python function's state, the interpreter,
    # a Wasm module's engine) are finished, within a bound: os._exit would cut them.
    flush_all(CACHE_FLUSH_S)
    log.info("stopped")
    logging.shutdown()
    # Deploy threads may still run a module's start-up (bounded by its time limit);
    # the drained process does not wait for them.
    os._exit(0)
