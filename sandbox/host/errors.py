"""HTTP errors of the function host: one typed JSON body for all of them,

    {"error": {"type": "GuestTrap", "message": "...", "kind": "page_fault", ...}}

and the mapping from runtime exceptions to status codes (docs/host.md says why):

    400  the request is malformed: bad JSON, wrong shape, arguments that do not match
         the function's signature, an invalid name or manifest
    401  management (or a non-public function) without the right bearer token
    404  no such function;  405 method not allowed;  409 wrong mode for this endpoint
    413  the body is over the limit
    422  well-formed but unprocessable: a module that is not a usable guest, a Wasm
         module, or the function itself failing on this input (trap, abort, invalid
         HTTP response). Fresh state per call makes that deterministic: retrying the
         same request gives the same failure, so it is not a server error.
    429  the function's queue is full (Retry-After)
    500  a fault of the host itself (KVM failed, a bug)
    503  shutting down, or the function cannot run (its module is missing or corrupt)
    504  the function ran past its time limit
"""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException

from .. import errors as sbx
from ..wasm.wasi import WasiExit


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


class BodyTooLarge(HTTPException):
    """Raised while a body is read past its limit; an HTTPException so that body parsers
    pass it through (FastAPI turns other exceptions into 400s)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over {limit} bytes")
        self.limit = limit


def body_too_large(limit: int) -> ApiError:
    return ApiError(413, "BodyTooLarge", f"the request body is over {limit} bytes", limit=limit)


def from_guest_error(exc: BaseException, function: str, output: str) -> ApiError:
    """The error for an exception raised by a guest call of `function`."""
    extra: dict[str, Any] = {"function": function, "stdout": output}
    if isinstance(exc, sbx.ArgumentError):
        return ApiError(400, "ArgumentError", str(exc), **extra)
    if isinstance(exc, sbx.CallTimeout):
        return ApiError(504, "CallTimeout", str(exc), **extra)
    if isinstance(exc, sbx.GuestTrap):  # GuestProtocolError included
        return ApiError(422, "GuestTrap", str(exc), kind=exc.kind, **extra)
    if isinstance(exc, sbx.GuestAbort):
        return ApiError(422, "GuestAbort", exc.guest_message, **extra)
    if isinstance(exc, sbx.FunctionNotFound):
        return ApiError(422, "FunctionNotFound", str(exc), **extra)
    if isinstance(exc, sbx.HostFunctionError):  # the guest called a host function wrongly
        return ApiError(422, "HostFunctionError", str(exc), **extra)
    if isinstance(exc, sbx.CallCancelled | sbx.SandboxClosed):
        return ApiError(503, "ShuttingDown", "the host is shutting down", **extra)
    if isinstance(exc, WasiExit):  # a Wasm function called proc_exit outside http mode
        return ApiError(
            422,
            "WasiExit",
            f"the program exited with status {exc.code}",
            exit_code=exc.code,
            **extra,
        )
    if isinstance(exc, sbx.KvmUnavailable):
        return ApiError(503, "KvmUnavailable", str(exc), **extra)
    return ApiError(500, type(exc).__name__, str(exc) or type(exc).__name__, **extra)
