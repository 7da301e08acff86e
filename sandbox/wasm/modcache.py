"""The Wasm module cache: a module is validated and loaded into an engine (decoded and
compiled to the interpreter's pre-decoded form inside the VM, or copied into its
compiled AOT guest) once per machine, and every later `from_wasm` of the same bytes
starts from that state.

Two states are cached. The engine right after `wasm_load`, before `wasm_instantiate`:
the module's compiled form in the engine heap and nothing else; every sandbox
instantiates its own instance in a copy of it (imports bound, memories, globals and
tables made, the start function run, all with the sandbox's own imports and WASI). And,
for a module without a start function, the engine right after from_wasm instantiated
it, its imports unbound: nothing of the module has run then, so a copy with the new
sandbox's imports and WASI context bound (`spawn`) is what instantiating would give.
WASI arguments, environment, preopens and stdio live in each sandbox's WasiContext on
the host, never in the engine's memory.

    in memory  per (module SHA-256, engine config, engine build): the WasmSnapshot of
               the instantiated engine (no start function) or of the loaded one, and
               the module's handles in it (the last CACHE_SIZE modules)
    on disk    <cache root>/wasm-modules/<module sha256>-<key>.snap (sandbox.cachedir),
               the loaded engine (only: an instantiated one could be saved and read
               back with sandbox.wasm.savedstate, which checks its windows' page
               tables, but is not cached on disk yet), for
               modules whose load took DISK_MIN_LOAD_S or more; a Snapshot file
               (Snapshot.save: written to a temporary file, fsynced, renamed into
               place; SHA-256 trailer, HMAC with $SANDBOX_SNAPSHOT_KEY) whose labels
               say what it holds; <key> hashes the cache format, the engine build (the
               SHA-256 of its ELF), wasmtime's version and the config

A file is untrusted: Snapshot.load's checks (truncated, corrupt, another format or
ABI, inconsistent state), then the labels must name this module, this engine build,
this validator, this format and the config asked for. A file that fails any check is
logged (logger `sandbox.wasm.cache`) with the reason and ignored: the module is
compiled afresh and the file rewritten. A file is written from a background thread
(`flush()` waits for the writes in progress), so the first from_wasm does not wait for
the disk.

A disk entry made for the interpreter also stands for the module's validation (the
host validated those bytes, with the same wasmtime, before writing it): from_wasm in
the "interp" tier then skips validating them again. Trust in the cache directory is
trust in what runs: it is created private to the user (0700), and with
$SANDBOX_SNAPSHOT_KEY set only files authenticated with that key are read.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cachedir import BackgroundWrites, cache_subdir, touch
from ..config import ResetMode, SandboxConfig
from ..errors import SnapshotError
from ..guests import resolve_guest
from ..snapshot import Snapshot
from .module import WasmModule, forget_validated, has_start, read_types, validator_version
from .sandbox import WasmSandbox, wasm_config
from .savedstate import is_u32
from .state import EngineState, Instance, WasmSnapshot, bind_imports
from .wasi import WasiConfig

log = logging.getLogger("sandbox.wasm.cache")

FORMAT = "1"  # bump when what a cached engine holds or its labels change meaning
KIND = "wasm-loaded"
CACHE_SIZE = 16  # loaded engines kept in memory (CPython's: ~55 MB of memfd each)
SUBDIR = "wasm-modules"
# A loaded engine is written to disk only if the load took this long: reading a file
# back (~4 ms for the 2 MB of a small module's engine) costs more than loading a small
# module afresh (~1 ms); CPython's 13 MB build takes ~170 ms to load.
DISK_MIN_LOAD_S = 0.02
_SPECTEST = "spectest"  # the interpreter engine's built-in module


@dataclass(frozen=True)
class Loaded:
    """An engine with `module` loaded (`snapshot`) and the module's handle in it, or,
    for a module without a start function, instantiated too (`instance`: its handle;
    the snapshot's state binds no imports: `spawn` binds each sandbox's own)."""

    snapshot: WasmSnapshot
    handle: int
    module: WasmModule
    instance: int | None = None


_Key = tuple[str, SandboxConfig, str]  # module sha256, engine config, engine build
_memory: OrderedDict[_Key, Loaded] = OrderedDict()
_lock = threading.Lock()
_builds: dict[tuple[str, int, int, int], str] = {}
_writes = BackgroundWrites(SUBDIR, "Wasm module cache", log)


def cache_dir() -> Path:
    return cache_subdir(SUBDIR)


def engine_build(guest: Path) -> str:
    """The SHA-256 of an engine guest's ELF (hashed once per process and file
    version)."""
    st = os.stat(guest)
    ident = (os.fspath(guest), st.st_ino, st.st_size, st.st_mtime_ns)
    with _lock:
        found = _builds.get(ident)
    if found is None:
        found = hashlib.sha256(Path(guest).read_bytes()).hexdigest()
        with _lock:
            _builds[ident] = found
    return found


def _file(digest: str, config: SandboxConfig, build: str) -> Path:
    h = hashlib.sha256()
    for part in (FORMAT, build, validator_version(), config.model_dump_json()):
        h.update(part.encode() + b"\0")
    return cache_dir() / f"{digest}-{h.hexdigest()[:24]}.snap"


def _labels(build: str, loaded: Loaded) -> dict[str, str]:
    module = loaded.module
    return {
        "kind": KIND,
        "format": FORMAT,
        "module": module.sha256,
        "module_size": str(len(module.data)),
        "engine": build,
        "validator": validator_version(),
        "handle": str(loaded.handle),
        "instance": "" if loaded.instance is None else str(loaded.instance),
        "registered": ",".join(sorted(loaded.snapshot.wasm_state.registered)),
    }


def find(
    data: bytes, digest: str, config: SandboxConfig | None, guest: Path | None = None
) -> Loaded | None:
    """The loaded engine for the module `data` (SHA-256 `digest`), from memory or
    disk, or None. `guest`: a compiled module's guest (None: the interpreter)."""
    config = wasm_config(config)
    engine = guest if guest is not None else resolve_guest("wasm")
    build = engine_build(engine)
    key = (digest, config, build)
    with _lock:
        found = _memory.get(key)
        if found is not None:
            _memory.move_to_end(key)
            return found
    found = _read(data, digest, config, build)
    if found is not None:
        _keep(key, found)
    return found


def _keep(key: _Key, loaded: Loaded) -> None:
    with _lock:
        _memory[key] = loaded
        _memory.move_to_end(key)
        while len(_memory) > CACHE_SIZE:
            _memory.popitem(last=False)


def _read(data: bytes, digest: str, config: SandboxConfig, build: str) -> Loaded | None:
    path = _file(digest, config, build)
    try:
        snap = Snapshot.load(path)
    except FileNotFoundError:
        return None
    except (SnapshotError, OSError) as exc:
        log.warning("ignoring cached Wasm module %s: %s; compiling it afresh", path.name, exc)
        return None
    touch(path)
    why, handle, instance, registered = _check(snap, digest, len(data), config, build)
    module: WasmModule | None = None
    if why is None:
        try:
            module = read_types(data, digest)
            if instance is not None and has_start(data):
                why = "an instantiated engine of a module with a start function"
        except (IndexError, ValueError) as exc:  # not what the entry says it validated
            why = f"the module's types cannot be read ({exc})"
    if why is not None or module is None:
        log.warning("ignoring cached Wasm module %s: %s; compiling it afresh", path.name, why)
        return None
    state = EngineState(registered=registered, rewind=snap.cpu)
    if instance is not None:
        state.instances[instance] = _unbound(module)
        state.main = instance
    return Loaded(WasmSnapshot(snap, state, WasmSandbox), handle, module, instance)


def _unbound(module: WasmModule) -> Instance:
    return Instance(module, (None,) * len(module.func_imports))


def _check(
    snap: Snapshot, digest: str, size: int, config: SandboxConfig, build: str
) -> tuple[str | None, int, int | None, set[str]]:
    """Why the snapshot file is not the engine asked for (None if it is), the module's
    handle, its instance's (None: loaded, not instantiated) and the engine's registered
    modules."""
    labels = snap.labels
    expected = {
        "kind": KIND,
        "format": FORMAT,
        "module": digest,
        "module_size": str(size),
        "engine": build,
        "validator": validator_version(),
    }
    names = {
        "kind": "not a cached Wasm module",
        "format": "written by another version of the cache",
        "module": "it holds another module (a swapped or renamed file)",
        "module_size": "it holds another module (a swapped or renamed file)",
        "engine": "made by another build of the engine",
        "validator": "validated by another wasmtime",
    }
    for name, value in expected.items():
        if labels.get(name) != value:
            why = f"{names[name]} ({name} {labels.get(name)!r}, expected {value!r})"
            return why, 0, None, set()
    if snap.config != config:
        return "made for another sandbox config", 0, None, set()
    text, instance = labels.get("handle", ""), labels.get("instance", "")
    if not is_u32(text) or not (instance == "" or is_u32(instance)):
        return f"malformed handles {text!r}, {instance!r}", 0, None, set()
    registered = set(filter(None, labels.get("registered", "").split(",")))
    if not registered <= {_SPECTEST}:
        return f"unexpected registered modules {sorted(registered)}", 0, None, set()
    if "wasm_invoke" not in snap.functions:
        return "not a Wasm engine's snapshot", 0, None, set()
    return None, int(text), int(instance) if instance else None, registered


def keep_loaded(
    sb: WasmSandbox,
    handle: int,
    module: WasmModule,
    guest: Path | None,
    *,
    memory: bool,
    load_s: float,
) -> None:
    """Caches the engine of `sb`, which has just loaded `module` (handle `handle`) in
    `load_s` seconds: on disk (in the background) if that took DISK_MIN_LOAD_S or more,
    and in memory if `memory` (a module with a start function; one without is kept
    once instantiated, see keep_instantiated)."""
    if not memory and load_s < DISK_MIN_LOAD_S:
        return
    loaded = Loaded(sb.snapshot(), handle, module)
    build = engine_build(guest if guest is not None else resolve_guest("wasm"))
    config = loaded.snapshot.config
    if memory:
        _keep((module.sha256, config, build), loaded)
    if load_s >= DISK_MIN_LOAD_S:
        _write_later(
            _file(module.sha256, config, build), loaded.snapshot.base, _labels(build, loaded)
        )


def keep_instantiated(sb: WasmSandbox, handle: int, module: WasmModule, guest: Path | None) -> None:
    """Caches in memory the engine of `sb` as from_wasm instantiated `module` in it
    (`sb.instantiated`), with its imports unbound, if the module has no start function
    (nothing of the sandbox's own has run then). Kept in memory only (its file could
    be written with sandbox.wasm.savedstate: not done, the loaded engine's file already
    spares the long part, compiling the module)."""
    snap = sb.instantiated
    main = snap.wasm_state.main if snap is not None else None
    if snap is None or main is None or has_start(module.data):
        return
    state = snap.wasm_state.copy()
    state.instances = {main: _unbound(module)}
    state.wasi_config = None
    loaded = Loaded(WasmSnapshot(snap.base, state, WasmSandbox), handle, module, main)
    build = engine_build(guest if guest is not None else resolve_guest("wasm"))
    _keep((module.sha256, snap.config, build), loaded)


def spawn(
    loaded: Loaded,
    *,
    cls: type[WasmSandbox],
    host_imports: Mapping[tuple[str, str], Callable[..., Any]],
    wasi: WasiConfig | None,
    reset: ResetMode,
    output: Callable[[str], None] | None,
) -> WasmSandbox:
    """A sandbox of class `cls` from an instantiated engine (`loaded.instance`), with
    its own imports and WASI configuration bound as instantiate binds them. Raises
    WasmLinkError."""
    assert loaded.instance is not None
    state = loaded.snapshot.wasm_state.copy()
    bound = bind_imports(loaded.module, state.registered, wasi is not None, host_imports)
    state.instances = {loaded.instance: Instance(loaded.module, bound)}
    state.wasi_config = wasi
    snap = WasmSnapshot(loaded.snapshot.base, state, cls)
    sb = cls.from_wasm_snapshot(snap, reset=reset, output=output)
    sb.instantiated = snap
    return sb


def _write_later(path: Path, snap: Snapshot, labels: dict[str, str]) -> None:
    """Saves the loaded engine to `path` in the background (cachedir.BackgroundWrites)."""
    _writes.start(path, lambda target: snap.save(target, labels=labels))


def flush(timeout: float | None = None) -> None:
    """Waits for the cache files being written (tests, benchmarks, short programs)."""
    _writes.flush(timeout)


def clear_memory() -> None:
    """Forgets the loaded engines kept in memory (the disk cache stays): the next
    from_wasm of each module reads its file, as a new process would."""
    with _lock:
        _memory.clear()
    forget_validated()
