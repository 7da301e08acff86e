"""Reading back a Wasm engine saved with `WasmSnapshot.save`: the engine snapshot is
checked like any snapshot file (Snapshot.load), with the page tables of its Wasm windows
held to what `Windows.grow` writes (windows.check_tables: ring 3 reaches through them
only the linear-memory pages handed out, nothing in guard space and no page table, so a
sandbox's resets search every page it can write); the host-side state is rebuilt from
the file's labels (which module each instance runs, by SHA-256; the registered names;
the main instance) and from what the reader supplies, never from the file: the modules
themselves (the host reads their types from its own copy) and the WASI configuration
(preopened host directories are the host's to decide). Imports are bound again as
`instantiate` binds them, so a module that imports anything but WASI cannot be read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from ..errors import ArgumentError, SnapshotError
from ..snapshot import Snapshot
from .module import WasmModule, load
from .sandbox import WasmSandbox
from .state import (
    INSTANCES_LABEL,
    MAIN_LABEL,
    REGISTERED_LABEL,
    WASI_MODULE,
    EngineState,
    Instance,
    WasmSnapshot,
    bind_imports,
)
from .wasi import WasiConfig
from .windows import check_tables

_U32 = 1 << 32
ModuleSource = WasmModule | bytes | str | os.PathLike[str]


def load_snapshot(
    path: str | os.PathLike[str],
    modules: ModuleSource | Sequence[ModuleSource],
    *,
    wasi: WasiConfig | None = None,
    key: bytes | str | None = None,
) -> WasmSnapshot:
    """A Wasm sandbox's snapshot saved with `WasmSnapshot.save`, for
    `Sandbox.from_snapshot`. `modules`: the module (or modules) its instances run, as
    `from_wasm` takes them (validated unless a WasmModule), matched by SHA-256; `wasi`:
    the WASI configuration of the sandboxes made from it (default, if a module imports
    WASI: `WasiConfig()`); `key`: as for `Snapshot.load`. Raises SnapshotError (the file,
    or what it says, is not usable), WasmLinkError, WasmModuleError, FileNotFoundError."""
    given = [modules] if isinstance(modules, WasmModule | bytes | str | os.PathLike) else modules
    found: dict[str, WasmModule] = {}
    for item in given:
        if not isinstance(item, WasmModule | bytes | str | os.PathLike):
            raise ArgumentError(f"modules takes Wasm modules or paths, not {type(item).__name__}")
        module = item if isinstance(item, WasmModule) else load(item)
        found[module.sha256] = module
    if wasi is not None and not isinstance(wasi, WasiConfig):
        raise ArgumentError(f"wasi must be a WasiConfig, not {type(wasi).__name__}")
    if wasi is None and any(i.module == WASI_MODULE for m in found.values() for i in m.imports):
        wasi = WasiConfig()
    base = read(path, key=key)
    try:
        return attach(base, modules=found, wasi=wasi)
    except SnapshotError as exc:
        raise SnapshotError(f"{os.fspath(path)}: {exc}") from None


def read(path: str | os.PathLike[str], *, key: bytes | str | None = None) -> Snapshot:
    """The engine snapshot of a file `WasmSnapshot.save` wrote, checked (Snapshot.load,
    with the windows' page tables held to windows.check_tables). Raises SnapshotError
    and FileNotFoundError."""
    return Snapshot.load(path, key=key, page_tables=check_tables)


def attach(
    base: Snapshot,
    *,
    modules: Mapping[str, WasmModule],
    wasi: WasiConfig | None,
    registered: frozenset[str] = frozenset({"spectest"}),
    kind: type[WasmSandbox] = WasmSandbox,
) -> WasmSnapshot:
    """The WasmSnapshot of an engine snapshot `read` returned, its host-side state
    rebuilt from what its labels say and what the caller gives: `modules`, the
    instances' modules by SHA-256; `wasi`, the WASI configuration of the sandboxes
    spawned from it (None: no WASI); `registered`, the module names the engine may have
    registered. Raises SnapshotError (what the labels say is not usable) and
    WasmLinkError (an import the state cannot bind)."""
    labels = base.labels
    if "wasm_invoke" not in base.functions:
        raise SnapshotError("not a Wasm engine's snapshot")
    names = set(filter(None, labels.get(REGISTERED_LABEL, "").split(",")))
    if not names <= registered:
        raise SnapshotError(f"registered modules {sorted(names - registered)} not expected")
    state = EngineState(registered=names, rewind=base.cpu, wasi_config=wasi)
    for item in filter(None, labels.get(INSTANCES_LABEL, "").split(",")):
        handle, _, digest = item.partition(":")
        module = modules.get(digest)
        if not is_u32(handle) or module is None or int(handle) in state.instances:
            raise SnapshotError(f"instance {item[:80]!r} is not one of the modules given")
        bound = bind_imports(module, names, wasi is not None, None)
        state.instances[int(handle)] = Instance(module, bound)
    main = labels.get(MAIN_LABEL, "")
    if main and (not is_u32(main) or int(main) not in state.instances):
        raise SnapshotError(f"main instance {main[:20]!r} is not one of its instances")
    state.main = int(main) if main else None
    return WasmSnapshot(base, state, kind)


def is_u32(text: str) -> bool:
    """Whether a label's text is a u32 in decimal (an engine handle)."""
    return text.isascii() and text.isdigit() and len(text) <= 10 and int(text) < _U32
