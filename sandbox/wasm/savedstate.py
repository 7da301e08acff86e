"""An instantiated engine on disk: a WasmSnapshot whose imports are all WASI or linked
inside the engine, saved as a Snapshot file, and read back with its host-side state
rebuilt by the reader, not taken from the file.

What the file holds beyond the engine's memory and registers (in the Snapshot's labels,
covered by its checksum): the instances' handles and their modules' SHA-256, the
engine's registered module names, and the main instance. What the reader supplies: the
modules themselves (matched by SHA-256: the host reads their types from its own copy),
the WASI configuration (preopened host directories are the host's to decide, never the
file's) and the sandbox class. Imports are bound again as `instantiate` binds them, so a
module that imports anything but WASI cannot be saved or read.

The engine's memory is checked like any snapshot's (Snapshot.load), and its page tables
beyond the runtime's own must be exactly Wasm windows `Windows.grow` could have written
(windows.check_tables): ring 3 reaches through them only the linear-memory pages handed
out, so a sandbox's resets search every page it can write (pool_reach).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ..errors import SnapshotError, WasmEngineError
from ..snapshot import Snapshot
from .module import WasmModule
from .sandbox import WasmSandbox
from .state import WASI, EngineState, Instance, WasmSnapshot, bind_imports
from .wasi import WasiConfig
from .windows import check_tables

LABEL = "sandbox.wasm.state"  # the labels this module writes start with it
_INSTANCES, _REGISTERED, _MAIN = (f"{LABEL}.{name}" for name in ("instances", "registered", "main"))
_U32 = 1 << 32


def save(
    snap: WasmSnapshot, path: str | os.PathLike[str], labels: Mapping[str, str] | None = None
) -> None:
    """Writes `snap` to `path` (Snapshot.save: atomic, checksummed, authenticated with
    $SANDBOX_SNAPSHOT_KEY if set) with `labels` beside the engine state's own. Raises
    WasmEngineError if an instance imports a Python callable."""
    state = snap.wasm_state
    for instance in state.instances.values():
        if any(bound is not None and bound is not WASI for bound in instance.host_imports):
            raise WasmEngineError(
                "an engine whose imports are Python callables cannot be saved to a file"
            )
    own = {
        _INSTANCES: ",".join(f"{h}:{i.module.sha256}" for h, i in sorted(state.instances.items())),
        _REGISTERED: ",".join(sorted(state.registered)),
        _MAIN: "" if state.main is None else str(state.main),
    }
    if any(name.startswith(LABEL) for name in labels or {}):
        raise ValueError(f"labels starting with {LABEL!r} are this module's")
    snap.base.save(path, labels={**(labels or {}), **own})


def read(path: str | os.PathLike[str]) -> Snapshot:
    """The engine snapshot of a file `save` wrote, checked (Snapshot.load, with the
    windows' page tables held to windows.check_tables). Raises SnapshotError and
    FileNotFoundError."""
    return Snapshot.load(path, page_tables=check_tables)


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
    names = set(filter(None, labels.get(_REGISTERED, "").split(",")))
    if not names <= registered:
        raise SnapshotError(f"registered modules {sorted(names - registered)} not expected")
    state = EngineState(registered=names, rewind=base.cpu, wasi_config=wasi)
    for item in filter(None, labels.get(_INSTANCES, "").split(",")):
        handle, _, digest = item.partition(":")
        module = modules.get(digest)
        if not _is_u32(handle) or module is None or int(handle) in state.instances:
            raise SnapshotError(f"instance {item[:80]!r} is not one of the modules given")
        bound = bind_imports(module, names, wasi is not None, None)
        state.instances[int(handle)] = Instance(module, bound)
    main = labels.get(_MAIN, "")
    if main and (not _is_u32(main) or int(main) not in state.instances):
        raise SnapshotError(f"main instance {main[:20]!r} is not one of its instances")
    state.main = int(main) if main else None
    return WasmSnapshot(base, state, kind)


def _is_u32(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 10 and int(text) < _U32
