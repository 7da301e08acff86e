"""Python side of the guest ABI (guests/include/sbx_abi.h): value tags, statuses, and
the encoding and decoding of call and result records.

Struct layouts come from the header through cffi; the `struct` formats below are
checked against them at import. Everything read from guest memory is untrusted: every
size, offset, length, tag and string is checked before it is used.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from ._native import ffi, lib
from .errors import ArgumentError, GuestProtocolError

ABI_VERSION: int = lib.SBX_ABI_VERSION
MAX_ARGS: int = lib.SBX_MAX_ARGS
NAME_MAX: int = lib.SBX_NAME_MAX


class Tag(enum.IntEnum):
    """Value type tags (SBX_TAG_*)."""

    VOID = lib.SBX_TAG_VOID
    I32 = lib.SBX_TAG_I32
    U32 = lib.SBX_TAG_U32
    I64 = lib.SBX_TAG_I64
    U64 = lib.SBX_TAG_U64
    F32 = lib.SBX_TAG_F32
    F64 = lib.SBX_TAG_F64
    BOOL = lib.SBX_TAG_BOOL
    STR = lib.SBX_TAG_STR
    BYTES = lib.SBX_TAG_BYTES

    @property
    def type_name(self) -> str:
        return self.name.lower()


class Status(enum.IntEnum):
    """Result statuses (SBX_STATUS_*)."""

    OK = lib.SBX_STATUS_OK
    ABORT = lib.SBX_STATUS_ABORT
    NOT_FOUND = lib.SBX_STATUS_NOT_FOUND
    BAD_ARGS = lib.SBX_STATUS_BAD_ARGS
    HOST_ERROR = lib.SBX_STATUS_HOST_ERROR
    BAD_RECORD = lib.SBX_STATUS_BAD_RECORD


VALUE = struct.Struct("<IIQ")
CALL_HEADER = struct.Struct("<6I")
RESULT = struct.Struct("<4IIIQ")
FUNC_DESC = struct.Struct("<48sBB32s6sQ")
CALL_SIZE: int = ffi.sizeof("struct sbx_call")
ARGS_OFFSET: int = ffi.offsetof("struct sbx_call", "args")

assert VALUE.size == ffi.sizeof("struct sbx_value")
assert CALL_HEADER.size == ARGS_OFFSET and ARGS_OFFSET + MAX_ARGS * VALUE.size == CALL_SIZE
assert RESULT.size == ffi.sizeof("struct sbx_result")
assert RESULT.size - VALUE.size == ffi.offsetof("struct sbx_result", "value")
assert FUNC_DESC.size == ffi.sizeof("struct sbx_func_desc")

_INT_RANGES = {
    Tag.I32: (-(1 << 31), (1 << 31) - 1),
    Tag.U32: (0, (1 << 32) - 1),
    Tag.I64: (-(1 << 63), (1 << 63) - 1),
    Tag.U64: (0, (1 << 64) - 1),
}
_F32 = struct.Struct("<f")
_F64 = struct.Struct("<d")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")

Value = int | float | bool | str | bytes | None


@dataclass(frozen=True)
class Signature:
    """A guest function's declared parameter and return types."""

    name: str
    params: tuple[Tag, ...]
    ret: Tag

    def __str__(self) -> str:
        params = ", ".join(t.type_name for t in self.params)
        return f"{self.name}({params}) -> {self.ret.type_name}"


def scalar_bits(tag: Tag, value: object) -> int:
    """The 64-bit `bits` of a scalar value, or ArgumentError (without context: callers
    add it, so the common path builds no strings). Also the Wasm engine's values'
    codec for floats."""
    if tag in _INT_RANGES:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ArgumentError(f"expected {tag.type_name} (int), got {type(value).__name__}")
        lo, hi = _INT_RANGES[tag]
        if not lo <= value <= hi:
            raise ArgumentError(f"{value} is out of range for {tag.type_name}")
        return value & 0xFFFF_FFFF_FFFF_FFFF
    if tag is Tag.BOOL:
        if not isinstance(value, bool):
            raise ArgumentError(f"expected bool, got {type(value).__name__}")
        return int(value)
    if tag in (Tag.F32, Tag.F64):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ArgumentError(f"expected {tag.type_name} (float), got {type(value).__name__}")
        try:
            if tag is Tag.F64:
                return int(_U64.unpack(_F64.pack(float(value)))[0])
            return int(_U32.unpack(_F32.pack(float(value)))[0])
        except OverflowError:
            raise ArgumentError(f"{value} is out of range for {tag.type_name}") from None
    raise ArgumentError(f"cannot pass a value of type {tag.type_name}")


def _encode_data(tag: Tag, value: object) -> bytes:
    if tag is Tag.STR:
        if not isinstance(value, str):
            raise ArgumentError(f"expected str, got {type(value).__name__}")
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ArgumentError(f"string is not valid Unicode ({exc.reason})") from None
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise ArgumentError(f"expected bytes, got {type(value).__name__}")
    return bytes(value)


def encode_call(buf: memoryview, sig: Signature, args: Sequence[object], hint: int = 0) -> int:
    """Writes a `struct sbx_call` for `sig.name(*args)` at the start of `buf`; returns
    its size. `hint`: 1 + the function's index in the guest's table, or 0. Raises
    ArgumentError for a wrong count, a wrong type or a record too large."""
    params = sig.params
    if len(args) != len(params):
        raise ArgumentError(f"{sig} takes {len(params)} arguments, got {len(args)}")
    name = sig.name.encode()
    pos = ARGS_OFFSET + MAX_ARGS * VALUE.size
    name_off = pos
    pos += len(name) + 1
    buf[name_off : pos - 1] = name
    buf[pos - 1] = 0
    for i, (tag, value) in enumerate(zip(params, args, strict=True)):
        slot = ARGS_OFFSET + i * VALUE.size
        try:
            if tag is Tag.STR or tag is Tag.BYTES:
                data = _encode_data(tag, value)
                pos = (pos + 7) & ~7
                end = pos + len(data) + 1
                if end > len(buf):
                    raise ArgumentError(
                        f"{len(data)} bytes do not fit the input buffer ({len(buf)} bytes; "
                        "raise SandboxConfig.input_buffer_size)"
                    )
                buf[pos : end - 1] = data
                buf[end - 1] = 0
                VALUE.pack_into(buf, slot, tag, len(data), pos)
                pos = end
            else:
                VALUE.pack_into(buf, slot, tag, 0, scalar_bits(tag, value))
        except ArgumentError as exc:
            raise ArgumentError(f"{sig} argument {i + 1}: {exc}") from None
    CALL_HEADER.pack_into(buf, 0, pos, len(args), name_off, len(name), hint, 0)
    return pos


# Per scalar tag: the struct code of `bits` and, for 32-bit integers (which 'q'/'Q'
# would not range-check), the range. Packing straight from Python values gives the same
# bytes as _encode_scalar: integers sign- or zero-extended, floats as IEEE bits.
_FAST_CODES = {
    Tag.I32: "q",
    Tag.U32: "Q",
    Tag.I64: "q",
    Tag.U64: "Q",
    Tag.BOOL: "Q",
    Tag.F64: "d",
    Tag.F32: "f4x",
}
_NAME_OFFSET = ARGS_OFFSET + MAX_ARGS * VALUE.size


class CallEncoder:
    """Writes call records for one signature. Signatures of scalars only (the common
    case) take a fast path: one exact-type check of all arguments, the range checks of
    32-bit integers, one struct.pack_into. Anything else, and any argument the fast path
    does not take as it is (an int for a float parameter, a value out of range), goes
    through encode_call, which converts it or raises the precise ArgumentError."""

    __slots__ = (
        "sig",
        "ret",
        "what",
        "label",
        "hint",
        "_struct",
        "_types",
        "_name",
        "_template",
        "_ranges",
    )

    def __init__(self, sig: Signature, index: int | None = None) -> None:
        """`index`: the function's place in the guest's table, passed as a hint that
        saves the guest its search by name (None: no hint)."""
        self.sig = sig
        self.ret = int(sig.ret)  # the result tag a call must come back with
        self.hint = 0 if index is None else index + 1
        self.what = f"result of {sig.name}"  # for messages about its result record
        self.label = sig.name  # what messages about the call name it (a layer's own name)
        self._struct: struct.Struct | None = None
        params = sig.params
        if all(tag in _FAST_CODES for tag in params):
            name = sig.name.encode()
            self._name = name + b"\0"
            header: list[object] = [
                _NAME_OFFSET + len(self._name),
                len(params),
                _NAME_OFFSET,
                len(name),
                self.hint,
                0,
            ]
            self._template: list[object] = header + [x for tag in params for x in (tag, 0, 0)]
            self._struct = struct.Struct("<6I" + "".join("II" + _FAST_CODES[t] for t in params))
            self._types = tuple(
                bool if tag is Tag.BOOL else float if tag in (Tag.F32, Tag.F64) else int
                for tag in params
            )
            self._ranges = tuple(
                (i, *_INT_RANGES[tag]) for i, tag in enumerate(params) if tag in (Tag.I32, Tag.U32)
            )

    def encode(self, buf: memoryview, args: Sequence[object]) -> None:
        """Writes the record for `args` at the start of `buf` (ArgumentError if they do
        not fit the signature)."""
        packer = self._struct
        if packer is not None and tuple(map(type, args)) == self._types:
            for i, low, high in self._ranges:
                if not low <= args[i] <= high:  # type: ignore[operator]
                    break
            else:
                values = self._template[:]
                values[8::3] = args
                try:
                    packer.pack_into(buf, 0, *values)
                except (struct.error, OverflowError):
                    pass  # out of range for its type: the slow path says how
                else:
                    buf[_NAME_OFFSET : _NAME_OFFSET + len(self._name)] = self._name
                    return
        encode_call(buf, self.sig, args, self.hint)


def encode_result(buf: memoryview, status: Status, value: object) -> None:
    """Writes a `struct sbx_result` carrying a host function's return value (its tag
    inferred from the Python type) into `buf`. Raises ArgumentError if the value has no
    ABI type or does not fit."""
    pos = RESULT.size
    if value is None:
        tag, length, bits = Tag.VOID, 0, 0
    elif isinstance(value, bool):
        tag, length, bits = Tag.BOOL, 0, int(value)
    elif isinstance(value, int):
        tag = Tag.I64 if value < (1 << 63) else Tag.U64
        if value < -(1 << 63) or value >= (1 << 64):
            raise ArgumentError(f"host function result {value} does not fit 64 bits")
        length, bits = 0, value & 0xFFFF_FFFF_FFFF_FFFF
    elif isinstance(value, float):
        tag, length, bits = Tag.F64, 0, scalar_bits(Tag.F64, value)
    elif isinstance(value, (str, bytes, bytearray, memoryview)):
        tag = Tag.STR if isinstance(value, str) else Tag.BYTES
        try:
            data = _encode_data(tag, value)
        except ArgumentError as exc:
            raise ArgumentError(f"host function result: {exc}") from None
        if pos + len(data) + 1 > len(buf):
            raise ArgumentError(
                f"host function result of {len(data)} bytes does not fit the reply buffer"
            )
        buf[pos : pos + len(data)] = data
        buf[pos + len(data)] = 0
        length, bits = len(data), pos
        pos += len(data) + 1
    else:
        raise ArgumentError(
            f"host function returned {type(value).__name__}, which has no ABI type "
            "(use int, float, bool, str, bytes or None)"
        )
    RESULT.pack_into(buf, 0, pos, status, 0, 0, tag, length, bits)


_SCALARS = frozenset({Tag.I32, Tag.U32, Tag.I64, Tag.U64, Tag.BOOL, Tag.F32, Tag.F64})


def scalar_value(tag: Tag, bits: int) -> int | float | bool:
    """The Python value of a scalar's 64 `bits` (integers sign- or zero-extended from
    their width, floats from their IEEE bits). Also the Wasm engine's values' codec."""
    if tag is Tag.I32:
        return ((bits & 0xFFFF_FFFF) ^ 0x8000_0000) - 0x8000_0000
    if tag is Tag.U32:
        return bits & 0xFFFF_FFFF
    if tag is Tag.I64:
        return ((bits & 0xFFFF_FFFF_FFFF_FFFF) ^ (1 << 63)) - (1 << 63)
    if tag is Tag.U64:
        return bits
    if tag is Tag.BOOL:
        return bits != 0
    if tag is Tag.F64:
        return float(_F64.unpack(_U64.pack(bits))[0])
    return float(_F32.unpack(_U32.pack(bits & 0xFFFF_FFFF))[0])


def decode_value(rec: memoryview, size: int, tag: int, length: int, bits: int, what: str) -> Value:
    """Converts one untrusted `struct sbx_value` of the record `rec` (of `size` bytes)
    to Python."""
    if tag == Tag.VOID:
        return None
    if tag == Tag.STR or tag == Tag.BYTES:
        if length > size or bits > size - length:
            raise GuestProtocolError(
                f"{what}: data at offset {bits} length {length} overruns its {size}-byte record"
            )
        data = bytes(rec[bits : bits + length])
        if tag == Tag.BYTES:
            return data
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise GuestProtocolError(f"{what}: string is not valid UTF-8 ({exc.reason})") from None
    if tag in _SCALARS:
        return scalar_value(Tag(tag), bits)
    raise GuestProtocolError(f"{what}: unknown value tag {tag}")


def record_view(
    buf: memoryview, offset: int, header_size: int, what: str
) -> tuple[memoryview, int]:
    """The untrusted record at `offset` of `buf` and its checked size."""
    if offset < 0 or offset > len(buf) - header_size:
        raise GuestProtocolError(f"{what}: record offset {offset} is outside its buffer")
    size = _U32.unpack_from(buf, offset)[0]
    if size < header_size or size > len(buf) - offset:
        raise GuestProtocolError(f"{what}: record size {size} is outside its buffer")
    return buf[offset : offset + size], size


def decode_print(rec: memoryview, size: int, off: int, length: int) -> bytes:
    """The buffered guest output carried by a record (UTF-8 text, possibly cut in the
    middle of a character at a flush: the caller decodes it incrementally)."""
    if length == 0:
        return b""
    if length > size or off > size - length:
        raise GuestProtocolError(f"print data at offset {off} length {length} overruns its record")
    return bytes(rec[off : off + length])


class Result(NamedTuple):
    status: int
    tag: int
    value: Value
    output: bytes


_SCALAR_RESULT = {
    Tag.I32: lambda bits: ((bits & 0xFFFF_FFFF) ^ 0x8000_0000) - 0x8000_0000,
    Tag.U32: lambda bits: bits & 0xFFFF_FFFF,
    Tag.I64: lambda bits: (bits ^ (1 << 63)) - (1 << 63),
    Tag.U64: lambda bits: bits,
}


_I32, _VOID, _BYTES = int(Tag.I32), int(Tag.VOID), int(Tag.BYTES)


def decode_result(buf: memoryview, offset: int, what: str) -> Result:
    """Decodes the untrusted `struct sbx_result` at `offset` of the output buffer."""
    return Result._make(decode_return(buf, offset, what))


def decode_return(buf: memoryview, offset: int, what: str) -> tuple[int, int, Value, bytes]:
    """decode_result as a plain (status, tag, value, output) tuple: the hot path of
    every call (one unpack, no copy of the record)."""
    limit = len(buf) - offset
    if offset < 0 or limit < RESULT.size:
        raise GuestProtocolError(f"{what}: record offset {offset} is outside its buffer")
    size, status, print_off, print_len, tag, length, bits = RESULT.unpack_from(buf, offset)
    if size < RESULT.size or size > limit:
        raise GuestProtocolError(f"{what}: record size {size} is outside its buffer")
    output = b""
    if print_len:
        if print_len > size or print_off > size - print_len:
            raise GuestProtocolError(
                f"print data at offset {print_off} length {print_len} overruns its record"
            )
        output = bytes(buf[offset + print_off : offset + print_off + print_len])
    if tag == _I32:
        return status, tag, ((bits & 0xFFFF_FFFF) ^ 0x8000_0000) - 0x8000_0000, output
    if tag == _VOID:
        return status, tag, None, output
    scalar = _SCALAR_RESULT.get(tag)
    if scalar is not None:
        return status, tag, scalar(bits), output
    if tag == _BYTES:  # decode_value's checks, without a view of the record
        if length > size or bits > size - length:
            raise GuestProtocolError(
                f"{what}: data at offset {bits} length {length} overruns its {size}-byte record"
            )
        return status, tag, bytes(buf[offset + bits : offset + bits + length]), output
    rec = buf[offset : offset + size]
    try:
        return status, tag, decode_value(rec, size, tag, length, bits, what), output
    finally:
        rec.release()


@dataclass
class HostCall:
    name: str
    args: list[Value]
    output: bytes


def decode_call(buf: memoryview, offset: int) -> HostCall:
    """Decodes the untrusted guest -> host `struct sbx_call` at `offset` of `buf`."""
    rec, size = record_view(buf, offset, CALL_SIZE, "host call")
    _, argc, name_off, name_len, print_off, print_len = CALL_HEADER.unpack_from(rec, 0)
    output = decode_print(rec, size, print_off, print_len)
    if argc > MAX_ARGS:
        raise GuestProtocolError(f"host call: {argc} arguments, at most {MAX_ARGS}")
    if name_len > NAME_MAX or name_len > size or name_off > size - name_len:
        raise GuestProtocolError("host call: function name overruns its record")
    try:
        name = bytes(rec[name_off : name_off + name_len]).decode("utf-8")
    except UnicodeDecodeError:
        raise GuestProtocolError("host call: function name is not valid UTF-8") from None
    args = []
    for i in range(argc):
        tag, length, bits = VALUE.unpack_from(rec, ARGS_OFFSET + i * VALUE.size)
        args.append(
            decode_value(rec, size, tag, length, bits, f"host call {name!r} argument {i + 1}")
        )
    return HostCall(name, args, output)


def parse_function_table(table: bytes) -> dict[str, Signature]:
    """The signatures in a guest's function table (`struct sbx_func_desc` entries, the
    sbx_funcs section). Raises ValueError naming a malformed entry."""
    if len(table) % FUNC_DESC.size:
        raise ValueError("malformed sbx_funcs section")
    functions = {}
    for i in range(len(table) // FUNC_DESC.size):
        raw_name, ret, nparams, params, _, _ = FUNC_DESC.unpack_from(table, i * FUNC_DESC.size)
        name_bytes = raw_name.split(b"\0", 1)[0]
        try:
            name = name_bytes.decode("ascii")
            if nparams > MAX_ARGS:
                raise ValueError(f"{nparams} parameters")
            ret_tag = Tag(ret)
            param_tags = tuple(Tag(t) for t in params[:nparams])
            if Tag.VOID in param_tags or not name:
                raise ValueError("void parameter or empty name")
            if name in functions:
                raise ValueError(f"{name!r} twice")
        except ValueError as exc:
            raise ValueError(f"malformed function descriptor {i}: {exc}") from None
        functions[name] = Signature(name, param_tags, ret_tag)
    return functions
