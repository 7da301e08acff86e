"""`Deployment`: a stored function made runnable: its limits, signature and pool."""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass, field
from pathlib import Path

from ..abi import Signature, Tag
from ..config import MiB, SandboxConfig
from ..errors import ConfigError, GuestAbiMismatch, GuestNotFound, KvmError, KvmUnavailable
from ..sandbox import Sandbox
from .config import HostConfig
from .errors import ApiError, bad_request
from .manifest import FunctionRecord, FunctionSpec
from .pool import FunctionPool

MIN_BUFFER = 64 * 1024


@dataclass(frozen=True)
class Limits:
    """A function's limits: its manifest's, or the host's defaults."""

    timeout_s: float
    max_concurrency: int
    max_queue: int
    warm: int

    @classmethod
    def resolve(cls, spec: FunctionSpec, config: HostConfig, *, strict: bool = True) -> Limits:
        """Raises ApiError (400) for a limit over what the host allows; with
        strict=False (functions stored under another config) clamps it instead."""
        timeout = spec.timeout_s if spec.timeout_s is not None else config.default_timeout_s
        concurrency = spec.max_concurrency or config.default_max_concurrency
        if strict and timeout > config.max_timeout_s:
            raise bad_request(
                f"timeout_s must be at most {config.max_timeout_s}", "InvalidManifest"
            )
        if strict and concurrency > config.max_concurrency_limit:
            raise bad_request(
                f"max_concurrency must be at most {config.max_concurrency_limit}",
                "InvalidManifest",
            )
        timeout = min(timeout, config.max_timeout_s)
        concurrency = min(concurrency, config.max_concurrency_limit)
        queue = spec.max_queue if spec.max_queue is not None else config.default_max_queue
        warm = spec.warm if spec.warm is not None else config.default_warm
        return cls(timeout, concurrency, queue, min(warm, concurrency))


def sandbox_config(spec: FunctionSpec, config: HostConfig) -> SandboxConfig:
    """Guest memory from the manifest; buffers big enough for the largest request body
    (base64 in http mode), but at most 1/8 of memory each."""
    memory = spec.memory_mib * MiB
    wanted = config.max_body_bytes * 4 // 3 + 64 * 1024
    size = max(MIN_BUFFER, min(wanted, memory // 8))
    size = (size + 4095) // 4096 * 4096
    return SandboxConfig(memory_size=memory, input_buffer_size=size, output_buffer_size=size)


def _getenv_for(environment: dict[str, str]) -> object:
    env = dict(environment)

    def getenv(*args: object) -> str | None:
        """Host function `getenv(name) -> str`; void if the variable is not set."""
        if len(args) == 1 and isinstance(args[0], str):
            return env.get(args[0])
        return None

    return getenv


def make_factory(blob: Path, spec: FunctionSpec, config: HostConfig) -> functools.partial[Sandbox]:
    return functools.partial(
        Sandbox,
        str(blob),
        config=sandbox_config(spec, config),
        host_functions={"getenv": _getenv_for(spec.environment)},  # type: ignore[dict-item]
        reset="per_call",
    )


def check_entry(sb: Sandbox, spec: FunctionSpec) -> Signature:
    """The entry's signature; raises ApiError (422) if the guest does not export it or
    (http mode) it is not `(str) -> str`."""
    sig = sb.functions.get(spec.entry)
    if sig is None:
        exports = ", ".join(sorted(sb.functions)) or "none"
        raise ApiError(
            422,
            "EntryNotFound",
            f"the module exports no function {spec.entry!r} (it exports: {exports})",
        )
    if spec.mode == "http" and (sig.params != (Tag.STR,) or sig.ret is not Tag.STR):
        raise ApiError(
            422,
            "BadEntrySignature",
            f"in http mode the entry must be (str) -> str, but it is {sig}",
        )
    return sig


async def open_sandbox(factory: functools.partial[Sandbox]) -> Sandbox:
    """A first sandbox of a module, on a worker thread: the module's validation. Raises
    ApiError: 422 for a module that is not a usable guest, 503/500 for KVM failures."""
    try:
        return await asyncio.to_thread(factory)
    except KvmUnavailable as exc:
        raise ApiError(503, "KvmUnavailable", str(exc)) from exc
    except KvmError as exc:
        raise ApiError(500, "KvmError", str(exc)) from exc
    except (GuestAbiMismatch, GuestNotFound) as exc:
        raise ApiError(422, "InvalidModule", f"not a usable guest: {exc}") from exc
    except ConfigError as exc:
        raise ApiError(422, "InvalidModule", f"{exc} (raise memory_mib)") from exc
    except Exception as exc:  # the ELF parser on hostile input: still the module's fault
        raise ApiError(422, "InvalidModule", f"not a usable guest: {exc!r}") from exc


@dataclass(eq=False)
class Deployment:
    """A function as it is served now. `problem` is set (and `pool` None) for a
    stored function that cannot run, e.g. its blob is corrupt."""

    record: FunctionRecord
    limits: Limits
    signature: Signature | None = None
    pool: FunctionPool | None = None
    problem: str | None = None
    retired: bool = field(default=False)

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def spec(self) -> FunctionSpec:
        return self.record.spec

    def info(self) -> dict[str, object]:
        """The JSON description of GET /functions/{name}."""
        sig = self.signature
        pool = self.pool
        return {
            "name": self.name,
            "version": self.record.version,
            "sha256": self.record.sha256,
            "size": self.record.size,
            "created_at": self.record.created_at,
            "updated_at": self.record.updated_at,
            "spec": self.spec.model_dump(),
            "signature": None if sig is None else str(sig),
            "params": None if sig is None else [t.type_name for t in sig.params],
            "returns": None if sig is None else sig.ret.type_name,
            "limits": {
                "timeout_s": self.limits.timeout_s,
                "max_concurrency": self.limits.max_concurrency,
                "max_queue": self.limits.max_queue,
                "warm": self.limits.warm,
            },
            "state": "ready" if self.problem is None else "failed",
            "problem": self.problem,
            "pool": {
                "size": pool.size if pool else 0,
                "idle": pool.idle if pool else 0,
                "busy": pool.busy if pool else 0,
                "queued": pool.queued if pool else 0,
            },
        }


def new_pool(name: str, limits: Limits, factory: functools.partial[Sandbox]) -> FunctionPool:
    return FunctionPool(
        factory,
        max_size=limits.max_concurrency,
        warm=limits.warm,
        max_queue=limits.max_queue,
        label=name[:10],
    )
