"""`@sandboxed(...)`: calling the function runs it in a fresh-state Python sandbox from a
pool shared by every call of it (made on the first call)."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar

from ..config import SandboxConfig
from ..pool import SandboxPool
from ..wasm.aot import Tier, check_tier

P = ParamSpec("P")
R = TypeVar("R")


class Sandboxed:
    """The callable `@sandboxed` makes: `f(*args, **kwargs)` runs the original in a
    pooled sandbox; `await f.acall(...)` from asyncio; `f.close()` releases the pool;
    `f.func` is the original."""

    def __init__(
        self,
        func: Callable[..., Any],
        *,
        size: int,
        config: SandboxConfig | None,
        host_functions: Mapping[str, Callable[..., Any]] | None,
        packages: Sequence[object] | None,
        timeout: float | None,
        tier: Tier = "interp",
    ) -> None:
        functools.update_wrapper(self, func)
        self.func = func
        self._options: dict[str, Any] = {
            "config": config,
            "host_functions": host_functions,
            "packages": packages,
            "tier": check_tier(tier),
        }
        self._size = size
        self._timeout = timeout
        self._pool: SandboxPool[Any] | None = None
        self._lock = threading.Lock()

    def pool(self) -> SandboxPool[Any]:
        with self._lock:
            if self._pool is None or self._pool.closed:
                from .sandbox import PythonSandbox

                options = self._options

                def factory() -> PythonSandbox:
                    return PythonSandbox(reset="per_call", **options)

                self._pool = SandboxPool(factory=factory, size=1, max_size=self._size)
            return self._pool

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        func, timeout = self.func, self._timeout
        return self.pool().use(lambda sb: sb.invoke(func, args, kwargs, timeout=timeout))

    async def acall(self, *args: Any, **kwargs: Any) -> Any:
        func, timeout = self.func, self._timeout
        return await self.pool().run(lambda sb: sb.invoke(func, args, kwargs, timeout=timeout))

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None


def sandboxed(
    func: Callable[..., Any] | None = None,
    *,
    size: int = 4,
    config: SandboxConfig | None = None,
    host_functions: Mapping[str, Callable[..., Any]] | None = None,
    packages: Sequence[object] | None = None,
    timeout: float | None = None,
    tier: Tier = "interp",
) -> Any:
    """Decorator: `@sandboxed` or `@sandboxed(size=..., timeout=..., packages=...)`.
    Each call runs in fresh state in one of at most `size` pooled Python sandboxes (of
    `tier`: see PythonSandbox); raises what PythonSandbox.call raises."""
    check_tier(tier)

    def wrap(f: Callable[..., Any]) -> Sandboxed:
        return Sandboxed(
            f,
            size=size,
            config=config,
            host_functions=host_functions,
            packages=packages,
            timeout=timeout,
            tier=tier,
        )

    return wrap(func) if func is not None else wrap
