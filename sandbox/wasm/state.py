"""The host's side of a Wasm engine's state (module instances, their imports, the WASI
configuration) and `WasmSnapshot`, which pairs it with the engine sandbox's Snapshot."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..config import ResetMode, SandboxConfig
from ..cpu import CpuState
from ..errors import ArgumentError, WasmEngineError, WasmLinkError
from ..layout import PAGE, Layout
from ..snapshot import Snapshot
from .module import WasmModule
from .wasi import WasiConfig
from .windows import pool_reach

if TYPE_CHECKING:
    from .abi import InvokeEncoder
    from .sandbox import WasmSandbox

WASI_MODULE = "wasi_snapshot_preview1"
# What WasmSnapshot.save writes beside the engine's snapshot (its labels, under the file's
# checksum); sandbox/wasm/savedstate.py reads them.
STATE_LABEL = "sandbox.wasm.state"
INSTANCES_LABEL = f"{STATE_LABEL}.instances"  # handle:module-sha256, comma-separated
REGISTERED_LABEL = f"{STATE_LABEL}.registered"  # module names, comma-separated
MAIN_LABEL = f"{STATE_LABEL}.main"  # the main instance's handle, or empty
HOT_HEAP_PAGES = 64  # engine-heap pages a sandbox made from a snapshot populates


@dataclass(frozen=True)
class Instance:
    module: WasmModule
    # Per function import index: the Python callable, WASI (served by the sandbox's
    # WasiContext), or None (linked inside the engine).
    host_imports: tuple[Callable[..., Any] | WasiImport | None, ...]
    # Per export name: the encoder of its calls (made on the first call, then shared by
    # every sandbox with this instance: restores, snapshots and their spawns).
    invokers: dict[str, InvokeEncoder] = field(
        default_factory=dict, compare=False, hash=False, repr=False
    )


class WasiImport:
    """Marks a function import served by the sandbox's WasiContext."""


WASI = WasiImport()


def bind_imports(
    module: WasmModule,
    registered: set[str],
    wasi: bool,
    host_imports: Mapping[tuple[str, str], Callable[..., Any]] | None,
) -> tuple[Callable[..., Any] | WasiImport | None, ...]:
    """What each function import of `module` is bound to in an engine with the
    `registered` modules (None: linked inside the engine), WASI (`wasi`: the sandbox
    has a WasiContext) or `host_imports[(module, name)]`. Raises WasmLinkError."""
    bound: list[Callable[..., Any] | WasiImport | None] = []
    for imp in module.func_imports:
        if imp.module in registered:
            bound.append(None)
            continue
        if imp.module == WASI_MODULE and wasi:
            bound.append(WASI)
            continue
        fn = (host_imports or {}).get((imp.module, imp.name))
        if fn is None:
            raise WasmLinkError(f"unknown import: {imp.module}.{imp.name} ({imp.type})")
        bound.append(fn)
    for imp in module.imports:
        if imp.kind != "func" and imp.module not in registered:
            raise WasmLinkError(
                f"unknown import: {imp.module}.{imp.name} ({imp.kind}); only functions "
                "can be imported from the host"
            )
    return tuple(bound)


@dataclass
class EngineState:
    """The host's side of an engine's state, copied into WasmSnapshots."""

    instances: dict[int, Instance] = field(default_factory=dict)
    registered: set[str] = field(default_factory=lambda: {"spectest"})
    main: int | None = None  # the instance from_wasm made
    rewind: CpuState | None = None  # registers between calls, to resume after a fault
    wasi_config: WasiConfig | None = None

    def copy(self) -> EngineState:
        return EngineState(
            dict(self.instances), set(self.registered), self.main, self.rewind, self.wasi_config
        )


class WasmSnapshot:
    """A WasmSandbox's snapshot: the engine's `Snapshot` (`base`) and the host's side of
    the engine state (module instances, imports, WASI configuration). `spawn` (and
    `Sandbox.from_snapshot`) makes a WasmSandbox of it, with a fresh WASI context.
    `save` writes it to a file if its imports are all WASI or linked inside the engine
    (Python callables cannot be written); `sandbox.wasm.load_snapshot` reads it."""

    def __init__(self, base: Snapshot, state: EngineState, kind: type[WasmSandbox]) -> None:
        self.base = base
        self.wasm_state = state
        self.kind = kind  # the class of the sandbox it was taken of: what spawn makes
        self.heap_pages = self._heap_pages()
        # Where a sandbox in this state can write (windows.pool_reach): what its resets
        # search for written pages until it grows a memory.
        self.scan_ranges = pool_reach(base.layout, base.image.read)

    @property
    def config(self) -> SandboxConfig:
        return self.base.config

    @property
    def layout(self) -> Layout:
        return self.base.layout

    def with_wasi(self, wasi: WasiConfig) -> WasmSnapshot:
        """This state, spawning sandboxes with the WASI configuration `wasi` (the same
        memory: e.g. other host directories at the guest paths the program knows)."""
        state = self.wasm_state.copy()
        state.wasi_config = wasi
        return WasmSnapshot(self.base, state, self.kind)

    def _heap_pages(self) -> list[tuple[int, int, bool]]:
        """The engine-heap pages that hold data in this snapshot (the engine's instances,
        compiled code...), at most HOT_HEAP_PAGES of them: a new sandbox populates them
        writable in the host before its first call, so KVM maps each 8-page group with
        one fault instead of one per page (measured: -100 us on a first call, +6 private
        pages for a small module). Not those in the heap's last 2 MiB (the windows pool's
        state, which a call of a module that grows no memory does not touch): a page
        populated there is a private copy that every reset walks to and copies back
        (measured: -1.5 us on an AOT module's restore + add)."""
        layout = self.base.layout
        start, end = layout.heap_base, layout.heap_base + layout.heap_size
        pages: list[tuple[int, int, bool]] = []
        budget = HOT_HEAP_PAGES * PAGE
        limit = min(end, (end - 1) & ~((2 << 20) - 1))  # below the heap's last 2 MiB
        for addr, length in self.base.image.data_ranges():
            if start <= addr < limit and budget > 0:
                length = min(length, limit - addr, budget)
                pages.append((addr, length, True))
                budget -= length
        return pages

    def spawn(
        self,
        *,
        host_functions: Mapping[str, Callable[..., Any]] | None = None,
        output: Callable[[str], None] | None = None,
        reset: ResetMode = "none",
        cls: type[WasmSandbox] | None = None,
    ) -> WasmSandbox:
        """A new WasmSandbox in this state (`cls`: WasmSandbox or a subclass; default:
        the class of the sandbox the snapshot was taken of)."""
        if host_functions:
            raise ArgumentError("a Wasm sandbox takes imports, not host_functions")
        return (cls or self.kind).from_wasm_snapshot(self, reset=reset, output=output)

    def save(
        self,
        path: str | os.PathLike[str],
        *,
        key: bytes | str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        """Writes the snapshot to `path` (Snapshot.save: atomic, checksummed, with `key`
        or $SANDBOX_SNAPSHOT_KEY authenticated): the engine's memory and registers, and
        in its labels which module each instance runs, the registered names and the main
        instance. `sandbox.wasm.load_snapshot(path, module, wasi=...)` reads it back, the
        reader handing the modules and the WASI configuration (sandbox/wasm/savedstate.py).
        Raises WasmEngineError if an instance imports Python callables (they cannot be
        written to a file: keep such a snapshot in memory, or call from_wasm again)."""
        state = self.wasm_state
        for instance in state.instances.values():
            if any(bound is not None and bound is not WASI for bound in instance.host_imports):
                raise WasmEngineError(
                    "a Wasm sandbox's snapshot whose imports are Python callables cannot be "
                    "saved to a file; keep it in memory, or call Sandbox.from_wasm again"
                )
        if any(name.startswith(STATE_LABEL) for name in labels or {}):
            raise ArgumentError(f"labels starting with {STATE_LABEL!r} are the engine state's")
        own = {
            INSTANCES_LABEL: ",".join(
                f"{h}:{i.module.sha256}" for h, i in sorted(state.instances.items())
            ),
            REGISTERED_LABEL: ",".join(sorted(state.registered)),
            MAIN_LABEL: "" if state.main is None else str(state.main),
        }
        self.base.save(path, key=key, labels={**(labels or {}), **own})
