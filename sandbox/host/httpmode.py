"""HTTP-handler mode: an HTTP request becomes one JSON string argument of the function
(`handle(str) -> str`), and the JSON string it returns becomes the HTTP response.

Request (host -> guest), compact JSON with the keys in this order:

    {"method": "POST", "path": "/orders/7", "query": "x=1&y=2",
     "headers": {"content-type": "application/json", ...},   # lower-case names
     "body": "...", "body_encoding": "utf-8"}                  # or "base64"

`path` is the part after /functions/{name}/http ("/" at least); repeated headers are
joined with ", "; the body is text when it is valid UTF-8, else base64. For a function
that is not public the Authorization header (the host's token) is removed.

Response (guest -> host), every key optional:

    {"status": 200, "headers": {"content-type": "text/plain"}, "body": "hello",
     "body_encoding": "utf-8"}

status 200-599 (default 200); header names are HTTP tokens and values have no control
characters; Content-Length, Transfer-Encoding and Connection are set by the host. A
response that is not of this shape is the function's failure: 422 BadFunctionResponse.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.types import Scope

from .errors import ApiError
from .reply import Reply

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_HOST_SET = {"content-length", "transfer-encoding", "connection"}


class GuestResponse(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    status: int = Field(200, ge=200, le=599)
    headers: dict[str, str] = Field(default_factory=dict)
    body: str = ""
    body_encoding: Literal["utf-8", "base64"] = "utf-8"


def request_json(scope: Scope, path: str, body: bytes, *, strip_auth: bool) -> str:
    """The JSON string passed to the guest for the request of `scope` with `body`."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1").lower()
        if strip_auth and name == "authorization":
            continue
        value = raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    try:
        text, encoding = body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(body).decode("ascii"), "base64"
    doc = {
        "method": scope["method"],
        "path": "/" + path.lstrip("/"),
        "query": scope.get("query_string", b"").decode("latin-1"),
        "headers": headers,
        "body": text,
        "body_encoding": encoding,
    }
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def _bad(function: str, message: str) -> ApiError:
    return ApiError(422, "BadFunctionResponse", message, function=function)


def response_from(function: str, text: object) -> Reply:
    """The HTTP response the guest described; raises ApiError 422 if it is invalid."""
    if not isinstance(text, str):
        raise _bad(function, "the handler did not return a string")
    try:
        resp = GuestResponse.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "response"
        raise _bad(function, f"invalid handler response: {where}: {first['msg']}") from None
    headers: dict[str, str] = {}
    for name, value in resp.headers.items():
        if not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
            raise _bad(function, f"invalid response header {name!r}")
        if name.lower() not in _HOST_SET:
            headers[name] = value
    if resp.body_encoding == "base64":
        try:
            body = base64.b64decode(resp.body, validate=True)
        except (binascii.Error, ValueError):
            raise _bad(function, "the response body is not valid base64") from None
    else:
        body = resp.body.encode("utf-8", "surrogatepass")
    if resp.status in (204, 304):
        body = b""  # no body allowed (RFC 9110 15.3.5, 15.4.5)
    try:
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    except UnicodeEncodeError:
        raise _bad(function, "response header values must be Latin-1") from None
    return Reply(resp.status, raw, body)
