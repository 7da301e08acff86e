"""The ASGI middleware in front of every request: the body-size limit, the request
metrics, the access log, the probes (`GET /healthz`, `/readyz`: answered here, ~60 us
less than through FastAPI's router, so that a load balancer's probes cost what a minimal
ASGI app's requests cost), and the dispatch of invocations to the data plane (the rest
goes on to FastAPI). Pure ASGI (no BaseHTTPMiddleware): a few microseconds a request."""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .config import HostConfig
from .dataplane import DataPlane, Match
from .errors import BodyTooLarge, body_too_large
from .logs import AccessLog
from .reply import Reply, json_reply, send_reply
from .state import HostState

_PROBES = ("/healthz", "/readyz")
_HEALTHY = json_reply(200, {"status": "ok"})
_READY = json_reply(200, {"status": "ready"})


def _limit_for(scope: Scope, config: HostConfig) -> int:
    """Uploads (PUT /functions/{name}) may be large; everything else is small."""
    path: str = scope["path"]
    if scope["method"] == "PUT" and path.startswith("/functions/") and path.count("/") == 2:
        return config.max_upload_bytes
    return config.max_body_bytes


class HostMiddleware:
    def __init__(self, app: ASGIApp, host: HostState) -> None:
        self.app = app
        self.config = host.config
        self.metrics = host.metrics
        self.host = host
        self.dataplane = DataPlane(host)
        self.access = AccessLog(host.config.log_json) if host.config.access_log else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        match = self.dataplane.match(scope)
        if match is not None:
            await self._dataplane(scope, receive, send, match, start)
            return
        path = scope["path"]
        if path in _PROBES and scope["method"] in ("GET", "HEAD"):
            reply = probe(self.host, path)
            await send_reply(send, reply)
            self._record(scope, path, reply.status, time.perf_counter() - start)
            return
        limit = _limit_for(scope, self.config)
        status = [500]
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def watched_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            declared = _content_length(scope)
            if declared is not None and declared > limit:
                await _reject_too_large(limit, watched_send)
            else:
                await self.app(scope, limited_receive, watched_send)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "(unmatched)"
            self._record(scope, template, status[0], time.perf_counter() - start)

    async def _dataplane(
        self, scope: Scope, receive: Receive, send: Send, match: Match, start: float
    ) -> None:
        """An invocation: the same limit, metrics and log as any request, without the
        wrappers around receive and send (the data plane reads the body with the limit
        and knows the status it answers)."""
        status = 500
        try:
            limit = self.config.max_body_bytes  # never an upload
            declared = _content_length(scope)
            if declared is not None and declared > limit:
                status = 413
                await _reject_too_large(limit, send)
            else:
                reply = await self.dataplane.answer(scope, receive, match, limit)
                status = reply.status
                await send_reply(send, reply)
        finally:
            self._record(scope, match.template, status, time.perf_counter() - start)

    def _record(self, scope: Scope, template: str, status: int, elapsed: float) -> None:
        self.metrics.request(scope["method"], template, status, elapsed)
        if self.access is not None:
            self.access.request(scope, status, elapsed)


def probe(host: HostState, path: str) -> Reply:
    """/healthz: the process serves HTTP; /readyz: functions loaded and not draining
    (the FastAPI routes in routes_ops.py describe them in OpenAPI and answer the same)."""
    if path == "/healthz":
        return _HEALTHY
    if host.ready:
        return _READY
    return json_reply(
        503, {"status": "draining" if host.draining else "starting"}, {"Retry-After": "1"}
    )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _reject_too_large(limit: int, send: Send) -> None:
    """413 before reading any of the body; the connection is closed afterwards, so the
    unread body does not have to be drained."""
    await send_reply(send, json_reply(413, body_too_large(limit).body(), {"Connection": "close"}))
