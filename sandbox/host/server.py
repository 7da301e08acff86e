"""Running the host: uvicorn on uvloop + httptools, with a fixed shutdown order.

On the first SIGTERM or SIGINT: /readyz turns 503 and new invocations are refused
(draining), the listening socket closes (stop accepting), idle keep-alive connections
close, in-flight requests get `drain_timeout_s` to finish, the rest are cancelled, and
then the app's lifespan closes every pool (cancelling the guest calls still running).
A second SIGINT skips the wait and exits at once.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from types import FrameType

import uvicorn

from .app import create_app
from .config import HostConfig
from .logs import configure_logging
from .state import HostState

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
        elif sig == signal.SIGINT:
            log.warning("second SIGINT: exiting without waiting")
        super().handle_exit(sig, frame)


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
    uv_config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        # A float is fine: it goes to asyncio.wait_for (the annotation says int).
        timeout_graceful_shutdown=config.drain_timeout_s,  # type: ignore[arg-type]
        timeout_keep_alive=30,
    )
    server = HostServer(uv_config, app.state.host)
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
    if not server.started:
        return 1
    log.info("stopped")
    return 0
