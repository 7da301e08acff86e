"""The JSON shapes of the HTTP API, for the OpenAPI description (and the responses of
the management endpoints)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str = Field(description="GuestTrap, CallTimeout, ArgumentError, QueueFull, ...")
    message: str
    kind: str | None = Field(None, description="for GuestTrap: page_fault, divide_error, ...")
    function: str | None = None
    stdout: str | None = Field(None, description="what the guest printed before it failed")


class ErrorBody(BaseModel):
    error: ErrorDetail


class InvokeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    args: list[JsonValue] = Field(
        default_factory=list,
        description="the entry's arguments in order: integers, numbers, booleans, strings; "
        "bytes as base64 strings",
    )


class InvokeResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    result: JsonValue = Field(description="the result (bytes as base64; null for void)")
    type: str = Field(description="the declared result type: i32, u64, f64, str, bytes, ...")
    stdout: str = Field(description="what the guest printed during the call")
    stderr: str = Field(
        description="what a Wasm program wrote to fd 2; always empty for native guests"
    )
    duration_ms: float = Field(description="the guest call, fresh-state restore included")
    output_truncated: bool = Field(
        False, description="present (true) when stdout or stderr was cut at the output limit"
    )


class PoolInfo(BaseModel):
    size: int
    idle: int
    busy: int
    queued: int


class LimitsInfo(BaseModel):
    timeout_s: float
    max_concurrency: int
    max_queue: int
    warm: int


class WasmCodeInfo(BaseModel):
    tier: str = Field(description="the host's wasm_tier: auto, interp or aot")
    code: str = Field(description="what new sandboxes run: native or interpreter")
    compile_problem: str | None = Field(
        description="why the module stays on the interpreter (a failed or timed-out compile)"
    )


class FunctionInfo(BaseModel):
    name: str
    version: int
    sha256: str
    size: int
    created_at: float
    updated_at: float
    spec: dict[str, JsonValue] = Field(
        description="the manifest (FunctionSpec), with `secrets` as a list of names"
    )
    signature: str | None
    params: list[str] | None
    returns: str | None
    limits: LimitsInfo
    state: str = Field(description="ready, or failed (see problem)")
    problem: str | None
    pool: PoolInfo
    wasm: WasmCodeInfo | None = Field(None, description="Wasm functions: which code runs")
    previous_versions: list[int] = Field(description="versions kept for rollback, newest first")


class FunctionList(BaseModel):
    functions: list[FunctionInfo]


class Status(BaseModel):
    status: str


class LogEntry(BaseModel):
    ts: float
    version: int
    outcome: str = Field(description="ok, trap, abort, timeout, ...")
    error: str | None
    stdout: str = Field(description="the end of what the call printed")
    stderr: str


class LogList(BaseModel):
    function: str
    entries: list[LogEntry]


class TokenInfo(BaseModel):
    id: str
    scope: str
    function: str | None
    description: str
    created_at: float


class NewToken(TokenInfo):
    token: str = Field(description="the token; only in this reply")


class TokenList(BaseModel):
    tokens: list[TokenInfo]


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for the error statuses an operation can answer."""
    what = {
        400: "malformed request (JSON, shape, arguments, name, manifest)",
        401: "missing or wrong bearer token",
        403: "the token's scope does not allow this",
        412: "If-Match does not name the current version",
        404: "no such function",
        405: "the method is not passed to functions (Allow lists those that are)",
        409: "the function is deployed in the other mode",
        413: "request body over the limit",
        422: "well-formed but unprocessable: bad module, or the function failed (trap, "
        "abort, invalid response)",
        429: "the function's queue is full",
        503: "starting, shutting down, or the function cannot run",
        504: "the function ran past its time limit",
    }
    return {code: {"model": ErrorBody, "description": what[code]} for code in codes}
