"""Choosing the tier of a module: the interpreter engine, or the module compiled ahead of
time (compiler.py) and run as its own guest.

    tier="interp"  the engine guest interprets the module (the default)
    tier="aot"     compile now (or take the cached guest) and run native code; a module
                   the AOT tier cannot compile raises AotCompileError
    tier="auto"    native code if the module's compiled guest is cached; otherwise the
                   interpreter at once, and a compile in a background thread, so that
                   sandboxes made after it finishes run native code. A failed compile
                   is logged once and the module stays on the interpreter. Background
                   compiles run one at a time (CPython's takes minutes and GBs).

An AOT guest speaks the interpreter engine's ABI (guests/wasm/wasm_abi.h, implemented over
wasm2c's output by guests/aot/runtime.c), so the sandbox around it is the same
WasmSandbox: windows, host imports, WASI, traps, snapshots and restore are unchanged.
Like the interpreter, each compiled guest is started once per process and config and
then spawned from that snapshot (WasmSandbox.engine(guest=...); the template mechanism
shares its image between sandboxes); WasmSandbox.load checks that the guest holds the
module it is given (by the modules' hashes the guest carries).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from ...errors import ArgumentError
from ..module import WasmModule
from ..sandbox import WasmSandbox
from . import compiler

Tier = Literal["auto", "interp", "aot"]
TIERS: tuple[str, ...] = ("auto", "interp", "aot")

log = logging.getLogger("sandbox.wasm.aot")

_lock = threading.Lock()
_slots = threading.Semaphore(1)
_compiling: dict[str, threading.Thread] = {}  # by module id: background compiles
_failed: dict[str, str] = {}  # module id -> why it stays on the interpreter
# Called once a compile ends: (the compiled guest, None) or (None, why it failed).
Listener = Callable[[Path | None, str | None], None]
_listeners: dict[str, list[Listener]] = {}  # by module id: told when its compile ends


def check_tier(tier: object) -> Tier:
    if tier not in TIERS:
        raise ArgumentError(f"tier must be one of {', '.join(map(repr, TIERS))}, not {tier!r}")
    return tier  # type: ignore[return-value]


def _note_failure(module: WasmModule, why: str) -> None:
    ident = compiler.module_id(module)
    with _lock:
        first = ident not in _failed
        _failed[ident] = why
    if first:
        log.warning("Wasm module %s stays on the interpreter: %s", ident[:12], why)


def _background(module: WasmModule, limits: compiler.Limits | None) -> None:
    ident = compiler.module_id(module)
    path: Path | None = None
    why: str | None = None
    try:
        with _slots:  # one background compile at a time: a big one takes GBs and minutes
            path = compiler.compile_module(module, limits)
    except Exception as exc:  # any failure: the module stays on the interpreter
        why = str(exc)
        _note_failure(module, why)
    finally:
        with _lock:
            _compiling.pop(ident, None)
            listeners = _listeners.pop(ident, [])
    for listener in listeners:
        _tell(listener, path, why)


def _tell(listener: Listener, path: Path | None, why: str | None) -> None:
    try:
        listener(path, why)
    except Exception:  # a listener's failure is its own: the others are still told
        log.exception("a listener of a Wasm AOT compile failed")


def compile_in_background(
    module: WasmModule,
    limits: compiler.Limits | None = None,
    *,
    done: Listener | None = None,
) -> threading.Thread | None:
    """Starts compiling `module` in a daemon thread unless it is compiled, compiling or
    failed before; returns the running thread (None if there is nothing to wait for).
    `limits`: of the compile this call starts (a running one keeps its own). `done`
    is called once with (the compiled guest's path, None) or (None, why the module stays
    on the interpreter): from the compile's thread, or at once from this one if that is
    known already."""
    ident = compiler.module_id(module)
    known: tuple[Path | None, str | None] | None = None
    with _lock:
        thread = _compiling.get(ident)
        if ident in _failed:
            known = (None, _failed[ident])
        elif thread is None:
            try:
                path = compiler.lookup(module)
            except compiler.AotCompileError:
                path = None  # the compile reports it
            if path is not None:
                known = (path, None)
            else:
                thread = threading.Thread(
                    target=_background,
                    args=(module, limits),
                    name=f"wasm-aot-{ident[:12]}",
                    daemon=True,
                )
                _compiling[ident] = thread
                thread.start()
        if known is None and done is not None:
            _listeners.setdefault(ident, []).append(done)
    if known is not None:
        if done is not None:
            _tell(done, *known)
        return None
    return thread


def failure(module: WasmModule) -> str | None:
    """Why `module` is on the interpreter after an "auto" compile failed (None if not)."""
    with _lock:
        return _failed.get(compiler.module_id(module))


def guest_for(module: WasmModule, tier: Tier, limits: compiler.Limits | None = None) -> Path | None:
    """The compiled guest that runs `module` in the tier asked for, or None for the
    interpreter engine (see the module doc: "aot" compiles now, "auto" starts a
    background compile when nothing is cached; `limits`: the compile's)."""
    if tier == "aot":
        return compiler.compile_module(module, limits)
    if tier == "auto":
        try:
            path = compiler.lookup(module)
        except compiler.AotCompileError as exc:  # no wasm2c or no C compiler here
            _note_failure(module, str(exc))
            return None
        if path is None:
            compile_in_background(module, limits)
        return path
    return None


def is_native(sb: WasmSandbox) -> bool:
    """Whether `sb` runs a compiled module's guest (not the interpreter engine)."""
    return "aot_module_id" in sb.functions
