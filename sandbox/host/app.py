"""`create_app(config)`: the function host as an ASGI application (FastAPI), separate
from the server that runs it (server.py). Tests and embedders can run it under any ASGI
server. The lifespan starts loading the functions in the background (the server
accepts at once; /readyz answers 503 "starting" until they are loaded), and at the end
closes every pool."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from .. import __version__
from .auth import TOKENS_FILE, Guard, load_token
from .config import HostConfig
from .errors import ApiError
from .manifest import INVALID_NAME
from .metrics import Metrics
from .middleware import HostMiddleware
from .registry import Registry
from .routes_functions import router as functions_router
from .routes_invoke import router as invoke_router
from .routes_ops import router as ops_router
from .state import HostState

log = logging.getLogger("sandbox.host")

_HTTP_TYPES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    412: "PreconditionFailed",
    413: "BodyTooLarge",
    415: "UnsupportedMediaType",
}


def _json(status: int, body: object, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(body, status_code=status, headers=headers)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return _json(exc.status, exc.body(), exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = _HTTP_TYPES.get(exc.status_code, "HttpError")
    body = {"error": {"type": kind, "message": str(exc.detail)}}
    return _json(exc.status_code, body, dict(exc.headers or {}))


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = tuple(first.get("loc", ()))
    if loc == ("path", "name"):
        body = {"type": "InvalidName", "message": INVALID_NAME}
    else:
        where = ".".join(str(p) for p in loc) or "request"
        body = {"type": "BadRequest", "message": f"{where}: {first.get('msg')}"}
    return _json(400, {"error": body})


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error", exc_info=exc, extra={"path": request.url.path})
    return _json(500, {"error": {"type": "InternalError", "message": "internal error"}})


class HostApp(FastAPI):
    """FastAPI with the host's middleware in front of it: every request passes the
    body-size limit, the request metrics and the access log first; invocations then go
    to the data plane and everything else to FastAPI's own stack (error middleware,
    telemetry, routing). Added with `add_middleware`, the host's middleware would sit
    inside FastAPI's outer layers, which cost invocations ~10 us a request and do
    nothing for them (the data plane answers its own errors)."""

    def __init__(self, host: HostState, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.state.host = host
        self.front = HostMiddleware(functools.partial(FastAPI.__call__, self), host=host)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.front(scope, receive, send)


def freeze_heap() -> None:
    """Moves every object alive now (the modules, the application and its routes, some
    60,000 or more) out of the garbage collector's reach (gc.freeze): the collector's
    full passes, which happen every few thousand requests as objects of requests in
    flight get promoted, then scan only what was made since. On the development
    machine that took a full pass from ~35 ms to ~2 ms, and p99 at 64 connections from
    ~45 ms to ~14 ms. Called once, before the functions load: what is frozen lives for
    the whole process anyway."""
    gc.collect()
    gc.freeze()


def create_app(config: HostConfig) -> FastAPI:
    """The host application for `config`. Raises TokenError if the token cannot be
    read or created; the data directory is opened at startup (lifespan)."""
    metrics = Metrics()
    host = HostState(config, metrics, Registry(config, metrics), Guard(load_token(config)))

    async def start() -> None:
        try:
            await host.registry.start()
            store = host.registry.store
            host.guard.open(store.root / TOKENS_FILE, store.write_file)
        except Exception as exc:
            host.start_error = str(exc)
            log.error("cannot start", extra={"error": str(exc)})
            os.kill(os.getpid(), signal.SIGTERM)
            return
        log.info("ready", extra={"data_dir": str(config.data_dir)})

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        freeze_heap()
        starting = asyncio.get_running_loop().create_task(start())
        try:
            yield
        finally:
            host.begin_drain()
            starting.cancel()
            await host.registry.close()
            log.info("pools closed")
            front = getattr(app, "front", None)
            if front is not None and front.access is not None:
                front.access.flush()

    app = HostApp(
        host,
        title="sandbox function host",
        version=__version__,
        summary="Serverless functions in KVM micro-VMs: every request in fresh state",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)
    app.include_router(ops_router)
    app.include_router(functions_router)
    app.include_router(invoke_router)
    return app
