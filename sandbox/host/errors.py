"""HTTP errors of the function host: one typed JSON body for all of them,

    {"error": {"type": "GuestTrap", "message": "...", "kind": "page_fault", ...}}

and ONE table (`TABLE`) from the runtime's exception classes to the HTTP status, the
error type of the body and the metric outcome (docs/host.md says why each status):

    400  the request is malformed: bad JSON, wrong shape, arguments that do not match
         the function's signature, an invalid name or manifest
    401  missing or wrong token;  403  a token whose scope does not cover the request
    404  no such function;  405 method not allowed;  409 wrong mode for this endpoint
    412  If-Match does not name the current version;  413 the body is over the limit
    422  well-formed but unprocessable: a module that is not a usable guest, or the
         function itself failing on this input (trap, abort, invalid HTTP response).
         Fresh state per call makes that deterministic: retrying the same request gives
         the same failure, so it is not a server error.
    429  the function's queue is full (Retry-After)
    500  a fault of the host itself (KVM failed, a bug)
    503  starting, shutting down, or the function cannot run
    504  the function ran past its time limit

Messages never carry the data directory's paths: `scrub()` replaces them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException

from .. import errors as sbx
from ..errors import PoolFull, PoolTimeout
from ..wasm import WasiExit, WasmLinkError, WasmModuleError


class ApiError(Exception):
    """An error answered with `status` and a typed body."""

    def __init__(
        self,
        status: int,
        type_: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": {"type": self.type, "message": self.message, **self.extra}}


def bad_request(message: str, type_: str = "BadRequest", **extra: Any) -> ApiError:
    return ApiError(400, type_, message, **extra)


def not_found(name: str) -> ApiError:
    return ApiError(404, "FunctionNotFound", f"no function named {name!r}", function=name)


def unauthorized(message: str) -> ApiError:
    return ApiError(
        401, "Unauthorized", message, headers={"WWW-Authenticate": 'Bearer realm="sandbox-host"'}
    )


def forbidden(message: str) -> ApiError:
    return ApiError(403, "Forbidden", message)


def unavailable(type_: str, message: str, **extra: Any) -> ApiError:
    return ApiError(503, type_, message, headers={"Retry-After": "1"}, **extra)


class BodyTooLarge(HTTPException):
    """Raised while a body is read past its limit; an HTTPException so that body parsers
    pass it through (FastAPI turns other exceptions into 400s)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over {limit} bytes")
        self.limit = limit


def body_too_large(limit: int) -> ApiError:
    return ApiError(413, "BodyTooLarge", f"the request body is over {limit} bytes", limit=limit)


# -- paths out of messages -------------------------------------------------------------

_scrubbed: list[tuple[re.Pattern[str], str]] = []


def hide_path(path: str, label: str) -> None:
    """Messages that mention `path` (the data directory) say `label` instead."""
    _scrubbed.append((re.compile(re.escape(path.rstrip("/")) + r"[^\s'\"]*"), label))


def scrub(message: str) -> str:
    for pattern, label in _scrubbed:
        message = pattern.sub(label, message)
    return message


# -- the table --------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """What an exception class means to the host: the status and type of the reply to an
    invocation (`type_` None: the class's name), the `outcome` label of
    sandbox_host_invocations_total, extra body members, and what it means at deploy
    time (when a module's first sandbox is made: None: the same as for a call)."""

    status: int
    type_: str | None
    outcome: str
    extra: Callable[[BaseException], dict[str, Any]] | None = None
    deploy: tuple[int, str, str] | None = None  # status, type, message prefix


def _trap_extra(exc: BaseException) -> dict[str, Any]:
    return {"kind": getattr(exc, "kind", "unknown")}


def _exit_extra(exc: BaseException) -> dict[str, Any]:
    return {"exit_code": getattr(exc, "code", None)}


_INVALID = "InvalidModule"
# Most specific first: the first class an exception is an instance of decides.
TABLE: tuple[tuple[type[BaseException], Row], ...] = (
    (ApiError, Row(422, "BadFunctionResponse", "bad_response")),
    (PoolFull, Row(429, "QueueFull", "rejected")),
    (PoolTimeout, Row(503, "QueueTimeout", "queue_timeout")),
    (sbx.ArgumentError, Row(400, "ArgumentError", "bad_args")),
    (
        sbx.CallTimeout,
        Row(504, "CallTimeout", "timeout", deploy=(422, _INVALID, "the module's start-up ran past "
                                                     "the function's time limit: ")),
    ),
    (sbx.CallCancelled, Row(503, "ShuttingDown", "cancelled")),
    (sbx.SandboxClosed, Row(503, "ShuttingDown", "cancelled")),
    (
        sbx.GuestTrap,  # WasmTrap and GuestProtocolError included
        Row(422, "GuestTrap", "trap", _trap_extra,
            deploy=(422, _INVALID, "the module traps when instantiated: ")),
    ),
    (sbx.GuestAbort, Row(422, "GuestAbort", "abort")),
    (sbx.FunctionNotFound, Row(422, "FunctionNotFound", "error")),
    (sbx.HostFunctionError, Row(422, "HostFunctionError", "error")),
    (WasiExit, Row(422, "WasiExit", "exit", _exit_extra)),
    (sbx.KvmUnavailable, Row(503, "KvmUnavailable", "error")),
    (sbx.KvmError, Row(500, "KvmError", "error")),
    (sbx.GuestAbiMismatch, Row(422, _INVALID, "error",
                               deploy=(422, _INVALID, "not a usable guest: "))),
    (sbx.GuestNotFound, Row(503, "FunctionUnavailable", "error",
                            deploy=(422, _INVALID, "not a usable guest: "))),
    (sbx.ConfigError, Row(422, _INVALID, "error", deploy=(422, _INVALID, "raise memory_mib: "))),
    (WasmModuleError, Row(422, _INVALID, "error",
                          deploy=(422, _INVALID, "not a usable Wasm module: "))),
    (WasmLinkError, Row(422, _INVALID, "error",
                        deploy=(422, _INVALID, "the module cannot be linked (the host offers "
                                               "WASI preview1): "))),
)  # fmt: skip
_DEFAULT = Row(500, "InternalError", "error", deploy=(422, _INVALID, "not a usable guest: "))


def row_of(exc: BaseException) -> Row:
    for cls, row in TABLE:
        if isinstance(exc, cls):
            return row
    return _DEFAULT


def api_error(
    exc: BaseException, *, function: str, output: str | None = None, deploy: bool = False
) -> ApiError:
    """The reply to `exc`, raised by a call of `function` (with `output` printed before
    it) or, with `deploy`, while its module's first sandbox was made."""
    if isinstance(exc, ApiError):  # the host's own (a function's invalid HTTP response)
        return exc
    row = row_of(exc)
    message = scrub(str(exc) or type(exc).__name__)
    if deploy and row.deploy is not None:
        status, type_, prefix = row.deploy
        return ApiError(status, type_, prefix + message, function=function)
    if row is _DEFAULT:
        message = "internal error"
    extra: dict[str, Any] = {"function": function}
    if row.extra is not None:
        extra.update(row.extra(exc))
    if isinstance(exc, sbx.GuestAbort):
        message = scrub(exc.guest_message)
    if output is not None:
        extra["stdout"] = output
    headers = {"Retry-After": "1"} if row.status in (429, 503) else None
    return ApiError(row.status, row.type_ or type(exc).__name__, message, headers=headers, **extra)
