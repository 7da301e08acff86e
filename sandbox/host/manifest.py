"""Function manifests: what a user uploads with a module (`FunctionSpec`) and what the
store keeps for a deployed function (`FunctionRecord`)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Function names end up in file names (functions/<name>.json) and URLs: lower-case
# letters, digits, '-' and '_', starting with a letter or digit; never '/', '.' or '..'.
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
NAME_RE = re.compile(NAME_PATTERN)
ENTRY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,46}$"
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
MAX_ENV_ENTRIES = 64
MAX_ENV_VALUE = 4096
HTTP_ENTRY_DEFAULT = "handle"
RECORD_FORMAT = 1


def valid_name(name: str) -> bool:
    """Whether `name` is a valid function name (see NAME_PATTERN)."""
    return NAME_RE.fullmatch(name) is not None


class FunctionSpec(BaseModel):
    """The manifest uploaded with a function. Unset limits take the host's defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["native", "wasm"] = Field(
        "native",
        description="native: a guest ELF built with the guest SDK; wasm: a Wasm "
        "module (run by the Wasm engine guest; WASI preview1 with the environment below)",
    )
    mode: Literal["invoke", "http"] = Field(
        "invoke",
        description="invoke: POST /functions/{name}/invoke with JSON arguments; http: the "
        "function handles HTTP requests under /functions/{name}/http/",
    )
    entry: str = Field(
        HTTP_ENTRY_DEFAULT,
        pattern=ENTRY_PATTERN,
        description="the exported function to run (for Wasm: an export, or _start for a "
        "WASI command); in http mode it must be `(str) -> str`",
    )
    memory_mib: int = Field(16, ge=2, le=1024, description="guest memory, a multiple of 2")
    timeout_s: float | None = Field(None, gt=0, description="time limit of one request")
    max_concurrency: int | None = Field(None, ge=1, description="requests running at once")
    max_queue: int | None = Field(
        None, ge=0, description="requests waiting for a sandbox; beyond it: 429"
    )
    warm: int | None = Field(None, ge=0, description="sandboxes kept ready when idle")
    public: bool = Field(False, description="invocation without the bearer token")
    environment: dict[str, str] = Field(
        default_factory=dict,
        description="values the guest reads with the `getenv` host function",
    )

    @field_validator("memory_mib")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2:
            raise ValueError("must be a multiple of 2 (guest memory comes in 2 MiB units)")
        return v

    @field_validator("environment")
    @classmethod
    def _environment(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > MAX_ENV_ENTRIES:
            raise ValueError(f"at most {MAX_ENV_ENTRIES} variables")
        for key, value in v.items():
            if not ENV_NAME_RE.fullmatch(key):
                raise ValueError(f"variable name {key!r} must match {ENV_NAME_RE.pattern}")
            if len(value.encode("utf-8", "surrogatepass")) > MAX_ENV_VALUE:
                raise ValueError(f"value of {key!r} is over {MAX_ENV_VALUE} bytes")
            if "\x00" in value or any(0xD800 <= ord(c) <= 0xDFFF for c in value):
                raise ValueError(f"value of {key!r} holds a NUL or a lone surrogate")
        return v


class FunctionRecord(BaseModel):
    """A deployed function as stored in <data_dir>/functions/<name>.json: the manifest
    and the content address (SHA-256) of its module in <data_dir>/blobs/."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int = RECORD_FORMAT
    name: str = Field(pattern=NAME_PATTERN)
    spec: FunctionSpec
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)
    version: int = Field(ge=1, description="1 on creation, +1 on every update")
    created_at: float
    updated_at: float
