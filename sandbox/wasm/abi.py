"""The engine guest's ABI on the host side: constants from guests/wasm/wasm_abi.h (through
cffi, nothing restated), value lists and replies."""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from .._native import ffi, lib
from ..abi import (
    CALL_SIZE,
    CallEncoder,
    Signature,
    Tag,
    encode_call,
    scalar_bits,
    scalar_value,
)
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


# The hot path of a call (see InvokeEncoder): per Wasm type of an argument, the struct
# code of its 8 bytes in a value list, the bytes encode_values writes for the values the
# code takes (i32 in [-2^31, 2^31) and i64 in [-2^63, 2^63) as two's complement, f32 in
# the low 4 bytes; struct.error for the rest, which the general path takes or refuses)
# and, of a result, the code that reads its Python value (i32/f32 from the low 4 bytes,
# as to_python reads them).
_ARG_CODES = {ValType.I32: "i4x", ValType.I64: "q", ValType.F32: "f4x", ValType.F64: "d"}
_RESULT_CODES = {ValType.I32: "i4x", ValType.I64: "q", ValType.F32: "f4x", ValType.F64: "d"}
_PY_TYPES = {ValType.I32: int, ValType.I64: int, ValType.F32: float, ValType.F64: float}
MISS = object()  # InvokeEncoder.result: not the common case, decode the reply in full


class InvokeEncoder(CallEncoder):
    """The engine's `wasm_invoke(instance, export, values)` call record for one export
    of one instance, written with one struct.pack_into: the record's fixed part (header,
    argument slots, the names) is precomputed by encode_call, the value list packed
    after it, the same bytes as encode_values + encode_call write. Exports whose
    parameters are all i32/i64/f32/f64 take this path for arguments of the exact Python
    type within the struct codes' ranges; anything else (and every
    other export) is encoded by encode_values + encode_call, which convert or raise the
    precise ArgumentError. `result` reads an OK reply of the declared types with one
    unpack. The guest checks every record as it checks any other."""

    __slots__ = ("export", "params", "results", "_handle", "_packer", "_values", "_py", "_reply")

    def __init__(
        self,
        sig: Signature,
        index: int | None,
        handle: int,
        export: str,
        ft_params: tuple[ValType, ...],
        ft_results: tuple[ValType, ...],
    ) -> None:
        """`sig`: the engine's wasm_invoke, `index` its place in the engine's function
        table; `handle` the instance, `export` the function's name and types."""
        super().__init__(sig, index)
        self.label = export  # a time limit or cancel names the export, not wasm_invoke
        self.export = export
        self.params = ft_params
        self.results = ft_results  # what a reply must hold (checked on the full decoding too)
        self._handle = handle
        self._packer: struct.Struct | None = None
        self._reply: tuple[struct.Struct, tuple[int, ...], int] | None = None
        self._values: list[object] = []
        self._py: tuple[type, ...] = ()
        if all(t in _ARG_CODES for t in ft_params):
            size = 1 + 9 * len(ft_params)
            room = CALL_SIZE + len(sig.name) + len(export.encode()) + size + 32  # + padding
            scratch = bytearray(room)
            end = encode_call(memoryview(scratch), sig, (handle, export, bytes(size)), self.hint)
            start = end - 1 - size  # the value list, then its NUL
            codes = "".join("B" + _ARG_CODES[t] for t in ft_params)
            self._packer = struct.Struct(f"<{start}sB{codes}x")
            self._values = [bytes(scratch[:start]), len(ft_params)]
            for t in ft_params:
                self._values += [int(t), 0]
            self._py = tuple(_PY_TYPES[t] for t in ft_params)
        if all(t in _RESULT_CODES for t in ft_results):
            codes = "".join("B" + _RESULT_CODES[t] for t in ft_results)
            head = (int(Status.OK), len(ft_results), *map(int, ft_results))
            self._reply = (struct.Struct(f"<BB{codes}"), head, len(ft_results))

    def encode(self, buf: memoryview, args: Sequence[object]) -> None:
        packer = self._packer
        if packer is not None and tuple(map(type, args)) == self._py:
            values = self._values[:]
            values[3::2] = args
            try:
                packer.pack_into(buf, 0, *values)
                return
            except (struct.error, OverflowError):
                pass  # beyond the code's range: the general path takes it or says why
        data = encode_values(self.params, tuple(args), self.export)
        encode_call(buf, self.sig, (self._handle, self.export, data), self.hint)

    def result(self, reply: bytes) -> object:
        """The Python result of an OK reply with values of the declared types (None,
        the value, or a tuple), or MISS for any other reply."""
        spec = self._reply
        if spec is None:
            return MISS
        packer, head, n = spec
        if len(reply) != packer.size:
            return MISS
        out = packer.unpack(reply)
        if out[0] != head[0] or out[1] != head[1] or out[2::2] != head[2:]:
            return MISS
        if n == 1:
            return out[3]
        return None if n == 0 else out[3::2]


def decode_results(encoder: InvokeEncoder, data: object, name: str) -> object:
    """The Python result of export `name`'s reply `data` (None, the value, or a tuple),
    decoded in full: what `encoder.result` leaves (MISS). Raises what check_ok raises
    for an error reply, and GuestProtocolError for values that are not the export's
    result types (a hostile engine's; the one-unpack read refuses them too)."""
    reply = parse_reply(data, name)
    check_ok(reply, name)
    decoded = decode_values(reply.payload, f"results of {name}")
    if tuple(t for t, _ in decoded) != tuple(encoder.results):
        raise GuestProtocolError(
            f"results of {name}: the engine answered {[t.name for t, _ in decoded]}, "
            f"the export returns {[t.name for t in encoder.results]}"
        )
    values = [to_python(t, b) for t, b in decoded]
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)
