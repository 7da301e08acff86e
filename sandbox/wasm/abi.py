"""The engine guest's ABI on the host side: constants from guests/wasm/wasm_abi.h (through
cffi, nothing restated), value lists and replies."""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from .._native import ffi, lib
from ..abi import Tag, scalar_bits, scalar_value
from ..errors import (
    ArgumentError,
    GuestProtocolError,
    WasmEngineError,
    WasmLinkError,
    WasmModuleError,
    WasmTrap,
    WasmTrapKind,
)

WINDOW_BASE: int = lib.WASM_WINDOW_BASE
WINDOW_STRIDE: int = lib.WASM_WINDOW_STRIDE
MAX_MEMORIES: int = lib.WASM_MAX_MEMORIES
WASM_PAGE: int = lib.WASM_PAGE_SIZE
MAX_PAGES: int = lib.WASM_MAX_PAGES
NULL_REF: int = lib.WASM_NULL_REF
HOST_GROW: str = ffi.string(lib.WASM_HOST_GROW).decode()
HOST_IMPORT: str = ffi.string(lib.WASM_HOST_IMPORT).decode()
NO_MEMORY = 0xFFFFFFFF
ENGINE_ABI_VERSION: int = lib.WASM_ABI_VERSION


class ValType(enum.IntEnum):
    I32 = lib.WASM_TYPE_I32
    I64 = lib.WASM_TYPE_I64
    F32 = lib.WASM_TYPE_F32
    F64 = lib.WASM_TYPE_F64
    V128 = lib.WASM_TYPE_V128
    FUNCREF = lib.WASM_TYPE_FUNCREF
    EXTERNREF = lib.WASM_TYPE_EXTERNREF
    EXNREF = lib.WASM_TYPE_EXNREF  # exception handling: opaque to the host


class Status(enum.IntEnum):
    OK = lib.WASM_STATUS_OK
    TRAP = lib.WASM_STATUS_TRAP
    MALFORMED = lib.WASM_STATUS_MALFORMED
    INVALID = lib.WASM_STATUS_INVALID
    UNLINKABLE = lib.WASM_STATUS_UNLINKABLE
    BAD_CALL = lib.WASM_STATUS_BAD_CALL
    LIMIT = lib.WASM_STATUS_LIMIT


# Trap kind code -> WasmTrapKind, from the header's WASM_TRAP_* (an unknown name fails
# here, at import, so the enum and the header cannot drift apart).
TRAP_KINDS: dict[int, WasmTrapKind] = {
    getattr(lib, name): WasmTrapKind(name[len("WASM_TRAP_") :].lower())
    for name in dir(lib)
    if name.startswith("WASM_TRAP_") and name not in ("WASM_TRAP_COUNT", "WASM_TRAP_NONE")
}
assert len(TRAP_KINDS) == len(WasmTrapKind) == lib.WASM_TRAP_COUNT - 1
TRAP_MEMORY_OOB: int = lib.WASM_TRAP_MEMORY_OOB

_VALUE = struct.Struct("<BQ")
V128_SIZE = 16  # a v128 value in a value list: its type byte, then 16 bytes LE
V128_MASK = (1 << 128) - 1
# The Wasm types whose values are the native ABI's scalars (one codec for both).
_SCALAR_TAGS = {
    ValType.I32: Tag.I32,
    ValType.I64: Tag.I64,
    ValType.F32: Tag.F32,
    ValType.F64: Tag.F64,
}
_FLOAT_TAGS = {ValType.F32: Tag.F32, ValType.F64: Tag.F64}


@dataclass(frozen=True)
class Reply:
    status: Status
    trap_kind: int
    payload: bytes  # the OK payload, or the UTF-8 message

    @property
    def message(self) -> str:
        return self.payload.decode(errors="replace")


def parse_reply(data: object, what: str) -> Reply:
    if not isinstance(data, bytes) or not data:
        raise GuestProtocolError(f"{what}: the engine answered {type(data).__name__}, not a reply")
    try:
        status = Status(data[0])
    except ValueError:
        raise GuestProtocolError(f"{what}: unknown reply status {data[0]}") from None
    if status == Status.OK:
        return Reply(status, 0, data[1:])
    if len(data) < 2:
        raise GuestProtocolError(f"{what}: truncated reply")
    return Reply(status, data[1], data[2:])


def encode_values(
    types: tuple[ValType, ...] | list[ValType], values: tuple[object, ...] | list[object], what: str
) -> bytes:
    """A value list for the engine; raises ArgumentError for a wrong count or type."""
    if len(values) != len(types):
        raise ArgumentError(f"{what} takes {len(types)} arguments, got {len(values)}")
    return pack_values(
        [
            (t, _to_bits(t, v, f"{what} argument {i}"))
            for i, (t, v) in enumerate(zip(types, values, strict=True))
        ]
    )


def pack_values(values: list[tuple[ValType, int]] | list[tuple[int, int]]) -> bytes:
    """A value list of raw (type, bits) pairs (bits already in range for the type)."""
    out = bytearray([len(values)])
    for t, bits in values:
        if t == ValType.V128:
            out.append(t)
            out += bits.to_bytes(V128_SIZE, "little")
        else:
            out += _VALUE.pack(t, bits)
    return bytes(out)


def _to_bits(t: ValType, v: object, what: str) -> int:
    if t in (ValType.I32, ValType.I64):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ArgumentError(
                f"{what}: expected an int for {t.name.lower()}, got {type(v).__name__}"
            )
        bits = 32 if t == ValType.I32 else 64
        if not -(1 << (bits - 1)) <= v < (1 << bits):
            raise ArgumentError(f"{what}: {v} does not fit {t.name.lower()}")
        return v & ((1 << bits) - 1)
    if t in (ValType.F32, ValType.F64):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ArgumentError(
                f"{what}: expected a float for {t.name.lower()}, got {type(v).__name__}"
            )
        try:
            return scalar_bits(_FLOAT_TAGS[t], v)
        except ArgumentError:
            raise ArgumentError(f"{what}: {v} overflows {t.name.lower()}") from None
    if t == ValType.V128:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= V128_MASK:
            raise ArgumentError(f"{what}: expected an unsigned 128-bit int for v128, got {v!r}")
        return v
    if t == ValType.EXNREF:
        if v is not None:  # only the engine makes exception references
            raise ArgumentError(f"{what}: an exnref argument can only be None (null)")
        return NULL_REF
    if t in (ValType.FUNCREF, ValType.EXTERNREF):
        if v is None:
            return NULL_REF
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < NULL_REF:
            raise ArgumentError(f"{what}: expected None or a reference (int), got {v!r}")
        return v
    raise ArgumentError(f"{what}: type {t.name.lower()} is not supported")


def decode_values(payload: bytes, what: str) -> list[tuple[ValType, int]]:
    """(type, raw bits) of each value of a value list the engine wrote (checked)."""
    if not payload:
        raise GuestProtocolError(f"{what}: empty value list")
    n = payload[0]
    out = []
    at = 1
    for _ in range(n):
        size = 1 + (V128_SIZE if at < len(payload) and payload[at] == ValType.V128 else 8)
        if at + size > len(payload):
            break
        code = payload[at]
        bits = int.from_bytes(payload[at + 1 : at + size], "little")
        at += size
        try:
            out.append((ValType(code), bits))
        except ValueError:
            raise GuestProtocolError(f"{what}: unknown value type 0x{code:x}") from None
    if len(out) != n or at != len(payload):
        raise GuestProtocolError(f"{what}: value list of {n} values has {len(payload)} bytes")
    return out


def to_python(t: ValType, bits: int) -> object:
    """The Python value of raw bits: int (signed) for i32/i64, float, None or int for refs,
    an unsigned 128-bit int (lane 0 in the low bits) for v128."""
    tag = _SCALAR_TAGS.get(t)
    if tag is not None:
        return scalar_value(tag, bits)
    if t == ValType.V128:
        return bits
    return None if bits == NULL_REF else bits


def reply_u32(reply: Reply, what: str) -> int:
    """The u32 payload of an OK reply (a handle)."""
    if len(reply.payload) != 4:
        raise GuestProtocolError(f"{what}: reply payload of {len(reply.payload)} bytes")
    return int.from_bytes(reply.payload, "little")


def check_ok(reply: Reply, what: str) -> None:
    """Raises the error a reply that is not OK stands for: WasmTrap, ArgumentError,
    WasmModuleError, WasmLinkError or WasmEngineError."""
    if reply.status == Status.OK:
        return
    if reply.status == Status.TRAP:
        kind = TRAP_KINDS.get(reply.trap_kind, f"trap_{reply.trap_kind}")
        raise WasmTrap(f"{what}: wasm trap: {reply.message}", kind=kind)
    if reply.status == Status.BAD_CALL:
        raise ArgumentError(f"{what}: {reply.message}")
    if reply.status in (Status.MALFORMED, Status.INVALID):
        kind = reply.status.name.lower()
        raise WasmModuleError(f"{kind} module: {reply.message}", kind=kind)
    if reply.status == Status.UNLINKABLE:
        raise WasmLinkError(reply.message)
    raise WasmEngineError(f"{what}: {reply.message}")
