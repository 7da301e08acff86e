"""Starting the interpreter once: a Wasm engine sandbox runs CPython's `_start` with the
guest runtime (guest/sandbox_guest.py), which ends the program with os._exit(0) once it
is initialised; the host reads the addresses the runtime reported, checks them against
the interpreter's memory, and snapshots the result. Every Python
sandbox is spawned from such a snapshot (cached per process, by build, config,
packages and directories).

The addresses are read from CPython 3.12's wasm32 object layouts (checked, not
trusted): `PyTypeObject.tp_call` at offset 64 (after the var-object header, tp_name,
tp_basicsize, tp_itemsize, tp_dealloc, tp_vectorcall_offset, tp_getattr, tp_setattr,
tp_as_async, tp_repr, tp_as_number, tp_as_sequence, tp_as_mapping, tp_hash: 16 fields of
4 bytes), and `PyByteArrayObject.ob_alloc`/`ob_start` at offsets 12 and 20. The
mailbox's start must hold the random token the host gave the runtime, and a ping
through `call` must answer, or the build is refused (PythonStartError).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import struct
import tempfile
import threading
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Literal

from ..cachedir import cache_subdir
from ..config import MiB, SandboxConfig
from ..errors import ConfigError, HostFunctionError, PythonStartError
from ..guests import resolve_guest
from ..wasm import WasiConfig, WasiExit, WasmSandbox, aot
from ..wasm.aot import Tier
from ..wasm.modcache import engine_build
from ..wasm.module import WasmModule, load, read_types, remember, validator_version
from ..wasm.sandbox import WasmSnapshot
from ..wasm.wasi import Preopen, WasiContext
from ..wasm.windows import PAGE, Windows
from . import tcache
from .build import Build, default_build
from .packages import PACKAGES_GUEST_PATH, PackageSet

MAILBOX_SIZE = 4 * MiB  # request and reply; values are bounded by it
HOST_SEEK = 0x5342585048434C4C  # the guest's lseek(0, HOST_SEEK): a host call
BOOT_TIMEOUT = 120.0
HEAP_SIZE = 64 * MiB  # the engine heap: CPython's compiled code takes ~40 MiB of it
DEFAULT_CONFIG = SandboxConfig(memory_size=256 * MiB, heap_size=HEAP_SIZE)
TP_CALL_OFFSET = 64
BYTEARRAY_ALLOC_OFFSET = 12
RUNTIME_FILE = "<sandbox_guest>"
RUNTIME_SOURCE = Path(__file__).with_name("guest") / "sandbox_guest.py"
BOOT = (
    "import sys,types;m=types.ModuleType('sandbox_guest');m.__file__='" + RUNTIME_FILE + "';"
    "sys.modules['sandbox_guest']=m;"
    "exec(compile(sys.argv[1],'" + RUNTIME_FILE + "','exec'),m.__dict__);m._boot(sys.argv[2:])"
)
_HANDSHAKE = re.compile(rb"SBXPY1 (\d+) (\d+) (\d+) (\d+) (\d+)\n")


def python_config(config: SandboxConfig | None) -> SandboxConfig:
    """The VM of a Python sandbox: 256 MiB by default, 64 MiB of it the engine's heap
    (CPython's compiled form); the rest, less 8 KiB, is the most linear memory the
    interpreter can grow to (its memory limit: beyond it, MemoryError)."""
    if config is None:
        return DEFAULT_CONFIG
    if not isinstance(config, SandboxConfig):
        raise ConfigError(f"config must be a SandboxConfig, not {type(config).__name__}")
    if config.heap_size is None:
        config = SandboxConfig.model_validate({**config.model_dump(), "heap_size": HEAP_SIZE})
    heap = config.heap_size or 0
    if heap < 48 * MiB:
        raise ConfigError("a Python sandbox needs heap_size of at least 48 MiB")
    if config.memory_size < heap + 48 * MiB:
        raise ConfigError(
            f"a Python sandbox needs memory_size of at least heap_size + 48 MiB "
            f"({(heap + 48 * MiB) // MiB} MiB)"
        )
    return config


@dataclass(frozen=True)
class Addresses:
    """Where things are in the interpreter's linear memory (see the module docstring)."""

    call: int  # PyVectorcall_Call's table index
    serve: int  # the runtime's _serve function object
    empty_tuple: int
    none: int  # Py_None: what _serve returns
    mailbox: int  # the mailbox bytearray's buffer
    mailbox_size: int
    mailbox_guest: int | None  # its guest-physical address, if its pages are contiguous
    instance: int  # the interpreter's instance in the engine


@dataclass(frozen=True)
class Template:
    """An initialised interpreter: the engine snapshot and where things are in it."""

    wasm: WasmSnapshot
    addresses: Addresses
    build: Build
    packages: PackageSet | None
    preopens: tuple[Preopen, ...]
    tier: Literal["interp", "aot"]  # what runs it: the engine, or its compiled guest
    token: bytes  # the random token of its start (in its WASI arguments)

    @property
    def settings(self) -> tuple[str, tuple[tuple[str, bool], ...]]:
        """What the states of sandboxes must share to be restored into each other: the
        package set and the directories' guest paths and modes."""
        opens = tuple((p.guest_path, p.read_only) for p in self.preopens)
        return (self.packages.key if self.packages else "", opens)


_templates: dict[tuple[object, ...], Template] = {}
EMPTY_SUBDIR = "python-empty"  # the cache's empty directory (placeholders)
_empty: Path | None = None  # this process's, if that one is not empty
_lock = threading.Lock()
_compile_lock = threading.Lock()
_modules: dict[str, WasmModule] = {}
_read_types: dict[str, WasmModule] = {}  # the same, types read but not validated


def _module(build: Build) -> WasmModule:
    mod = _modules.get(build.sha256)
    if mod is None:
        mod = _modules[build.sha256] = load(build.module)
    return mod


def module() -> WasmModule:
    """The interpreter's module (the bundled build, rewritten: build.py), validated once
    per process; what the AOT tier compiles (`python -m sandbox python compile`)."""
    build = default_build()
    with _lock:
        return _module(build)


def guest(tier: Tier) -> Path | None:
    """The compiled guest that runs the interpreter in `tier`, or None for the engine
    (sandbox.wasm.aot.tier.guest_for: "aot" compiles now if nothing is cached, minutes
    on two cores; "auto" starts that compile in the background and answers None until
    it is done)."""
    tier = aot.check_tier(tier)
    if tier == "interp":
        return None
    if tier == "aot":  # cached: a stat (compile_module checks the module first: 0.15 s)
        found = aot.compiler.lookup(unchecked_module(default_build()))
        if found is not None:
            return found
        mod = module()
        with _compile_lock:  # threads asking at once wait for one compile, not run two
            return aot.compiler.lookup(mod) or aot.guest_for(mod, tier)
    return aot.guest_for(module(), tier)


def unchecked_module(build: Build) -> WasmModule:
    """The interpreter's module with its types read but not validated (unless it was
    already), for a lookup in a disk cache whose entries stand for a validation of these
    bytes on this machine: a compiled guest (compile_module validates first) or a saved
    interpreter (its key names the validator), as the Wasm module cache's files do."""
    found = _modules.get(build.sha256) or _read_types.get(build.sha256)
    if found is None:  # ~25 ms: once per process (the AOT tier's lookup, then the cache)
        digest = sha256(build.module).hexdigest()
        found = _read_types[build.sha256] = read_types(build.module, digest)
    return found


def template(
    config: SandboxConfig,
    packages: PackageSet | None,
    preopens: tuple[Preopen, ...],
    tier: Tier = "interp",
) -> Template:
    """The initialised interpreter for these settings: made on first use (about a
    second; with tier="aot" and nothing compiled, the compile first), then cached for
    the process."""
    build = default_build()
    path = guest(tier)  # outside the lock: a compile takes minutes
    file = (str(path), path.stat().st_mtime_ns) if path is not None else None
    started_with = placeholders(preopens)
    key = (build.sha256, config, packages.key if packages else "", started_with, MAILBOX_SIZE, file)
    with _lock:
        found = _templates.get(key)
        if found is None:
            found = _cached_or_started(build, config, packages, started_with, path)
            _templates[key] = found
        return found


def _remove_if_empty(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()


def placeholders(preopens: tuple[Preopen, ...]) -> tuple[Preopen, ...]:
    """The directories an interpreter starts with for sandboxes given `preopens`: their
    guest paths and modes, each an empty directory of the runtime's. The sandboxes get
    the real ones (`wasi_config` with the caller's `preopens`, on the template's
    snapshot): CPython's libc keeps only each directory's descriptor and guest path from
    the start, so one interpreter serves every set of host directories at the same
    guest paths (it was started anew, ~2 s and ~50 MB, for each set), and it can be
    cached on disk; what a directory holds is not read at the start (a .pth file in a
    directory mounted over site-packages is not run), only by the calls."""
    if not preopens:
        return ()
    empty = cache_subdir(EMPTY_SUBDIR, create=True)
    if any(empty.iterdir()):  # something wrote there: a directory of this process's
        global _empty
        if _empty is None:
            _empty = Path(tempfile.mkdtemp(prefix="sandbox-python-empty-"))
            atexit.register(_remove_if_empty, _empty)
        empty = _empty
    return tuple(
        Preopen(host_path=empty, guest_path=p.guest_path, read_only=p.read_only) for p in preopens
    )


def _cached_or_started(
    build: Build,
    config: SandboxConfig,
    packages: PackageSet | None,
    preopens: tuple[Preopen, ...],
    path: Path | None,
) -> Template:
    """The interpreter from the disk cache (tcache), else started (and saved there)."""
    if not tcache.enabled():
        return _start(build, config, packages, preopens, path)[0]

    def wasi_for(token: bytes) -> WasiConfig:
        return wasi_config(config, packages, preopens, token)

    if path is None:  # the interpreter engine (200 KB): by its contents (checkouts that
        engine = engine_build(resolve_guest("wasm"))  # build the same bytes share it)
    else:  # a compiled guest (25 MB; hashing it costs 50 ms): by its content-addressed
        st = path.stat()  # name in the shared cache, and a rebuild's new size or mtime
        engine = f"{path.name}:{st.st_size}:{st.st_mtime_ns}"
    cache_key = tcache.key(
        build.sha256, engine, validator_version(), config.model_dump_json(),
        wasi_for(bytes(16)).model_dump_json(),
    )  # fmt: skip
    mod = unchecked_module(build)
    found = tcache.find(cache_key, config, mod, wasi_for)
    if found is not None:
        snap, token, handshake = found
        try:
            addresses = _checked_addresses(snap, token, handshake)
        except PythonStartError as exc:
            tcache.forget(cache_key, str(exc))
        else:
            remember(mod)
            _modules.setdefault(build.sha256, mod)
            return Template(snap, addresses, build, packages, preopens, _tier(path), token)
    made, handshake = _start(build, config, packages, preopens, path)
    tcache.save_later(cache_key, made.wasm, made.token, handshake)
    return made


def _checked_addresses(snap: WasmSnapshot, token: bytes, handshake: tuple[int, ...]) -> Addresses:
    """The checks a start makes of its interpreter (_locate), made on a sandbox spawned
    from a cached one (its machine is then parked for the caller's first sandbox)."""
    assert snap.wasm_state.main is not None
    probe = WasmSandbox.from_wasm_snapshot(snap)
    try:
        return _locate(probe, token, handshake, snap.wasm_state.main)
    finally:
        probe.close()


def wasi_config(
    config: SandboxConfig,
    packages: PackageSet | None,
    preopens: tuple[Preopen, ...],
    token: bytes,
) -> WasiConfig:
    """What the interpreter's start sees of the world (and every sandbox spawned from
    it): the boot command, the guest runtime's source, the mailbox size, the random
    token the runtime writes into the mailbox, the packages to import, the
    directories."""
    all_preopens = list(preopens)
    if packages is not None:
        all_preopens.insert(
            0, Preopen(host_path=packages.directory, guest_path=PACKAGES_GUEST_PATH)
        )
    return WasiConfig(
        args=[
            "python",
            "-I",
            "-c",
            BOOT,
            RUNTIME_SOURCE.read_text(),
            str(MAILBOX_SIZE),
            token.hex(),
            ",".join(packages.modules) if packages else "",
        ],
        preopens=all_preopens,
        output_limit=max(config.output_limit, 64 * 1024),
    )


def _start(
    build: Build,
    config: SandboxConfig,
    packages: PackageSet | None,
    preopens: tuple[Preopen, ...],
    path: Path | None,
) -> tuple[Template, tuple[int, ...]]:
    """Starts the interpreter: its template and the handshake's numbers."""
    token = os.urandom(16)
    mod = _module(build)
    sb = WasmSandbox.engine(config=config, guest=path)
    try:
        sb.wasi = WasiContext(wasi_config(config, packages, preopens, token))
        handle, mod = sb.load(mod)
        python = sb.instantiate(handle, mod)
        try:
            sb.invoke(python, "_start", [], timeout=BOOT_TIMEOUT)
        except HostFunctionError as exc:
            if not isinstance(exc.__cause__, WasiExit) or exc.__cause__.code != 0:
                raise
        handshake = _handshake(sb)
        addresses = _locate(sb, token, handshake, python)
        sb.make_main(python, "none")
        snap = sb.instantiated
        assert snap is not None
    finally:
        sb.close()
    return Template(snap, addresses, build, packages, preopens, _tier(path), token), handshake


def _tier(guest_path: Path | None) -> Literal["interp", "aot"]:
    """What runs an interpreter started in the engine (None) or in a compiled guest."""
    return "interp" if guest_path is None else "aot"


def _handshake(sb: WasmSandbox) -> tuple[int, ...]:
    """The numbers the runtime reported on fd 1 when it was ready."""
    assert sb.wasi is not None
    found = _HANDSHAKE.search(sb.wasi.stdout[-4096:])
    if found is None:
        tail = sb.wasi.stderr[-3000:].decode(errors="replace")
        raise PythonStartError(f"the Python interpreter did not start:\n{tail}")
    return tuple(int(g) for g in found.groups())


def _locate(sb: WasmSandbox, token: bytes, handshake: tuple[int, ...], instance: int) -> Addresses:
    """The interpreter's addresses from the handshake's numbers, checked against its
    memory (see the module docstring). Raises PythonStartError."""
    func_type, serve, empty_tuple, mailbox_obj, none = handshake
    memory = sb.memory(0)
    try:
        (call,) = struct.unpack("<I", memory.read(func_type + TP_CALL_OFFSET, 4))
        alloc, _bytes, start = struct.unpack(
            "<III", memory.read(mailbox_obj + BYTEARRAY_ALLOC_OFFSET, 12)
        )
        mark = memory.read(start, len(token))
    except Exception as exc:
        raise PythonStartError(f"the interpreter's objects are not where expected: {exc}") from exc
    if mark != token or alloc < MAILBOX_SIZE or call == 0:
        raise PythonStartError(
            "this CPython build's object layout is not the one this runtime knows "
            "(the mailbox or the call slot is not where CPython 3.12 on wasm32 has them)"
        )
    return Addresses(
        call, serve, empty_tuple, none, start, MAILBOX_SIZE, mailbox_run(sb, start), instance
    )


def mailbox_run(sb: WasmSandbox, start: int) -> int | None:
    """The guest-physical address of the mailbox if its pages are one run (the usual
    case: grown at once), so that the host reaches it as one slice of guest memory.
    Linear pages never move once mapped, in this sandbox or any made from its
    snapshot."""
    windows = Windows(sb.engine_sandbox.memory, sb.layout)
    first = windows.translate(0, start)
    for offset in range(0, MAILBOX_SIZE, PAGE):
        if windows.translate(0, start + offset) != first + offset:
            return None
    if windows.translate(0, start + MAILBOX_SIZE - 1) != first + MAILBOX_SIZE - 1:
        return None
    return first
