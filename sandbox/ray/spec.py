"""What a cluster pool runs, as it travels to the nodes: a `GuestSpec` (the guest kind,
the digest that names it, its config and callables) and its payload bytes, which the
caller puts in Ray's object store once and each node actor fetches once.

- native: the bytes of a saved `Snapshot` (the snapshot file format, checksummed and, with
  $SANDBOX_SNAPSHOT_KEY set on both sides, authenticated). The caller makes it from the
  guest (`Sandbox(guest).snapshot()`) or is given it; the node writes it to its cache
  directory once and reads it with `Snapshot.load`, which checks it like any snapshot
  file (a payload is untrusted input on the node), and maps it as the sealed memfd every
  member shares copy-on-write.
- wasm: the module's bytes. A Wasm sandbox's snapshot lives in memory only (its imports
  are Python callables and its WASI context host objects: `WasmSnapshot.save` refuses),
  so each node instantiates the module once and snapshots that; every member of the
  node's pool spawns from that snapshot.
- python: no bytes. The interpreter's snapshot is made once per node process from the
  CPython build that the `python` extra installs on the node (the same package
  everywhere: a pinned version); functions travel with each call as shipped source.

Host functions (native), imports (Wasm) and host functions (Python) travel inside the
spec, pickled by Ray (cloudpickle): they run on the node, in the node actor's process.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..config import SandboxConfig
from ..errors import ArgumentError
from ..pool import SandboxPool as LocalPool
from ..sandbox import Sandbox
from ..snapshot import Snapshot

Kind = Literal["native", "wasm", "python"]
WASM_MAGIC = b"\0asm"
WASM_SUFFIXES = (".wasm",)


@dataclass(frozen=True)
class GuestSpec:
    """A pool's guest, as a node needs it besides the payload bytes. `digest` names
    the snapshot (SHA-256 of the kind, the payload and the config): pools of the same
    guest share one node pool per size."""

    kind: Kind
    digest: str
    config: SandboxConfig | None = None
    host_functions: Mapping[str, Callable[..., Any]] | None = field(default=None, compare=False)
    imports: Mapping[str, Mapping[str, Callable[..., Any]]] | None = field(
        default=None, compare=False
    )


def _digest(kind: str, payload: bytes, config: SandboxConfig | None) -> str:
    h = hashlib.sha256(kind.encode() + b"\0")
    h.update(config.model_dump_json().encode() if config is not None else b"-")
    h.update(b"\0")
    h.update(payload)
    return h.hexdigest()


def snapshot_bytes(snapshot: Snapshot) -> bytes:
    """`snapshot` in the snapshot file format (through a temporary file: the format is
    written by `Snapshot.save`, in one place)."""
    with tempfile.TemporaryDirectory(prefix="sandbox-ray-") as tmp:
        path = Path(tmp) / "guest.snap"
        snapshot.save(path)
        return path.read_bytes()


def _is_wasm_path(path: Path) -> bool:
    if path.suffix in WASM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) == WASM_MAGIC
    except OSError:
        return False  # a bundled guest's name, or missing: Sandbox() says which


def prepare(
    guest: object,
    *,
    config: SandboxConfig | None = None,
    host_functions: Mapping[str, Callable[..., Any]] | None = None,
    imports: Mapping[str, Mapping[str, Callable[..., Any]]] | None = None,
) -> tuple[GuestSpec, bytes]:
    """On the caller's machine: the spec and payload of `guest` (None or a native guest's
    path or bundled name, a `Snapshot`, a Wasm module's bytes or path, or "python")."""
    if config is not None and not isinstance(config, SandboxConfig):
        raise ArgumentError(f"config must be a SandboxConfig, not {type(config).__name__}")
    kind: Kind
    if isinstance(guest, str) and guest == "python":
        kind, payload = "python", b""
    elif isinstance(guest, bytes | bytearray | memoryview):
        kind, payload = "wasm", bytes(guest)
    elif isinstance(guest, Snapshot):
        if config is not None:
            raise ArgumentError("a snapshot carries its own config; do not pass config=")
        kind, payload = "native", snapshot_bytes(guest)
        config = guest.config
    elif guest is None or isinstance(guest, str | os.PathLike):
        path = Path(guest) if guest is not None else None
        if path is not None and _is_wasm_path(path):
            kind, payload = "wasm", path.read_bytes()
        else:
            kind = "native"
            with Sandbox(guest, config=config) as sb:  # checks the guest here, typed
                payload = snapshot_bytes(sb.snapshot())
    else:
        raise ArgumentError(
            "a cluster pool runs a native guest (path or bundled name), a Snapshot, a Wasm "
            f'module (bytes or path) or "python", not {type(guest).__name__}'
        )
    if imports is not None and kind != "wasm":
        raise ArgumentError("imports= is for Wasm modules; native and Python guests take "
                            "host_functions=")  # fmt: skip
    if host_functions is not None and kind == "wasm":
        raise ArgumentError("a Wasm module takes imports=, not host_functions=")
    spec = GuestSpec(kind, _digest(kind, payload, config), config, host_functions, imports)
    return spec, payload


def open_pool(spec: GuestSpec, payload: bytes, size: int, cache_dir: Path) -> LocalPool[Any]:
    """On a node: the local pool of `size` members for `spec` (made from its payload)."""
    factory: Callable[[], Any]
    if spec.kind == "native":
        cache_dir.mkdir(parents=True, exist_ok=True)
        path = cache_dir / f"{spec.digest}.snap"
        if not path.exists():
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(payload)
            os.replace(tmp, path)
        snap = Snapshot.load(path)  # checked like any snapshot file
        return LocalPool(snapshot=snap, size=size, host_functions=spec.host_functions)
    if spec.kind == "wasm":
        with Sandbox.from_wasm(payload, imports=spec.imports, config=spec.config) as sb:
            wasm_snap = sb.snapshot()
        factory = functools.partial(wasm_snap.spawn, reset="per_call")
    else:
        factory = functools.partial(
            Sandbox, "python", config=spec.config, host_functions=spec.host_functions,
            reset="per_call",
        )  # fmt: skip
    return LocalPool(factory=factory, size=size)
