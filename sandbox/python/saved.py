"""A Python sandbox's state in a file: `PythonSnapshot.save(path)` in one process,
`sandbox.python.load_snapshot(path)` in another (or on another machine with the same
runtime), so that state built once (imports, data loaded, functions defined) starts
sandboxes anywhere without running that code again.

The file is a Wasm engine's snapshot file (`WasmSnapshot.save`: checksummed, optionally
authenticated with a key; read back by `sandbox.wasm.savedstate`, which holds the Wasm
windows' page tables to what the host writes) with labels of its own, under the same
checksum: this format's version, the guest runtime's SHA-256 (the request protocol the
interpreter in the file speaks), the tier, the start's token, the interpreter's
addresses (sandbox.python.interpreter.Addresses), the package set and the guest paths
of the directories it was started with, and the shipped functions it has defined.

What the file says is as untrusted as guest memory, which it is: the labels are parsed
strictly (SnapshotError naming the label), the module the instances run is the host's
own bundled build (matched by SHA-256; only its types are read: the code the instances
run is compiled inside the file's memory, and a hostile one is a hostile guest, which
the VM contains), the WASI configuration is rebuilt from what the reader passes (host
directories are the reader's to choose; only their guest paths must match the ones
CPython started with, since its libc keeps the descriptor of each), the mailbox's
guest-physical run is found again through the checked page tables, and a sandbox
spawned from the state must answer a request before the snapshot is returned. A label
that lies about which functions the guest knows costs a resend (the guest says it does
not know one, and the host sends its source).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Literal

from ..errors import ConfigError, SnapshotError
from ..wasm import savedstate
from ..wasm.sandbox import WasmSandbox
from ..wasm.savedstate import is_u32
from ..wasm.state import WasmSnapshot
from ..wasm.wasi import Preopen
from .build import default_build
from .interpreter import (
    MAILBOX_SIZE,
    RUNTIME_SOURCE,
    Addresses,
    Template,
    mailbox_run,
    python_config,
    unchecked_module,
    wasi_config,
)
from .packages import PackageSet

FORMAT = "1"  # bump when the labels change meaning
_PREFIX = "sandbox.python"
FORMAT_LABEL = f"{_PREFIX}.format"
RUNTIME_LABEL = f"{_PREFIX}.runtime"  # SHA-256 of the guest runtime's source
TIER_LABEL = f"{_PREFIX}.tier"
TOKEN_LABEL = f"{_PREFIX}.token"
ADDRESSES_LABEL = f"{_PREFIX}.addresses"  # call,serve,empty_tuple,none,mailbox,instance
PACKAGES_LABEL = f"{_PREFIX}.packages"  # the package set's key, or empty
PREOPENS_LABEL = f"{_PREFIX}.preopens"  # JSON: [[guest_path, read_only], ...]
KNOWN_LABEL = f"{_PREFIX}.known"  # shipped functions' keys, comma-separated
_HEX = frozenset("0123456789abcdef")
_TIERS: dict[str, Literal["interp", "aot"]] = {"interp": "interp", "aot": "aot"}
MAX_KNOWN = 10_000  # keys in the known-functions label (~330 KB of the 1 MiB header)


def _is_key(text: str) -> bool:
    """Whether `text` is a shipped function's key (shipping.ship: 32 hex digits)."""
    return len(text) == 32 and set(text) <= _HEX


def runtime_digest() -> str:
    """The SHA-256 of the guest runtime's source (what the interpreter's requests and
    replies mean)."""
    return hashlib.sha256(RUNTIME_SOURCE.read_bytes()).hexdigest()


def labels(tmpl: Template, known: frozenset[str]) -> dict[str, str]:
    """The labels a saved Python state carries beside the engine's (module doc)."""
    a = tmpl.addresses
    return {
        FORMAT_LABEL: FORMAT,
        RUNTIME_LABEL: runtime_digest(),
        TIER_LABEL: tmpl.tier,
        TOKEN_LABEL: tmpl.token.hex(),
        ADDRESSES_LABEL: ",".join(
            str(n) for n in (a.call, a.serve, a.empty_tuple, a.none, a.mailbox, a.instance)
        ),
        PACKAGES_LABEL: tmpl.packages.key if tmpl.packages else "",
        PREOPENS_LABEL: json.dumps([[p.guest_path, p.read_only] for p in tmpl.preopens]),
        # Keys of functions shipped here (well-formed), at most MAX_KNOWN: one left out
        # costs a resend of its source (the guest keeps its definition).
        KNOWN_LABEL: ",".join(sorted(k for k in known if _is_key(k))[:MAX_KNOWN]),
    }


def read(
    path: str | os.PathLike[str],
    *,
    packages: PackageSet | None,
    preopens: tuple[Preopen, ...],
    key: bytes | str | None,
) -> tuple[WasmSnapshot, Template, frozenset[str]]:
    """The engine snapshot, the template (the interpreter the state grew from, as far as
    the host needs it) and the known functions of a file `labels` described. Raises
    SnapshotError (the file, or what it says, is not usable here) and FileNotFoundError."""
    base = savedstate.read(path, key=key)
    where = os.fspath(path)
    found = base.labels
    if FORMAT_LABEL not in found:
        raise SnapshotError(f"{where}: not a Python sandbox's saved state")
    if found[FORMAT_LABEL] != FORMAT:
        shown = found[FORMAT_LABEL][:20]
        raise SnapshotError(f"{where}: saved state format {shown!r}, not {FORMAT}")
    if found.get(RUNTIME_LABEL) != runtime_digest():
        raise SnapshotError(f"{where}: saved by another version of the guest runtime")
    try:
        config = python_config(base.config)
    except ConfigError as exc:
        raise SnapshotError(f"{where}: {exc}") from None
    tier, token, numbers, known = _parse(found, where)
    if (tier == "aot") != ("aot_module_id" in base.functions):  # what the engine says
        raise SnapshotError(f"{where}: the tier label says {tier}; the engine in it is not")
    _check_settings(found, packages, preopens, where)
    module = unchecked_module(default_build())
    wasi = wasi_config(config, packages, preopens, token)
    try:
        snap = savedstate.attach(base, modules={module.sha256: module}, wasi=wasi)
    except SnapshotError as exc:
        raise SnapshotError(f"{where}: not a state of this interpreter build ({exc})") from None
    call, serve, empty_tuple, none, mailbox, instance = numbers
    if snap.wasm_state.main != instance:
        raise SnapshotError(f"{where}: the interpreter instance is not the engine's main one")
    probe = WasmSandbox.from_wasm_snapshot(snap)  # its machine is parked for the next
    try:
        if mailbox + MAILBOX_SIZE > probe.memory(0).size:
            raise SnapshotError(f"{where}: the mailbox is not in the interpreter's memory")
        run = mailbox_run(probe, mailbox)
    finally:
        probe.close()
    addresses = Addresses(call, serve, empty_tuple, none, mailbox, MAILBOX_SIZE, run, instance)
    tmpl = Template(snap, addresses, default_build(), packages, preopens, tier, token)
    return snap, tmpl, known


def _parse(
    found: Mapping[str, str], where: str
) -> tuple[Literal["interp", "aot"], bytes, tuple[int, ...], frozenset[str]]:
    """The tier, token, addresses and known functions the labels give, checked."""
    shown = found.get(TIER_LABEL, "")
    tier = _TIERS.get(shown)
    if tier is None:
        raise SnapshotError(f"{where}: tier {shown[:20]!r} is not interp or aot")
    token = found.get(TOKEN_LABEL, "")
    if len(token) != 32 or not set(token) <= _HEX:
        raise SnapshotError(f"{where}: malformed token label")
    numbers = found.get(ADDRESSES_LABEL, "").split(",")
    if len(numbers) != 6 or not all(is_u32(n) for n in numbers):
        raise SnapshotError(f"{where}: malformed addresses label")
    keys = [k for k in found.get(KNOWN_LABEL, "").split(",") if k]
    if not all(_is_key(k) for k in keys):
        raise SnapshotError(f"{where}: malformed known-functions label")
    return tier, bytes.fromhex(token), tuple(int(n) for n in numbers), frozenset(keys)


def _check_settings(
    found: Mapping[str, str],
    packages: PackageSet | None,
    preopens: tuple[Preopen, ...],
    where: str,
) -> None:
    """The reader's packages and directories must be the ones the state was started
    with (the packages by their set's key; the directories by guest path and mode)."""
    if found.get(PACKAGES_LABEL, "") != (packages.key if packages else ""):
        raise SnapshotError(
            f"{where}: saved with another package set; pass the packages it was made with"
        )
    try:
        saved = json.loads(found.get(PREOPENS_LABEL, "[]"))
    except (ValueError, RecursionError):  # (RecursionError: "[[[[..." nested deep)
        raise SnapshotError(f"{where}: malformed preopens label") from None
    given = [[p.guest_path, p.read_only] for p in preopens]
    if saved != given:
        shown = ", ".join(f"{g} ({'ro' if ro else 'rw'})" for g, ro in _pairs(saved)) or "none"
        raise SnapshotError(
            f"{where}: saved with the directories {shown[:400]}; give directories (preopens) "
            "with those guest paths and modes, in that order (the host directories may differ)"
        )


def _pairs(saved: object) -> Sequence[tuple[str, bool]]:
    """The (guest path, read-only) pairs of a preopens label, as far as they are."""
    if not isinstance(saved, list):
        return []
    return [
        (str(item[0]), bool(item[1])) for item in saved if isinstance(item, list) and len(item) == 2
    ]
