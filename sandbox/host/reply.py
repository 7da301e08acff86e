"""`Reply`: a complete HTTP response (status, headers, body) sent with raw ASGI."""

from __future__ import annotations

import json
from typing import NamedTuple

from starlette.responses import Response
from starlette.types import Send

_JSON = [(b"content-type", b"application/json")]
# What json.dumps(doc, ensure_ascii=False, allow_nan=False, separators=(",", ":")) does,
# without building an encoder for every reply.
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


class Reply(NamedTuple):
    status: int
    headers: list[tuple[bytes, bytes]]  # lower-case names; content-length is added
    body: bytes


def json_reply(status: int, doc: object, headers: dict[str, str] | None = None) -> Reply:
    body = _ENCODER.encode(doc)
    extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    return Reply(status, _JSON + extra, body.encode())


async def send_reply(send: Send, reply: Reply) -> None:
    headers = [*reply.headers, (b"content-length", str(len(reply.body)).encode())]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})


def as_response(reply: Reply) -> Response:
    """`reply` as a Starlette response, for a FastAPI route."""
    response = Response(reply.body, status_code=reply.status)
    response.raw_headers.extend(reply.headers)
    return response
