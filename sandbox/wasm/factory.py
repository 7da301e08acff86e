"""`from_wasm`: a module validated on the host, loaded and instantiated in a new engine
sandbox (what `Sandbox.from_wasm` does; registered as the "wasm" guest kind)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from .. import kinds
from ..arguments import check_reset
from ..config import ResetMode, SandboxConfig
from ..errors import ArgumentError, WasmLinkError
from . import aot
from .module import FuncType, WasmModule, load
from .sandbox import WASI_MODULE, Imports, WasmSandbox
from .wasi import WasiConfig, WasiContext


def _check_wasi_imports(mod: WasmModule, context: WasiContext) -> None:
    """Raises WasmLinkError for a WASI import that does not exist or has another type."""
    for imp in mod.func_imports:
        if imp.module != WASI_MODULE:
            continue
        entry = context.functions.get(imp.name)
        if entry is None:
            raise WasmLinkError(f"unknown import: {WASI_MODULE}.{imp.name}")
        ft = imp.type
        if not isinstance(ft, FuncType) or (ft.params, ft.results) != (
            entry.params,
            entry.results,
        ):
            raise WasmLinkError(
                f"incompatible import type: {WASI_MODULE}.{imp.name} is imported as {ft}"
            )


def from_wasm(
    module: bytes | str | os.PathLike[str] | WasmModule,
    *,
    imports: Imports | None = None,
    wasi: WasiConfig | None = None,
    config: SandboxConfig | None = None,
    reset: ResetMode = "none",
    output: Callable[[str], None] | None = None,
    cls: type[WasmSandbox] | None = None,
    timeout: float | None = None,
    tier: str = "interp",
) -> WasmSandbox:
    """See Sandbox.from_wasm. `cls`: the class of the sandbox, WasmSandbox or a subclass
    that adds behaviour (the function host's WASI http handler). `timeout`: the limit
    of the module's start function (default: the config's call limit). `tier`: see
    sandbox.wasm.aot.tier."""
    check_reset(reset)
    tier_ = aot.check_tier(tier)
    if wasi is not None and not isinstance(wasi, WasiConfig):
        raise ArgumentError(f"wasi must be a WasiConfig, not {type(wasi).__name__}")
    if imports is not None and not isinstance(imports, Mapping):
        raise ArgumentError(f"imports must map module names to mappings, not {imports!r}")
    mod = module if isinstance(module, WasmModule) else load(module)
    host: dict[tuple[str, str], Callable[..., Any]] = {}
    for mod_name, funcs in (imports or {}).items():
        if not isinstance(funcs, Mapping):
            raise ArgumentError(f"imports[{mod_name!r}] must map names to callables")
        for name, fn in funcs.items():
            if not callable(fn):
                raise ArgumentError(f"import {mod_name}.{name} is not callable")
            host[(mod_name, name)] = fn
    context: WasiContext | None = None
    if any(imp.module == WASI_MODULE for imp in mod.imports):
        context = WasiContext(wasi if wasi is not None else WasiConfig())
        try:
            _check_wasi_imports(mod, context)
        except BaseException:
            context.close()
            raise
    try:
        sb = aot.engine_for(mod, tier_, cls=cls or WasmSandbox, config=config, output=output)
    except BaseException:
        if context is not None:
            context.close()
        raise
    try:
        sb.wasi = context
        handle, mod = sb.load(mod)
        sb.make_main(sb.instantiate(handle, mod, host, timeout=timeout), reset)
    except BaseException:
        sb.close()
        raise
    return sb


kinds.register("wasm", from_wasm)
