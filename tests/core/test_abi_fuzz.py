"""Property-based tests of the record decoders of sandbox/abi.py: what a guest writes in
its output buffer (a result, a print flush, a host call) at the offset it passes to the
port (`exit.value`, a u32). Any bytes at any offset give the value that the ABI
(guests/include/sbx_abi.h) says they hold, decoded again here by an independent
reference, or a GuestProtocolError, never another exception and never a read outside
the record. And what the host writes reads back as it was written."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from hypothesis import event, example, given
from hypothesis import strategies as st
from support import fuzz_settings

from sandbox.abi import (
    ARGS_OFFSET,
    CALL_SIZE,
    MAX_ARGS,
    NAME_MAX,
    RESULT,
    CallEncoder,
    Signature,
    Status,
    Tag,
    decode_call,
    decode_result,
    decode_return,
    encode_call,
    encode_result,
    scalar_bits,
    scalar_value,
)
from sandbox.config import SandboxConfig
from sandbox.errors import GuestProtocolError

OUT_SIZE = SandboxConfig().output_buffer_size  # the default output buffer: 256 KiB
U32 = (1 << 32) - 1
U64 = (1 << 64) - 1


class Bad(Exception):
    """The reference decoder's 'malformed record'."""


def u32(data: bytes, at: int) -> int:
    return int.from_bytes(data[at : at + 4], "little")


def ref_value(rec: bytes, tag: int, length: int, bits: int) -> Any:
    """One `struct sbx_value` of the record `rec`, as sbx_abi.h defines it."""
    if tag == Tag.VOID:
        return None
    if tag in (Tag.STR, Tag.BYTES):
        if bits + length > len(rec):
            raise Bad
        data = rec[bits : bits + length]
        if tag == Tag.BYTES:
            return data
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise Bad from None
    low = bits & U32
    scalars = {
        Tag.I32: low - (1 << 32) if low >> 31 else low,
        Tag.U32: low,
        Tag.I64: bits - (1 << 64) if bits >> 63 else bits,
        Tag.U64: bits,
        Tag.BOOL: bits != 0,
        Tag.F32: struct.unpack("<f", low.to_bytes(4, "little"))[0],
        Tag.F64: struct.unpack("<d", bits.to_bytes(8, "little"))[0],
    }
    if tag not in scalars:
        raise Bad
    return scalars[Tag(tag)]


def ref_output(rec: bytes, off: int, length: int) -> bytes:
    if length == 0:
        return b""
    if off + length > len(rec):
        raise Bad
    return rec[off : off + length]


def ref_record(buf: bytes, offset: int, header: int) -> bytes:
    if offset + header > len(buf):
        raise Bad
    size = u32(buf, offset)
    if not header <= size <= len(buf) - offset:
        raise Bad
    return buf[offset : offset + size]


def ref_result(buf: bytes, offset: int) -> tuple[int, int, Any, bytes]:
    rec = ref_record(buf, offset, RESULT.size)
    tag, length = u32(rec, 16), u32(rec, 20)
    bits = int.from_bytes(rec[24:32], "little")
    output = ref_output(rec, u32(rec, 8), u32(rec, 12))
    return u32(rec, 4), tag, ref_value(rec, tag, length, bits), output


def ref_call(buf: bytes, offset: int) -> tuple[str, list[Any], bytes]:
    rec = ref_record(buf, offset, CALL_SIZE)
    argc, name_off, name_len = u32(rec, 4), u32(rec, 8), u32(rec, 12)
    output = ref_output(rec, u32(rec, 16), u32(rec, 20))
    if argc > MAX_ARGS or name_len > NAME_MAX or name_off + name_len > len(rec):
        raise Bad
    try:
        name = rec[name_off : name_off + name_len].decode("utf-8")
    except UnicodeDecodeError:
        raise Bad from None
    args = []
    for i in range(argc):
        slot = ARGS_OFFSET + 16 * i
        tag, length = u32(rec, slot), u32(rec, slot + 4)
        args.append(
            ref_value(rec, tag, length, int.from_bytes(rec[slot + 8 : slot + 16], "little"))
        )
    return name, args, output


def same(a: Any, b: Any) -> bool:
    """== that also holds for NaN and tells -0.0 from 0.0 and True from 1."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return math.isnan(a) and math.isnan(b) or struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


# -- records the guest writes ---------------------------------------------------------

_EDGES = [0, 1, 2, 3, 4, 7, 8, 31, 32, 33, 47, 48, 535, 536, 537, OUT_SIZE - 1, OUT_SIZE]
_EDGES += [OUT_SIZE + 1, 1 << 31, U32 - 31, U32 - 1, U32]


def u32_fields(near: int) -> st.SearchStrategy[int]:
    """A u32 a guest might write: small, near `near` (a plausible value), an edge, any."""
    return st.one_of(
        st.integers(0, 64),
        st.integers(max(0, near - 4), near + 4),
        st.sampled_from(_EDGES),
        st.integers(0, U32),
    )


def field(draw: st.DrawFn, plausible: int, near: int) -> int:
    """Mostly the value a well-behaved guest would write, else any u32_fields(near)."""
    return plausible if draw(st.integers(0, 3)) else draw(u32_fields(near))


OFFSETS = st.one_of(
    st.integers(0, 64),
    st.integers(0, 64),
    st.integers(OUT_SIZE - 700, OUT_SIZE + 8),
    st.sampled_from(_EDGES),
    st.integers(0, U32),
)
TAGS = st.one_of(st.sampled_from(list(Tag)).map(int), st.integers(0, U32))
BITS = st.one_of(
    st.sampled_from([U64, 1 << 63, (1 << 63) - 1, 1 << 31, 0x7FF8_0000_0000_0001]),
    st.integers(0, U64),
)


@st.composite
def value_slot(draw: st.DrawFn, data_start: int, data_len: int) -> bytes:
    """A `struct sbx_value` whose data, if it has any, lies mostly in the record's
    `data_len` bytes of data at `data_start`."""
    tag = draw(st.sampled_from(list(Tag)).map(int)) if draw(st.booleans()) else draw(TAGS)
    if tag in (Tag.STR, Tag.BYTES):
        at = draw(st.integers(0, data_len))
        length = field(draw, draw(st.integers(0, data_len - at)), data_len)
        bits = field(draw, data_start + at, data_start)
    else:
        length, bits = draw(u32_fields(0)), draw(BITS)
    return struct.pack("<IIQ", tag, length, bits)


@st.composite
def result_records(draw: st.DrawFn) -> bytes:
    tail = draw(st.binary(max_size=96))
    end = RESULT.size + len(tail)
    print_len = draw(st.integers(0, len(tail)))
    head = struct.pack(
        "<IIII",
        field(draw, end, end),
        draw(st.one_of(st.sampled_from(list(Status)).map(int), st.integers(0, U32))),
        field(draw, RESULT.size + len(tail) - print_len, RESULT.size),
        field(draw, print_len, len(tail)),
    )
    return head + draw(value_slot(RESULT.size, len(tail))) + tail


@st.composite
def call_records(draw: st.DrawFn) -> bytes:
    name = draw(st.one_of(st.text(max_size=12).map(str.encode), st.binary(max_size=60)))
    data = draw(st.binary(max_size=64))
    tail = name + data
    end = CALL_SIZE + len(tail)
    argc = field(draw, draw(st.integers(0, 4)), MAX_ARGS)
    print_len = draw(st.integers(0, len(data)))
    head = struct.pack(
        "<6I",
        field(draw, end, end),
        argc,
        field(draw, CALL_SIZE, CALL_SIZE),
        field(draw, len(name), len(name)),
        field(draw, end - print_len, CALL_SIZE),
        field(draw, print_len, len(tail)),
    )
    slots = b"".join(draw(value_slot(CALL_SIZE, len(tail))) for _ in range(min(argc, 4)))
    return head + slots.ljust(CALL_SIZE - len(head), b"\0") + tail


def placed(record: bytes, offset: int, noise: bytes) -> bytearray:
    """An output buffer with `record` at `offset` (cut at the buffer's end), `noise` right
    after it (what a record's lengths may point into when they lie)."""
    buf = bytearray(OUT_SIZE)
    if offset < OUT_SIZE:
        data = (record + noise)[: OUT_SIZE - offset]
        buf[offset : offset + len(data)] = data
    return buf


@fuzz_settings(300)
@given(st.one_of(result_records(), st.binary(max_size=80)), OFFSETS, st.binary(max_size=16))
@example(struct.pack("<4IIIQ", 32, 0, 0, 0, Tag.STR, 1, 0), 0, b"")  # 1 byte at 0: the header
@example(struct.pack("<4IIIQ", 32, 0, 31, 2, Tag.VOID, 0, 0), 0, b"")  # output past the end
@example(struct.pack("<4IIIQ", U32, 0, 0, 0, Tag.VOID, 0, 0), OUT_SIZE - 32, b"")
@example(struct.pack("<4IIIQ", 40, 0, 0, 0, Tag.STR, 8, 32), 0, b"\xed\xa0\x80")  # surrogate
@example(struct.pack("<4IIIQ", 64, 0, 0, 0, Tag.BYTES, 32, U64), 0, b"")
def test_decode_return(record: bytes, offset: int, noise: bytes) -> None:
    buf = placed(record, offset, noise)
    view = memoryview(buf)
    try:
        expected: Any = ref_result(bytes(buf), offset)
    except Bad:
        expected = None
    for decoder in (decode_return, decode_result):
        try:
            got = decoder(view, offset, "result of f")
        except GuestProtocolError as exc:
            event("refused")
            assert expected is None, f"refused a valid record: {exc}"
            assert "result of f" in str(exc) or "print data" in str(exc)
        else:
            event(f"accepted, tag {got[1]}")
            assert expected is not None, f"accepted a malformed record: {got}"
            assert same(tuple(got), expected)
    assert bytes(buf) == bytes(placed(record, offset, noise))  # read, never written


@fuzz_settings(300)
@given(st.one_of(call_records(), st.binary(max_size=600)), OFFSETS, st.binary(max_size=16))
@example(struct.pack("<6I", CALL_SIZE + 1, 0, CALL_SIZE, 1, 0, 0), 0, b"\xff")  # bad UTF-8
@example(struct.pack("<6I", CALL_SIZE, MAX_ARGS + 1, 0, 0, 0, 0), 0, b"")
@example(struct.pack("<6I", CALL_SIZE + 48, 0, CALL_SIZE, 48, 0, 0), 0, b"x" * 48)  # NAME_MAX
@example(struct.pack("<6I", CALL_SIZE, 1, 0, 0, 0, 0) + struct.pack("<IIQ", 8, 2, U64), 0, b"")
def test_decode_call(record: bytes, offset: int, noise: bytes) -> None:
    buf = placed(record, offset, noise)
    try:
        expected: Any = ref_call(bytes(buf), offset)
    except Bad:
        expected = None
    try:
        call = decode_call(memoryview(buf), offset)
    except GuestProtocolError as exc:
        event("refused")
        assert expected is None, f"refused a valid host call: {exc}"
    else:
        event(f"accepted, {len(call.args)} args")
        assert expected is not None, f"accepted a malformed host call: {call}"
        assert call.name == expected[0] and call.output == expected[2]
        assert same(call.args, expected[1])


# -- records the host writes read back as written -------------------------------------

RESULT_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(1 << 63), U64),
    st.floats(),
    st.text(max_size=40),
    st.binary(max_size=40),
)


@fuzz_settings(200)
@given(RESULT_VALUES, st.sampled_from(list(Status)))
def test_encode_result_reads_back(value: Any, status: Status) -> None:
    buf = memoryview(bytearray(4096))
    encode_result(buf, status, value)
    got_status, tag, got, output = decode_return(buf, 0, "reply")
    assert got_status == status and output == b""
    assert same(got, value)


ARG_STRATEGIES: dict[Tag, st.SearchStrategy[Any]] = {
    Tag.I32: st.integers(-(1 << 31), (1 << 31) - 1),
    Tag.U32: st.integers(0, U32),
    Tag.I64: st.integers(-(1 << 63), (1 << 63) - 1),
    Tag.U64: st.integers(0, U64),
    Tag.F32: st.floats(width=32) | st.integers(-(1 << 24), 1 << 24),
    Tag.F64: st.floats() | st.integers(-(1 << 53), 1 << 53),
    Tag.BOOL: st.booleans(),
    Tag.STR: st.text(max_size=20),
    Tag.BYTES: st.binary(max_size=20),
}


@st.composite
def calls(draw: st.DrawFn) -> tuple[Signature, list[Any]]:
    name = draw(st.from_regex(r"[a-z_][a-z0-9_]{0,46}", fullmatch=True))
    params = draw(st.lists(st.sampled_from(list(ARG_STRATEGIES)), max_size=MAX_ARGS))
    args = [draw(ARG_STRATEGIES[tag]) for tag in params]
    return Signature(name, tuple(params), Tag.VOID), args


@fuzz_settings(200)
@given(calls(), st.none() | st.integers(0, 1000))
def test_call_records_read_back(call: tuple[Signature, list[Any]], index: int | None) -> None:
    """encode_call and CallEncoder (its fast path) write the same record, and
    decode_call reads the name and the arguments back (floats as their type holds them)."""
    sig, args = call
    slow = memoryview(bytearray(64 * 1024))
    fast = memoryview(bytearray(64 * 1024))
    size = encode_call(slow, sig, args, 0 if index is None else index + 1)
    CallEncoder(sig, index).encode(fast, args)
    assert bytes(fast[:size]) == bytes(slow[:size])
    decoded = decode_call(slow, 0)
    assert decoded.name == sig.name and decoded.output == b""
    expected = [
        scalar_value(tag, scalar_bits(tag, a)) if tag not in (Tag.STR, Tag.BYTES) else a
        for tag, a in zip(sig.params, args, strict=True)
    ]
    assert same(decoded.args, expected)


def test_reference_is_not_trivial() -> None:
    """The reference refuses what it must (so the properties above compare something)."""
    buf = placed(struct.pack("<4IIIQ", 32, 0, 0, 0, 99, 0, 0), 0, b"")
    with pytest.raises(Bad):
        ref_result(bytes(buf), 0)
    with pytest.raises(GuestProtocolError, match="unknown value tag 99"):
        decode_return(memoryview(buf), 0, "result of f")
