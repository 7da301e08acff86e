"""The Python interpreter's disk cache: the initialised interpreter (what `_start` makes
once per process, ~1.5 s, 1.25 s of it CPython starting inside the VM) saved once per
machine, so that a new process's first `Sandbox("python")` reads a file instead.

    <cache root>/python-templates/<key>.snap   (sandbox.cachedir; LRU-trimmed with the
                                               other caches' limit)

`<key>` hashes everything the started interpreter depends on: this cache's format, the
interpreter build (SHA-256 of the module), the engine guest that runs it (the
interpreter engine by its SHA-256; the compiled guest of the "aot" tier by its
content-addressed name in the cache, size and modification time, since hashing its
25 MB costs 50 ms: a snapshot holds the guest's code, so even a file changed in place
under the same identity would give a consistent, older interpreter), the validator's
version, the sandbox
config, the package set (content-addressed), the guest runtime's source, the mailbox
size and the boot command. Sandboxes with preopened directories use an interpreter
started with empty directories at their guest paths (interpreter.placeholders), so it
is cached too, and a directory's contents never shape it.

A file is untrusted (sandbox.wasm.savedstate and Snapshot.load check it: checksum, the
runtime's system area, Wasm windows only as the host maps them, CPU state), its labels
must name this key, and the interpreter it holds must pass the checks a fresh start
passes (the random token in the mailbox, the call slot, the handshake's addresses), on a
sandbox spawned from it, before it is used. A file that fails is logged (logger
`sandbox.python.cache`) and the interpreter is started afresh and saved again. The file
is written by a thread of its own (not a daemon: a process that exits finishes the
write), so the first sandbox does not wait for the disk. Off with
`KVM_SANDBOX_PYTHON_CACHE=0`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from ..cachedir import BackgroundWrites, cache_subdir, entry_key, touch
from ..config import SandboxConfig
from ..errors import SnapshotError, WasmLinkError
from ..wasm import savedstate
from ..wasm.module import WasmModule
from ..wasm.state import WasmSnapshot
from ..wasm.wasi import WasiConfig

log = logging.getLogger("sandbox.python.cache")

FORMAT = "1"  # bump when what a cached interpreter holds or its labels change meaning
SUBDIR = "python-templates"
ENVIRONMENT = "KVM_SANDBOX_PYTHON_CACHE"
_KEY, _TOKEN, _HANDSHAKE = "python.key", "python.token", "python.handshake"
_writes = BackgroundWrites(SUBDIR, "Python interpreter cache", log)


def enabled() -> bool:
    """Whether the cache is on: unless KVM_SANDBOX_PYTHON_CACHE is 0, false, no or off."""
    return os.environ.get(ENVIRONMENT, "1").strip().lower() not in ("0", "false", "no", "off")


def key(*parts: str) -> str:
    """The cache key of an interpreter started from these inputs (see the module doc)."""
    return entry_key(FORMAT, *parts)


def path_for(cache_key: str) -> Path:
    return cache_subdir(SUBDIR) / f"{cache_key}.snap"


def find(
    cache_key: str,
    config: SandboxConfig,
    module: WasmModule,
    wasi_for: Callable[[bytes], WasiConfig],
) -> tuple[WasmSnapshot, bytes, tuple[int, ...]] | None:
    """The saved interpreter of `cache_key`, the token it was started with and the
    handshake's numbers, or None if there is none or it is not usable (logged). Its
    engine state is rebuilt around `module` and `wasi_for(token)`, the configuration
    the start had."""
    path = path_for(cache_key)
    try:
        base = savedstate.read(path)
        why = _unusable(base.labels, cache_key) or (
            "made for another sandbox config" if base.config != config else None
        )
        if why is None:
            token = bytes.fromhex(base.labels[_TOKEN])
            modules = {module.sha256: module}
            snap = savedstate.attach(base, modules=modules, wasi=wasi_for(token))
            if snap.wasm_state.main is None:
                why = "it has no interpreter instance"
    except FileNotFoundError:
        return None
    except (SnapshotError, WasmLinkError, OSError) as exc:
        why = str(exc)
    if why is not None:
        _ignore(path, why)
        return None
    touch(path)
    log.debug("read the Python interpreter from %s", path)
    return snap, token, tuple(int(n) for n in base.labels[_HANDSHAKE].split(","))


def _unusable(labels: Mapping[str, str], cache_key: str) -> str | None:
    """Why a cached interpreter's labels are not this cache's for `cache_key`."""
    token, numbers = labels.get(_TOKEN, ""), labels.get(_HANDSHAKE, "").split(",")
    if labels.get(_KEY) != cache_key:
        return "it was saved for other inputs (a renamed file)"
    if len(token) != 32 or not all(c in "0123456789abcdef" for c in token):
        return "malformed token"
    if len(numbers) != 5 or not all(n.isascii() and n.isdigit() and len(n) <= 10 for n in numbers):
        return "malformed handshake"
    return None


def _ignore(path: Path, why: str) -> None:
    log.warning("ignoring the cached Python interpreter %s: %s; starting it afresh", path.name, why)


def forget(cache_key: str, why: str) -> None:
    """Logs why a found interpreter failed its checks (the next save replaces it)."""
    _ignore(path_for(cache_key), why)


def save_later(
    cache_key: str, snap: WasmSnapshot, token: bytes, handshake: tuple[int, ...]
) -> None:
    """Saves a started interpreter in the background (cachedir.BackgroundWrites)."""
    labels = {_KEY: cache_key, _TOKEN: token.hex(), _HANDSHAKE: ",".join(map(str, handshake))}
    _writes.start(path_for(cache_key), lambda target: snap.save(target, labels=labels))


def flush(timeout: float | None = None) -> None:
    """Waits for the cache files being written (tests, short programs)."""
    _writes.flush(timeout)
