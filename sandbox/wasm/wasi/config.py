"""What a WASI program sees of the world: `WasiConfig` (arguments, environment, stdio,
preopened directories, limits, clocks, randomness) and `Preopen`, both validated pydantic
models."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBytes, field_validator, model_validator

from .types import I64_MAX, MiB


def _check_utf8(text: str) -> None:
    try:
        text.encode()
    except UnicodeEncodeError:
        raise ValueError(f"{text!r} cannot be encoded as UTF-8") from None


def encode_env(env: Mapping[str, str]) -> list[bytes]:
    """The environment as environ_get serves it: "KEY=VALUE" entries, UTF-8 and
    NUL-terminated. Raises ValueError for a name that is empty or holds '=' or NUL, a
    value holding NUL, or text that is not UTF-8, and TypeError for a name or value that
    is not str (the rules of WasiConfig.env and WasiContext.set_env)."""
    encoded = []
    for key, value in env.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"environment names and values must be str, not {key!r}")
        if not key or "=" in key or "\0" in key:
            raise ValueError(f"variable name {key!r} is empty or contains '=' or NUL")
        if "\0" in value:
            raise ValueError(f"the value of {key} contains a NUL character")
        try:
            encoded.append(f"{key}={value}".encode() + b"\0")
        except UnicodeEncodeError:
            raise ValueError(f"the variable {key!r} cannot be encoded as UTF-8") from None
    return encoded


class Preopen(BaseModel):
    """A host directory the program may use, under the name `guest_path` (what
    fd_prestat_dir_name reports; wasi-libc matches absolute paths against it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host_path: Path = Field(description="an existing host directory")
    guest_path: str = Field(description='the name the program sees, e.g. "/", "/data" or "."')
    read_only: bool = Field(True, description="refuse every write, create, rename and unlink")

    @field_validator("guest_path")
    @classmethod
    def _guest_path(cls, v: str) -> str:
        if not v or "\0" in v:
            raise ValueError("must be a non-empty path without NUL characters")
        return v


class WasiConfig(BaseModel):
    """What a WASI program sees of the world. Invalid values raise pydantic's
    ValidationError (a ValueError) naming the field."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    args: list[str] = Field(default_factory=list, description="argv, argv[0] included")
    env: dict[str, str] = Field(default_factory=dict, description="the environment")
    stdin: StrictBytes | Literal["inherit"] = Field(
        b"", description='the bytes fd 0 reads, or "inherit": the host process\'s stdin'
    )
    stdout: Literal["capture", "inherit", "discard"] = Field(
        "capture", description="fd 1: kept in WasiContext.stdout, the host's fd 1, or dropped"
    )
    stderr: Literal["capture", "inherit", "discard"] = Field(
        "capture", description="fd 2: kept in WasiContext.stderr, the host's fd 2, or dropped"
    )
    preopens: list[Preopen] = Field(default_factory=list, description="fds 3, 4, ... in order")
    output_limit: int = Field(
        MiB,
        description="bytes kept per captured stream (stdout, stderr); what the program "
        "writes beyond it is dropped and the capture marked truncated (the writes still "
        "succeed)",
    )
    max_open_files: int = Field(1024, description="descriptors open at once (EMFILE beyond)")
    random_seed: int | None = Field(
        None, description="None: random_get reads os.urandom; an int: a reproducible stream"
    )
    clock: Literal["real", "virtual"] = Field(
        "real",
        description='"virtual": clocks start at virtual_epoch_ns (realtime) and 0 (the '
        "others) and advance only when poll_oneoff sleeps, which returns at once",
    )
    virtual_epoch_ns: int = Field(
        1_700_000_000 * 10**9, description="realtime clock of a virtual clock at the start"
    )

    @model_validator(mode="before")
    @classmethod
    def _capture_limit_alias(cls, data: Any) -> Any:
        # `capture_limit` is the earlier name of output_limit, still accepted.
        if isinstance(data, dict) and "capture_limit" in data:
            data = dict(data)
            limit = data.pop("capture_limit")
            if "output_limit" in data:
                raise ValueError("give output_limit or capture_limit (its old name), not both")
            data["output_limit"] = limit
        return data

    @property
    def capture_limit(self) -> int:
        """The earlier name of output_limit."""
        return self.output_limit

    @field_validator("args")
    @classmethod
    def _args(cls, v: list[str]) -> list[str]:
        for arg in v:
            if "\0" in arg:
                raise ValueError(f"argument {arg!r} contains a NUL character")
            _check_utf8(arg)
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        encode_env(v)
        return v

    @field_validator("output_limit")
    @classmethod
    def _output_limit(cls, v: int) -> int:
        if v < 0:
            raise ValueError("must be a number of bytes, 0 or more")
        return v

    @field_validator("virtual_epoch_ns")
    @classmethod
    def _epoch(cls, v: int) -> int:
        if not 0 <= v <= I64_MAX:
            raise ValueError("must be between 0 and 2**63 - 1 nanoseconds")
        return v

    @model_validator(mode="after")
    def _check(self) -> WasiConfig:
        names = [p.guest_path for p in self.preopens]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"preopens: guest_path {duplicates[0]!r} is used twice")
        if self.max_open_files < 3 + len(self.preopens) or self.max_open_files > 1 << 20:
            raise ValueError(
                "max_open_files must hold stdio and the preopens (3 + len(preopens)) and be "
                "at most 1048576"
            )
        return self
