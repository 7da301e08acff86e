"""Checks of what callers hand the Sandbox API (typed errors, before any KVM work), and
the safe description of an exception a host function raised."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any

from .abi import NAME_MAX
from .config import MAX_TIMEOUT, SandboxConfig
from .errors import ArgumentError

HostFunction = Callable[..., Any]
DEFAULT_CONFIG = SandboxConfig()


def describe(exc: BaseException) -> str:
    """`Type: message` of an exception, safe to encode (lone surrogates escaped) and
    safe to compute (an exception whose __str__ raises is described by its type)."""
    try:
        text = f"{type(exc).__name__}: {exc}"
    except Exception:
        text = f"{type(exc).__name__}: <unprintable message>"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def check_config(config: object) -> SandboxConfig:
    if config is None:
        return DEFAULT_CONFIG
    if not isinstance(config, SandboxConfig):
        raise ArgumentError(
            f"config must be a SandboxConfig, not {type(config).__name__} "
            "(build one with SandboxConfig(**values))"
        )
    return config


def check_path(what: str, value: object) -> None:
    if value is not None and not isinstance(value, (str, os.PathLike)):
        raise ArgumentError(f"{what} must be a path or a name, not {type(value).__name__}")


def check_reset(reset: object) -> None:
    if reset not in ("none", "per_call"):
        raise ArgumentError(f"reset must be 'none' or 'per_call', not {reset!r}")


def check_timeout(timeout: object) -> float:
    """A call's time limit: a finite number of seconds, > 0 and at most MAX_TIMEOUT."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise ArgumentError(f"timeout must be a number of seconds, not {timeout!r}")
    if not (0 < timeout <= MAX_TIMEOUT and math.isfinite(timeout)):
        raise ArgumentError(
            f"timeout must be more than 0 and at most {MAX_TIMEOUT:g} seconds, not {timeout!r}"
        )
    return float(timeout)


def check_host_functions(funcs: Mapping[str, HostFunction] | None) -> dict[str, HostFunction]:
    """A copy of `funcs`, checked. On every spawn of a Wasm sandbox (its engine's two host
    functions): a dict skips the ABC check of Mapping, and a name too short to exceed
    NAME_MAX bytes in UTF-8 (4 bytes a character at most) is not encoded (~1 us)."""
    out: dict[str, HostFunction] = {}
    if funcs is None:
        return out
    if type(funcs) is not dict and not isinstance(funcs, Mapping):
        raise ArgumentError(f"host_functions must map names to callables, not {funcs!r}")
    for name, fn in funcs.items():
        if (
            not isinstance(name, str)
            or not name
            or (len(name) * 4 > NAME_MAX and len(name.encode(errors="replace")) > NAME_MAX)
        ):
            raise ArgumentError(
                f"host function name {name!r} must be a str of 1 to {NAME_MAX} bytes"
            )
        if not callable(fn):
            raise ArgumentError(f"host function {name!r} is not callable")
        out[name] = fn
    return out
