"""HTTP-handler mode: an HTTP request for a function, and the response it describes.

`HttpRequest` is what the data plane hands a Function; each kind passes it on its own
way (functions.py):

- the JSON convention (native guests: `handle(str) -> str`; Wasm commands with
  http_interface "json": stdin -> stdout), compact JSON with the keys in this order:

    {"method": "POST", "path": "/orders/7", "query": "x=1&y=2",
     "headers": {"content-type": "application/json", ...},   # lower-case names
     "body": "...", "body_encoding": "utf-8"}                  # or "base64"

  `path` is the part after /functions/{name}/http ("/" at least); repeated headers are
  joined with ", "; the body is text when it is valid UTF-8 and that is no longer than
  its base64, else base64. The response, every key optional:

    {"status": 200, "headers": {"content-type": "text/plain"}, "body": "hello",
     "body_encoding": "utf-8"}

- WAGI (Wasm commands with http_interface "wagi", as Spin's WAGI executor runs them):
  the CGI variables (RFC 3875: REQUEST_METHOD, PATH_INFO, QUERY_STRING, CONTENT_TYPE,
  CONTENT_LENGTH, SERVER_NAME, SERVER_PORT, SERVER_PROTOCOL, SCRIPT_NAME, REMOTE_ADDR,
  HTTP_<HEADER>..., and WAGI's X_FULL_URL, X_MATCHED_ROUTE, X_RAW_PATH_INFO) in the
  environment, the body on stdin; on stdout CGI header lines (`Content-Type`, `Status:
  404 Not Found`, `Location`, others passed on), an empty line, the body.

Credentials (Authorization, Cookie, Proxy-Authorization) are removed unless the
manifest's pass_headers names them; hop-by-hop headers (and those the Connection header
names) always are. Response status 200-599 (default 200); header names must be tokens,
values Latin-1 without control characters; Content-Length, Transfer-Encoding and
Connection are the host's. Anything else is the function's failure: 422
BadFunctionResponse.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.types import Scope

from .errors import ApiError
from .manifest import CREDENTIAL_HEADERS, HOP_BY_HOP_HEADERS
from .reply import Reply

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_HOST_SET = {"content-length", "transfer-encoding", "connection"}
MAX_CGI_HEAD = 64 * 1024  # bytes of CGI header lines a WAGI response may have


class BadFunctionResponse(ApiError):
    """The function answered something that is not a valid response (422)."""

    def __init__(self, function: str, message: str) -> None:
        super().__init__(422, "BadFunctionResponse", message, function=function)


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """An HTTP request for a function: headers already filtered (lower-case names)."""

    method: str
    path: str  # after /functions/{name}/http, "/" at least
    query: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    function: str = ""
    scheme: str = "http"
    server: tuple[str, int] = ("localhost", 80)
    client: str = ""


def passed_headers(
    raw: list[tuple[bytes, bytes]], allow: Collection[str] = ()
) -> tuple[tuple[str, str], ...]:
    """The request's headers a function sees (see the module docstring)."""
    named: set[str] = set()
    for raw_name, raw_value in raw:
        if raw_name.lower() == b"connection":
            named.update(t.strip().lower() for t in raw_value.decode("latin-1").split(","))
    out: list[tuple[str, str]] = []
    for raw_name, raw_value in raw:
        name = raw_name.decode("latin-1").lower()
        if name in HOP_BY_HOP_HEADERS or name in named:
            continue
        if name in CREDENTIAL_HEADERS and name not in allow:
            continue
        out.append((name, raw_value.decode("latin-1")))
    return tuple(out)


def http_request(
    scope: Scope, function: str, path: str, body: bytes, allow: Collection[str] = ()
) -> HttpRequest:
    server = scope.get("server") or ("localhost", 80)
    client = scope.get("client")
    return HttpRequest(
        method=scope["method"],
        path="/" + path.lstrip("/"),
        query=scope.get("query_string", b"").decode("latin-1"),
        headers=passed_headers(scope["headers"], allow),
        body=body,
        function=function,
        scheme=scope.get("scheme", "http"),
        server=(str(server[0]), int(server[1] or 80)),
        client=str(client[0]) if client else "",
    )


def _body_text(body: bytes) -> tuple[str, str]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(body).decode("ascii"), "base64"
    # Text whose JSON escapes would be longer than its base64 (control characters):
    # base64 keeps the request within 4/3 of the body, which the buffers are sized for.
    if len(json.dumps(text, ensure_ascii=False)) > (len(body) + 2) // 3 * 4 + 2:
        return base64.b64encode(body).decode("ascii"), "base64"
    return text, "utf-8"


def to_json(request: HttpRequest) -> str:
    """The JSON convention's request document."""
    headers: dict[str, str] = {}
    for name, value in request.headers:
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    text, encoding = _body_text(request.body)
    doc = {
        "method": request.method,
        "path": request.path,
        "query": request.query,
        "headers": headers,
        "body": text,
        "body_encoding": encoding,
    }
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def request_json(scope: Scope, path: str, body: bytes, *, strip_auth: bool = True) -> str:
    """The JSON request document for `scope` (strip_auth=False: credentials passed)."""
    allow = () if strip_auth else CREDENTIAL_HEADERS
    return to_json(http_request(scope, "", path, body, allow))


class GuestResponse(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    status: int = Field(200, ge=200, le=599)
    headers: dict[str, str] = Field(default_factory=dict)
    body: str = ""
    body_encoding: Literal["utf-8", "base64"] = "utf-8"


def _reply(function: str, status: int, headers: list[tuple[str, str]], body: bytes) -> Reply:
    raw = []
    for name, value in headers:
        if not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
            raise BadFunctionResponse(function, f"invalid response header {name!r}")
        if name.lower() in _HOST_SET:
            continue
        try:
            raw.append((name.lower().encode("latin-1"), value.encode("latin-1")))
        except UnicodeEncodeError:
            raise BadFunctionResponse(function, "response header values must be Latin-1") from None
    if status in (204, 304):
        body = b""  # no body allowed (RFC 9110 15.3.5, 15.4.5)
    return Reply(status, raw, body)


def response_from(function: str, text: object) -> Reply:
    """The HTTP response a JSON-convention document describes; raises
    BadFunctionResponse (422) if it is invalid."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise BadFunctionResponse(function, "the handler's response is not UTF-8") from None
    if not isinstance(text, str):
        raise BadFunctionResponse(function, "the handler did not return a string")
    try:
        resp = GuestResponse.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "response"
        message = f"invalid handler response: {where}: {first['msg']}"
        raise BadFunctionResponse(function, message) from None
    if resp.body_encoding == "base64":
        try:
            body = base64.b64decode(resp.body, validate=True)
        except (binascii.Error, ValueError):
            raise BadFunctionResponse(function, "the response body is not valid base64") from None
    else:
        body = resp.body.encode("utf-8", "surrogatepass")
    return _reply(function, resp.status, list(resp.headers.items()), body)


# -- WAGI ----------------------------------------------------------------------------------


def wagi_environment(request: HttpRequest) -> dict[str, str]:
    """The CGI/WAGI variables of `request`."""
    host, port = request.server
    prefix = f"/functions/{request.function}/http"
    query = f"?{request.query}" if request.query else ""
    env = {
        "REQUEST_METHOD": request.method,
        "PATH_INFO": request.path,
        "X_RAW_PATH_INFO": request.path,
        "QUERY_STRING": request.query,
        "SCRIPT_NAME": prefix,
        "X_MATCHED_ROUTE": prefix + "/...",
        "SERVER_NAME": host,
        "SERVER_PORT": str(port),
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_SOFTWARE": "sandbox-host",
        "GATEWAY_INTERFACE": "CGI/1.1",
        "REMOTE_ADDR": request.client,
        "REMOTE_HOST": request.client,
        "CONTENT_LENGTH": str(len(request.body)),
        "CONTENT_TYPE": "",
        "X_FULL_URL": f"{request.scheme}://{host}:{port}{prefix}{request.path}{query}",
    }
    for name, value in request.headers:
        if name == "content-type":
            env["CONTENT_TYPE"] = value
            continue
        if name == "content-length":
            continue
        key = "HTTP_" + name.upper().replace("-", "_")
        if key.replace("_", "").isalnum():
            env[key] = f"{env[key]}, {value}" if key in env else value
    return {k: v.replace("\x00", "") for k, v in env.items()}


def response_from_cgi(function: str, output: bytes) -> Reply:
    """The HTTP response a WAGI program wrote: CGI header lines, an empty line, the
    body. Raises BadFunctionResponse (422)."""
    cut, skip = len(output), 0
    for blank in (b"\r\n\r\n", b"\n\n"):
        at = output.find(blank, 0, MAX_CGI_HEAD)
        if 0 <= at < cut:
            cut, skip = at, len(blank)
    if cut == len(output):
        raise BadFunctionResponse(
            function, "the program's output has no CGI header (lines, then an empty line)"
        )
    head, body = output[:cut], output[cut + skip :]
    status: int | None = None
    headers: list[tuple[str, str]] = []
    for line in head.replace(b"\r\n", b"\n").split(b"\n"):
        text = line.decode("latin-1")
        name, sep, value = text.partition(":")
        if not sep:
            raise BadFunctionResponse(function, f"invalid CGI header line {text[:80]!r}")
        name, value = name.strip(), value.strip()
        if name.lower() == "status":
            code = value.split(" ", 1)[0]
            if not code.isdigit() or not 200 <= int(code) <= 599:
                raise BadFunctionResponse(function, f"invalid CGI Status {value[:40]!r}")
            status = int(code)
        else:
            headers.append((name, value))
    if status is None:
        status = 302 if any(n.lower() == "location" for n, _ in headers) else 200
    return _reply(function, status, headers, body)
