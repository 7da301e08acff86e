"""`from_wasm`: a module validated on the host, loaded and instantiated in a new engine
sandbox (what `Sandbox.from_wasm` does; registered as the "wasm" guest kind)."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .. import kinds
from ..arguments import check_reset
from ..config import ResetMode, SandboxConfig
from ..errors import ArgumentError, WasmLinkError
from . import aot, modcache
from .module import FuncType, WasmModule, has_start, is_validated, read, remember, validated
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


def _module(
    source: bytes | str | os.PathLike[str] | WasmModule,
    config: SandboxConfig | None,
    tier: aot.Tier,
    limits: aot.Limits | None,
) -> tuple[WasmModule, Path | None, modcache.Loaded | None]:
    """The validated module, the compiled guest that runs it (None: the interpreter)
    and its cached engine if there is one. Validated once per process
    (module.validated), and not at all where the disk cache holds the module loaded in
    the interpreter (see modcache)."""
    if isinstance(source, WasmModule):
        mod = source
    else:
        data = read(source)
        digest = hashlib.sha256(data).hexdigest()
        if tier == "interp":
            found = modcache.find(data, digest, config)
            if found is not None:
                if not is_validated(digest):
                    remember(found.module)
                return found.module, None, found
            return validated(data, digest), None, None
        mod = validated(data, digest)
    guest = aot.guest_for(mod, tier, limits)
    return mod, guest, modcache.find(mod.data, mod.sha256, config, guest)


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
    on_engine: Callable[[WasmSandbox], None] | None = None,
    aot_limits: aot.Limits | None = None,
) -> WasmSandbox:
    """See Sandbox.from_wasm. `cls`: the class of the sandbox, WasmSandbox or a subclass
    that adds behaviour (the function host's WASI http handler). `timeout`: the limit
    of the module's start function (default: the config's call limit). `tier`: see
    sandbox.wasm.aot.tier; `aot_limits`: of a compile it starts. `on_engine`: called
    with the new sandbox before the module is instantiated in it (the function host
    registers start-ups to cancel them).

    The module's validation, its load into the engine and (without a start function)
    its instantiation are cached (modcache.py): a second from_wasm of the same bytes
    and config starts from that state, with its own imports and WASI bound."""
    check_reset(reset)
    tier_ = aot.check_tier(tier)
    if wasi is not None and not isinstance(wasi, WasiConfig):
        raise ArgumentError(f"wasi must be a WasiConfig, not {type(wasi).__name__}")
    if imports is not None and not isinstance(imports, Mapping):
        raise ArgumentError(f"imports must map module names to mappings, not {imports!r}")
    mod, guest, found = _module(module, config, tier_, aot_limits)
    host: dict[tuple[str, str], Callable[..., Any]] = {}
    for mod_name, funcs in (imports or {}).items():
        if not isinstance(funcs, Mapping):
            raise ArgumentError(f"imports[{mod_name!r}] must map names to callables")
        for name, fn in funcs.items():
            if not callable(fn):
                raise ArgumentError(f"import {mod_name}.{name} is not callable")
            host[(mod_name, name)] = fn
    uses_wasi = any(imp.module == WASI_MODULE for imp in mod.imports)
    wasi_config = (wasi if wasi is not None else WasiConfig()) if uses_wasi else None
    if found is not None and found.instance is not None:
        # Instantiated once already (no start function): this sandbox's own imports
        # and WASI context are bound to a copy of that instance.
        sb = modcache.spawn(
            found, cls=cls or WasmSandbox, host_imports=host, wasi=wasi_config, reset=reset,
            output=output,
        )  # fmt: skip
        try:
            if sb.wasi is not None:
                _check_wasi_imports(mod, sb.wasi)
            if on_engine is not None:
                on_engine(sb)
        except BaseException:
            sb.close()
            raise
        return sb
    context: WasiContext | None = None
    if wasi_config is not None:
        context = WasiContext(wasi_config)
        try:
            _check_wasi_imports(mod, context)
        except BaseException:
            context.close()
            raise
    try:
        sb, handle = _engine(mod, found, cls or WasmSandbox, config, output, guest)
    except BaseException:
        if context is not None:
            context.close()
        raise
    try:
        sb.wasi = context
        if on_engine is not None:
            on_engine(sb)
        sb.make_main(sb.instantiate(handle, mod, host, timeout=timeout), reset)
        if not has_start(mod.data):
            modcache.keep_instantiated(sb, handle, mod, guest)
    except BaseException:
        sb.close()
        raise
    return sb


def _engine(
    mod: WasmModule,
    found: modcache.Loaded | None,
    cls: type[WasmSandbox],
    config: SandboxConfig | None,
    output: Callable[[str], None] | None,
    guest: Path | None,
) -> tuple[WasmSandbox, int]:
    """An engine sandbox with `mod` loaded (from the cached loaded engine `found`, or
    a new one whose loaded state is then cached), and the module's handle."""
    if found is not None:
        return cls.from_wasm_snapshot(found.snapshot, output=output), found.handle
    if guest is None:
        sb = cls.engine(config=config, output=output)
    else:
        sb = cls.engine(config=config, output=output, guest=guest)
    try:
        started = time.perf_counter()  # load checks that a compiled guest holds `mod`
        handle, mod = sb.load(mod)
        load_s = time.perf_counter() - started
        modcache.keep_loaded(sb, handle, mod, guest, memory=has_start(mod.data), load_s=load_s)
    except BaseException:
        sb.close()
        raise
    return sb, handle


kinds.register("wasm", from_wasm, builtin=True)
