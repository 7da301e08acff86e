"""`HostConfig`: the function host's settings (pydantic-settings).

Sources, highest priority first: keyword arguments (the command line), environment
variables prefixed `SANDBOX_HOST_` (`SANDBOX_HOST_PORT=9000`), the config file (TOML, or
JSON for a `.json` file), the defaults below.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

KiB = 1024
MiB = 1024 * KiB
ENV_PREFIX = "SANDBOX_HOST_"


class ConfigFileError(ValueError):
    """The config file cannot be read or is not TOML/JSON of a table of settings."""


class HostConfig(BaseSettings):
    """Every field can also be set as SANDBOX_HOST_<FIELD> (upper case). Invalid values
    raise pydantic's ValidationError (a ValueError) naming the field."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, validate_default=True
    )

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8080, ge=0, le=65535, description="TCP port (0: any free port)")
    data_dir: Path = Field(
        Path("sandbox-host-data"),
        description="where deployed functions are stored (blobs/, functions/, tmp/)",
    )
    token: SecretStr | None = Field(
        None,
        description="the admin token (more, scoped tokens are made with POST /tokens); "
        "unset: read from token_file, or generated into <data_dir>/token",
    )
    token_file: Path | None = Field(None, description="a file holding the token")
    max_body_bytes: int = Field(
        1 * MiB, ge=1 * KiB, le=64 * MiB, description="largest invocation request body"
    )
    max_upload_bytes: int = Field(
        64 * MiB, ge=1 * KiB, le=1024 * MiB, description="largest function upload body"
    )
    default_warm: int = Field(
        2, ge=0, le=64, description="sandboxes kept ready per function (manifest: warm)"
    )
    default_max_concurrency: int = Field(4, ge=1, le=256)
    max_concurrency_limit: int = Field(
        64, ge=1, le=1024, description="the largest max_concurrency a manifest may ask for"
    )
    default_max_queue: int = Field(64, ge=0, le=100_000)
    default_timeout_s: float = Field(10.0, gt=0, le=3600)
    max_timeout_s: float = Field(300.0, gt=0, le=3600)
    pool_idle_s: float = Field(
        60.0, gt=0, description="sandboxes above the warm count idle this long are closed"
    )
    drain_timeout_s: float = Field(
        10.0, ge=0, le=3600, description="on shutdown, how long in-flight requests may still run"
    )
    max_output_bytes: int = Field(
        1 * MiB,
        ge=1 * KiB,
        le=64 * MiB,
        description="guest output (stdout, stderr) kept per call; beyond it is cut",
    )
    keep_versions: int = Field(
        5, ge=0, le=100, description="earlier versions of a function kept for rollback"
    )
    log_entries: int = Field(
        100, ge=0, le=10_000, description="recent calls with output or errors kept per function"
    )
    # -- connections (each refusal is logged and counted in /metrics) --
    max_header_bytes: int = Field(
        16 * KiB, ge=1 * KiB, le=1 * MiB, description="request line and headers, in all (431)"
    )
    max_headers: int = Field(100, ge=8, le=10_000, description="header fields per request (431)")
    max_request_line: int = Field(
        8 * KiB, ge=256, le=1 * MiB, description="the request target's length (414)"
    )
    header_timeout_s: float = Field(
        10.0, gt=0, le=600, description="time to send a request's headers (then closed)"
    )
    keep_alive_s: float = Field(
        5.0,
        gt=0,
        le=600,
        description="an idle connection (no request yet or between requests) is closed",
    )
    body_timeout_s: float = Field(
        10.0, gt=0, le=600, description="longest pause while a request body arrives (then closed)"
    )
    min_body_rate: int = Field(
        1024,
        ge=0,
        le=1 << 30,
        description="bytes per second a request body must average once body_timeout_s has "
        "passed (the time allowed is body_timeout_s plus the bytes received over this rate; "
        "a slower sender, one that trickles without ever pausing long, is closed; 0: no "
        "bound)",
    )
    write_timeout_s: float = Field(
        30.0, gt=0, le=600, description="longest wait for a client to read a response (then closed)"
    )
    discard_timeout_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="a request answered before its body was read to the end: how long the "
        "rest of the body (read and dropped, at most max_upload_bytes) may take to arrive "
        "(then closed)",
    )
    max_connections: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        description="open connections at most (and at most the descriptor limit less fd_reserve)",
    )
    fd_reserve: int = Field(
        512,
        ge=16,
        le=1_000_000,
        description="descriptors kept for sandboxes and files, never used for connections",
    )
    long_call_ms: float = Field(
        5.0,
        gt=0,
        le=1000,
        description="a guest call that takes longer makes its function's next calls long "
        "(fair shares of `workers`, never inline) for a while",
    )
    workers: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="long guest calls running at once, host-wide, shared fairly among the "
        "active functions; unset: the CPUs the process may use, at least 2",
    )
    inline_calls: Literal["auto", "on", "off"] = Field(
        "auto",
        description="run short guest calls on the event loop's thread instead of a pool "
        "thread; auto: when the process may use only one CPU",
    )
    wasm_tier: Literal["auto", "interp", "aot"] = Field(
        "auto",
        description="how Wasm functions run: auto: the interpreter at once, native code once "
        "compiled in the background; interp: the interpreter; aot: compiled at deploy",
    )
    aot_compile_timeout_s: float = Field(
        300.0,
        gt=0,
        le=7200,
        description="wall-clock limit of each tool of a Wasm function's native compile "
        "(beyond: it stays on the interpreter)",
    )
    warm_on_start: bool = Field(True, description="warm every stored function's pool at start")
    public_metrics: bool = Field(True, description="serve /metrics without the token")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_json: bool = Field(True, description="JSON lines on stderr (false: plain text)")
    access_log: bool = Field(True, description="one log line per request")

    @model_validator(mode="after")
    def _consistent(self) -> HostConfig:
        if self.default_timeout_s > self.max_timeout_s:
            raise ValueError("default_timeout_s must not exceed max_timeout_s")
        if self.default_max_concurrency > self.max_concurrency_limit:
            raise ValueError("default_max_concurrency must not exceed max_concurrency_limit")
        return self


class _Values(PydanticBaseSettingsSource):
    """Settings from a mapping already read (the config file)."""

    def __init__(self, settings_cls: type[BaseSettings], values: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._values = values

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The settings table of a TOML file (JSON if the name ends in .json). Raises
    ConfigFileError if it cannot be read or parsed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigFileError(f"cannot read config file {str(path)!r}: {exc}") from None
    try:
        data: object = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigFileError(f"config file {str(path)!r} is not valid: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigFileError(f"config file {str(path)!r} must hold a table of settings")
    return data


def load_config(path: str | Path | None = None, /, **overrides: Any) -> HostConfig:
    """Settings from `overrides`, then the environment, then the file at `path`, then
    the defaults. Raises ConfigFileError or pydantic's ValidationError."""
    values = read_config_file(path) if path is not None else {}

    class _Loaded(HostConfig):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, env_settings, _Values(settings_cls, values))

    loaded = _Loaded(**{k: v for k, v in overrides.items() if v is not None})
    return HostConfig.model_construct(loaded.model_fields_set, **dict(loaded))
