"""Function manifests: what a user uploads with a module (`FunctionSpec`) and what the
store keeps for a deployed function (`FunctionRecord`)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Request headers never passed to an http-mode function unless its manifest names them
# in pass_headers: credentials (they are the caller's, or the host's token) ...
CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
# ... and hop-by-hop headers (RFC 9110 7.6.1), which are about the connection to the
# host, never passed whatever the manifest says.
HOP_BY_HOP_HEADERS = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
     "upgrade"}
)  # fmt: skip

# Function names end up in file names (functions/<name>.json) and URLs: lower-case
# letters, digits, '-' and '_', starting with a letter or digit; never '/', '.' or '..'.
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
NAME_RE = re.compile(NAME_PATTERN)
NAME_RULE = "1-63 characters of a-z, 0-9, '_' and '-', starting with a letter or digit"
INVALID_NAME = f"invalid function name: use {NAME_RULE}"
ENTRY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,46}$"
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
HEADER_NAME_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,64}$")
MAX_ENV_ENTRIES = 64
MAX_ENV_VALUE = 4096
MAX_PASS_HEADERS = 32
MAX_PACKAGES = 32
# The largest values a manifest may give (the host's config may allow less: its
# max_timeout_s and max_concurrency_limit).
MAX_TIMEOUT_S = 86_400.0
MIN_TIMEOUT_S = 0.001
MAX_CONCURRENCY = 1024
MAX_QUEUE = 10_000
MAX_WARM = 64
HTTP_ENTRY_DEFAULT = "handle"
RECORD_FORMAT = 1


def valid_name(name: str) -> bool:
    """Whether `name` is a valid function name (see NAME_PATTERN)."""
    return NAME_RE.fullmatch(name) is not None


def _check_variables(v: dict[str, str]) -> dict[str, str]:
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


class FunctionSpec(BaseModel):
    """The manifest uploaded with a function. Unset limits take the host's defaults.
    Strict: a JSON value of the wrong type is refused ("public": "yes" is not true)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    kind: Literal["native", "wasm", "python"] = Field(
        "native",
        description="native: a guest ELF built with the guest SDK; wasm: a Wasm "
        "module (run by the Wasm engine guest; WASI preview1 with the environment below); "
        "python: a .py module (UTF-8) run by CPython 3.12 in the engine guest: invoke mode "
        "calls `entry` with the JSON args and returns its JSON result, http mode calls it "
        "with a request dict and expects {status, headers, body}",
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
    timeout_s: float | None = Field(
        None,
        ge=MIN_TIMEOUT_S,
        le=MAX_TIMEOUT_S,
        description="time limit of one request, and of the module's start-up at deploy "
        "time (at most the host's max_timeout_s)",
    )
    max_concurrency: int | None = Field(
        None, ge=1, le=MAX_CONCURRENCY, description="requests running at once"
    )
    max_queue: int | None = Field(
        None, ge=0, le=MAX_QUEUE, description="requests waiting for a sandbox; beyond it: 429"
    )
    warm: int | None = Field(None, ge=0, le=MAX_WARM, description="sandboxes kept ready when idle")
    public: bool = Field(False, description="invocation without a token")
    environment: dict[str, str] = Field(
        default_factory=dict,
        description="values the guest reads with the `getenv` host function (Wasm: its "
        "WASI environment)",
    )
    secrets: dict[str, str] = Field(
        default_factory=dict,
        repr=False,
        description="write-only variables, read like `environment` (they win over it); "
        "never returned by the API (GET shows their names only)",
    )
    pass_headers: list[str] = Field(
        default_factory=list,
        max_length=MAX_PASS_HEADERS,
        description="http mode: credential headers (Authorization, Cookie, "
        "Proxy-Authorization) passed to the function anyway; hop-by-hop headers never are",
    )
    packages: list[str] = Field(
        default_factory=list,
        max_length=MAX_PACKAGES,
        description="python: pure-Python requirements installed on the host (pip) and "
        "imported into the function's snapshot",
    )
    http_interface: Literal["json", "wagi"] = Field(
        "json",
        description="Wasm http mode: json (the request document on stdin, the response "
        "document on stdout) or wagi (CGI variables in the environment, the body on stdin, "
        "CGI headers and the body on stdout, as Spin's WAGI executor)",
    )

    @field_validator("memory_mib")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2:
            raise ValueError("must be a multiple of 2 (guest memory comes in 2 MiB units)")
        return v

    @field_validator("environment", "secrets")
    @classmethod
    def _variables(cls, v: dict[str, str]) -> dict[str, str]:
        return _check_variables(v)

    @field_validator("pass_headers")
    @classmethod
    def _headers(cls, v: list[str]) -> list[str]:
        for name in v:
            if not HEADER_NAME_RE.fullmatch(name):
                raise ValueError(f"{name!r} is not a header name")
            if name.lower() in HOP_BY_HOP_HEADERS:
                raise ValueError(f"{name!r} is a hop-by-hop header: it is never passed")
        return [name.lower() for name in v]

    def variables(self) -> dict[str, str]:
        """What the guest reads: the environment, and the secrets over it."""
        return {**self.environment, **self.secrets}

    def public_view(self) -> dict[str, object]:
        """The manifest as the API shows it: secrets by name only."""
        doc = self.model_dump(exclude={"secrets"})
        doc["secrets"] = sorted(self.secrets)
        return doc


class Revision(BaseModel):
    """An earlier version of a function, kept for rollback."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = Field(ge=1)
    spec: FunctionSpec
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)
    updated_at: float


class FunctionRecord(BaseModel):
    """A deployed function as stored in <data_dir>/functions/<name>.json: the manifest
    and the content address (SHA-256) of its module in <data_dir>/blobs/, and the
    versions before it (newest first) that a rollback can return to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int = RECORD_FORMAT
    name: str = Field(pattern=NAME_PATTERN)
    spec: FunctionSpec
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)
    version: int = Field(ge=1, description="1 on creation, +1 on every update")
    created_at: float
    updated_at: float
    previous: list[Revision] = Field(default_factory=list)

    def revision(self) -> Revision:
        return Revision(
            version=self.version,
            spec=self.spec,
            sha256=self.sha256,
            size=self.size,
            updated_at=self.updated_at,
        )

    @property
    def etag(self) -> str:
        """The entity tag of this version (GET answers it; If-Match compares it)."""
        return f'"v{self.version}"'
