"""The data plane: invocations, served straight from ASGI in front of FastAPI.

POST /functions/{name}/invoke and /functions/{name}/http[/{path}] are matched here by
two regular expressions and answered without FastAPI's router and dependency machinery,
which cost 50-100 us a request on the development machine, about as much as the
fresh-state guest call itself. Everything else (management, operations, docs) is FastAPI's. The
FastAPI routes of these two endpoints (routes_invoke.py) call the same functions and
exist for the OpenAPI description.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from starlette.types import Receive, Scope

from ..abi import Signature
from .deployment import Deployment
from .errors import ApiError, BodyTooLarge, bad_request, body_too_large
from .httpmode import http_request
from .manifest import INVALID_NAME, valid_name
from .reply import Reply, json_reply
from .state import HostState
from .values import args_from_json, result_to_json

log = logging.getLogger("sandbox.host")

INVOKE_TEMPLATE = "/functions/{name}/invoke"
HTTP_TEMPLATE = "/functions/{name}/http/{path}"
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
HTTP_ALLOW = ", ".join(HTTP_METHODS)
_INVOKE = re.compile(r"/functions/([^/]*)/invoke")
_HTTP = re.compile(r"/functions/([^/]*)/http(?:/(.*))?", re.DOTALL)

BodyReader = Callable[[], Awaitable[bytes]]


def check_name(name: str) -> str:
    """Raises ApiError 400 for an invalid function name."""
    if not valid_name(name):
        raise bad_request(INVALID_NAME, "InvalidName")
    return name


def _signature(dep: Deployment, wanted: str) -> Signature:
    if dep.spec.mode != wanted:
        where = (
            f"POST /functions/{dep.name}/invoke"
            if dep.spec.mode == "invoke"
            else f"/functions/{dep.name}/http/"
        )
        raise ApiError(
            409,
            "WrongMode",
            f"function {dep.name!r} is deployed in {dep.spec.mode} mode: use {where}",
        )
    if dep.signature is None:
        raise ApiError(503, "FunctionUnavailable", dep.problem or "the function cannot run")
    return dep.signature


def _args(body: bytes) -> list[object]:
    """The `args` of an invoke body (empty body: no arguments). Raises ApiError 400."""
    if not body.strip():
        return []
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise bad_request(f"the body is not valid JSON: {exc}", "InvalidJson") from None
    if not isinstance(doc, dict):
        raise bad_request('the body must be a JSON object: {"args": [...]}')
    unknown = set(doc) - {"args"}
    if unknown:
        raise bad_request(f"unknown keys in the body: {', '.join(sorted(unknown))}")
    args = doc.get("args", [])
    if not isinstance(args, list):
        raise bad_request('"args" must be a JSON array')
    return args


def _authorization(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            return str(value.decode("latin-1"))
    return None


async def invoke(host: HostState, scope: Scope, read_body: BodyReader, name: str) -> Reply:
    """POST /functions/{name}/invoke. Raises ApiError."""
    dep = host.invocable(_authorization(scope), check_name(name))
    sig = _signature(dep, "invoke")
    python = dep.spec.kind == "python"  # JSON in, JSON out (PythonFunction converts)
    body_args = _args(await read_body())
    args = body_args if python else args_from_json(sig, body_args)
    outcome = await host.registry.call(dep, args)
    cut = host.registry.cut
    stdout, stderr = cut(outcome.output), cut(outcome.stderr)
    doc = {
        "result": result_to_json(outcome.value),
        "type": "json" if python else sig.ret.type_name,
        "stdout": stdout,
        "stderr": stderr,
        "duration_ms": round(outcome.duration_s * 1e3, 3),
    }
    if outcome.truncated or stdout is not outcome.output or stderr is not outcome.stderr:
        doc["output_truncated"] = True
    return json_reply(200, doc)


async def http(host: HostState, scope: Scope, read_body: BodyReader, name: str, path: str) -> Reply:
    """/functions/{name}/http/{path}: the function answers the request. Raises ApiError."""
    if scope["method"] not in HTTP_METHODS:
        raise ApiError(
            405,
            "MethodNotAllowed",
            f"{scope['method']} is not passed to functions",
            headers={"Allow": HTTP_ALLOW},
        )
    dep = host.invocable(_authorization(scope), check_name(name))
    _signature(dep, "http")
    body = await read_body()
    limit = dep.limits.http_body_bytes
    if len(body) > limit:
        raise ApiError(
            413,
            "BodyTooLarge",
            f"the request body is over {limit} bytes (what the function's memory allows)",
            limit=limit,
        )
    request = http_request(scope, name, path, body, dep.spec.pass_headers)
    outcome = await host.registry.call(dep, [request])
    reply: Reply = outcome.value
    return reply


async def read_all(receive: Receive, limit: int) -> bytes:
    """The request body; raises BodyTooLarge as soon as it is over `limit` bytes."""
    chunks = []
    received = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        received += len(chunk)
        if received > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class Match(NamedTuple):
    """A data-plane request: its route template, function name and (http) path."""

    template: str
    name: str
    path: str | None


class DataPlane:
    """Answers the invocation endpoints; `match` says whether a request is one."""

    def __init__(self, host: HostState) -> None:
        self.host = host

    def match(self, scope: Scope) -> Match | None:
        method, path = scope["method"], scope["path"]
        if method == "POST" and (m := _INVOKE.fullmatch(path)):
            return Match(INVOKE_TEMPLATE, m.group(1), None)
        if (m := _HTTP.fullmatch(path)) is not None:
            return Match(HTTP_TEMPLATE, m.group(1), m.group(2) or "")
        return None

    async def answer(self, scope: Scope, receive: Receive, match: Match, limit: int) -> Reply:
        """The reply to a data-plane request whose body may be at most `limit` bytes.
        Never raises: every failure is an error reply."""

        async def read_body() -> bytes:
            return await read_all(receive, limit)

        try:
            if match.path is None:
                return await invoke(self.host, scope, read_body, match.name)
            return await http(self.host, scope, read_body, match.name, match.path)
        except ApiError as exc:
            return json_reply(exc.status, exc.body(), exc.headers)
        except BodyTooLarge as exc:
            return json_reply(413, body_too_large(exc.limit).body(), {"Connection": "close"})
        except Exception as exc:
            log.error("unhandled error", exc_info=exc, extra={"path": scope["path"]})
            error = {"error": {"type": "InternalError", "message": "internal error"}}
            return json_reply(500, error)
