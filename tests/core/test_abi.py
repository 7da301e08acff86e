"""The ABI on the host side, without KVM: encoding call records into plain memory and
decoding (untrusted) result and call records from it."""

from __future__ import annotations

import math
import re
import struct

import pytest
from support import ROOT

from sandbox import ArgumentError, GuestProtocolError, Signature, Tag, abi
from sandbox._native import ffi, lib
from sandbox.abi import (
    ARGS_OFFSET,
    CALL_HEADER,
    CALL_SIZE,
    MAX_ARGS,
    RESULT,
    VALUE,
    CallEncoder,
    Status,
    decode_call,
    decode_result,
    decode_value,
    encode_call,
    encode_result,
)

HEADER = ROOT / "guests" / "include" / "sbx_abi.h"


def buffer(size: int = 64 * 1024) -> memoryview:
    return memoryview(bytearray(size))


# -- the header is the single source --------------------------------------------------------


def header_defines() -> dict[str, int]:
    return {
        name: int(value, 0)
        for name, value in re.findall(r"^#define\s+(SBX_\w+)\s+(\S+)", HEADER.read_text(), re.M)
    }


def test_constants_come_from_the_header() -> None:
    defines = header_defines()
    assert defines["SBX_ABI_VERSION"] == abi.ABI_VERSION
    assert defines["SBX_MAX_ARGS"] == MAX_ARGS == 32
    for tag in Tag:
        assert defines[f"SBX_TAG_{tag.name}"] == tag.value
    for status in Status:
        assert defines[f"SBX_STATUS_{status.name}"] == status.value
    for name, value in defines.items():
        assert getattr(lib, name) == value, name


def test_struct_layouts_match_the_header() -> None:
    assert VALUE.size == ffi.sizeof("struct sbx_value") == 16
    assert ffi.sizeof("struct sbx_call") == CALL_SIZE
    assert ffi.offsetof("struct sbx_call", "args") == ARGS_OFFSET
    assert RESULT.size == ffi.sizeof("struct sbx_result")


# -- encoding calls -------------------------------------------------------------------------


def value_at(buf: memoryview, i: int) -> tuple[int, int, int]:
    return VALUE.unpack_from(buf, ARGS_OFFSET + i * VALUE.size)


def test_encode_scalars() -> None:
    params = (Tag.I32, Tag.U32, Tag.I64, Tag.U64, Tag.F32, Tag.F64, Tag.BOOL, Tag.BOOL)
    sig = Signature("f", params, Tag.VOID)
    args = (-1, 2**32 - 1, -(2**63), 2**64 - 1, 0.1, -2.5, True, False)
    buf = buffer()
    size = encode_call(buf, sig, args)
    total, argc, name_off, name_len, print_off, print_len = CALL_HEADER.unpack_from(buf, 0)
    assert (total, argc, name_len, print_off, print_len) == (size, 8, 1, 0, 0)
    assert bytes(buf[name_off : name_off + 2]) == b"f\x00"
    assert size >= CALL_SIZE
    values = [value_at(buf, i) for i in range(8)]
    assert [v[0] for v in values] == [int(t) for t in params]
    assert all(v[1] == 0 for v in values)
    bits = [v[2] for v in values]
    assert bits[0] == 2**64 - 1  # i32 -1 sign-extended to 64 bits
    assert bits[1] == 2**32 - 1
    assert bits[2] == 1 << 63
    assert bits[3] == 2**64 - 1
    assert bits[4] == struct.unpack("<I", struct.pack("<f", 0.1))[0]
    assert bits[5] == struct.unpack("<Q", struct.pack("<d", -2.5))[0]
    assert bits[6:] == [1, 0]


def test_encode_data_is_in_bounds_aligned_and_nul_terminated() -> None:
    sig = Signature("echo_two", (Tag.STR, Tag.BYTES, Tag.STR), Tag.STR)
    buf = buffer()
    size = encode_call(buf, sig, ("héllo", b"\x00\xff\x01", ""))
    for i, expected in enumerate([("héllo".encode()), b"\x00\xff\x01", b""]):
        tag, length, offset = value_at(buf, i)
        assert length == len(expected)
        assert offset % 8 == 0
        assert offset + length < size
        assert bytes(buf[offset : offset + length]) == expected
        assert buf[offset + length] == 0


@pytest.mark.parametrize(
    ("params", "args"),
    [
        (
            (Tag.I32, Tag.U32, Tag.I64, Tag.U64, Tag.BOOL),
            (-1, 2**32 - 1, -(2**63), 2**64 - 1, True),
        ),
        ((Tag.F32, Tag.F64), (0.1, -2.5)),  # the fast path
        ((Tag.F64,), (3,)),  # an int for a float: the slow path converts it
        ((Tag.STR, Tag.I32), ("héllo", 7)),  # data: the slow path
    ],
)
def test_call_encoder_writes_what_encode_call_writes(
    params: tuple[Tag, ...], args: tuple[object, ...]
) -> None:
    """Fast path or not, the record is encode_call's, the table-index hint included."""
    sig = Signature("fn", params, Tag.VOID)
    fast, slow = buffer(), buffer()
    CallEncoder(sig, index=4).encode(fast, args)
    size = encode_call(slow, sig, args, hint=5)
    assert CALL_HEADER.unpack_from(fast, 0)[4] == 5
    assert bytes(fast[:size]) == bytes(slow[:size])


@pytest.mark.parametrize(
    ("params", "args"),
    [
        ((Tag.I32,), ()),
        ((Tag.I32,), (1, 2)),
        ((Tag.I32,), ("1",)),
        ((Tag.I32,), (True,)),
        ((Tag.I32,), (2**31,)),
        ((Tag.U32,), (-1,)),
        ((Tag.I64,), (-(2**63) - 1,)),
        ((Tag.U64,), (2**64,)),
        ((Tag.U64,), (1.0,)),
        ((Tag.BOOL,), (1,)),
        ((Tag.BOOL,), (0,)),
        ((Tag.F64,), (None,)),
        ((Tag.F64,), (False,)),
        ((Tag.F32,), (1e39,)),
        ((Tag.F32,), (-1e39,)),
        ((Tag.STR,), (b"x",)),
        ((Tag.STR,), ("\udfff",)),
        ((Tag.BYTES,), ("x",)),
        ((Tag.BYTES,), ([1, 2],)),
        ((Tag.BYTES,), (bytes(70_000),)),  # does not fit the 64 KiB buffer
    ],
)
def test_encode_rejects(params: tuple[Tag, ...], args: tuple[object, ...]) -> None:
    with pytest.raises(ArgumentError) as info:
        encode_call(buffer(), Signature("fn", params, Tag.VOID), args)
    assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)
    assert "fn" in str(info.value)


def test_encode_fills_the_buffer_exactly() -> None:
    sig = Signature("b", (Tag.BYTES,), Tag.VOID)
    size = 8192
    room = size - ((CALL_SIZE + 2 + 7) & ~7) - 1  # record header, name, NUL after the data
    encode_call(buffer(size), sig, (bytes(room),))
    with pytest.raises(ArgumentError):
        encode_call(buffer(size), sig, (bytes(room + 1),))


# -- decoding results -----------------------------------------------------------------------


def result_record(
    tag: int,
    bits: int = 0,
    data: bytes = b"",
    *,
    length: int | None = None,
    size: int | None = None,
    status: int = Status.OK,
    output: bytes = b"",
) -> memoryview:
    """A struct sbx_result followed by `data` and `output`."""
    buf = buffer(4096)
    data_off = RESULT.size
    out_off = data_off + len(data)
    if data:
        bits = data_off
        buf[data_off:out_off] = data
    buf[out_off : out_off + len(output)] = output
    total = out_off + len(output) if size is None else size
    RESULT.pack_into(
        buf,
        0,
        total,
        status,
        out_off if output else 0,
        len(output),
        tag,
        len(data) if length is None else length,
        bits,
    )
    return buf


@pytest.mark.parametrize(
    ("tag", "bits", "expected"),
    [
        (Tag.I32, 0xFFFF_FFFF, -1),
        (Tag.I32, 0xFFFF_FFFF_8000_0000, -(2**31)),
        (Tag.U32, 0xFFFF_FFFF_FFFF_FFFF, 2**32 - 1),
        (Tag.I64, 1 << 63, -(2**63)),
        (Tag.U64, 2**64 - 1, 2**64 - 1),
        (Tag.BOOL, 1, True),
        (Tag.BOOL, 0, False),
        (Tag.F64, struct.unpack("<Q", struct.pack("<d", math.pi))[0], math.pi),
        (Tag.F32, struct.unpack("<I", struct.pack("<f", 1.5))[0], 1.5),
        (Tag.VOID, 12345, None),
    ],
)
def test_decode_scalars(tag: Tag, bits: int, expected: object) -> None:
    result = decode_result(result_record(tag, bits), 0, "test")
    assert result.status == Status.OK
    assert result.value == expected and type(result.value) is type(expected)


def test_decode_data_and_output() -> None:
    result = decode_result(
        result_record(Tag.STR, data="día ☀".encode(), output=b"printed\n"), 0, "test"
    )
    assert result.value == "día ☀"
    assert result.output == b"printed\n"
    raw = decode_result(result_record(Tag.BYTES, data=b"\x00\x01\xff"), 0, "test")
    assert raw.value == b"\x00\x01\xff"


def test_decode_status_is_reported() -> None:
    result = decode_result(result_record(Tag.STR, data=b"why", status=Status.ABORT), 0, "t")
    assert (result.status, result.value) == (Status.ABORT, "why")


MALFORMED = {
    "size past buffer": lambda: (result_record(Tag.VOID, size=0xFFFF_FFF0), 0),
    "size under header": lambda: (result_record(Tag.VOID, size=4), 0),
    "offset past buffer": lambda: (result_record(Tag.VOID), 4096 - 8),
    "offset far past buffer": lambda: (result_record(Tag.VOID), 0x7FFF_FFF0),
    "length past record": lambda: (result_record(Tag.STR, data=b"abc", length=1 << 20), 0),
    "offset + length wraps": lambda: (
        result_record(Tag.BYTES, bits=2**64 - 8, length=16, size=RESULT.size + 16),
        0,
    ),
    "data outside record": lambda: (
        result_record(Tag.BYTES, bits=RESULT.size, length=8, size=RESULT.size),
        0,
    ),
    "unknown tag": lambda: (result_record(77), 0),
    "invalid UTF-8": lambda: (result_record(Tag.STR, data=b"\xc3\x28"), 0),
    "truncated UTF-8": lambda: (result_record(Tag.STR, data="€".encode()[:2]), 0),
    "print past record": lambda: _with_print(8, 1 << 30),
    "print wraps": lambda: _with_print(0xFFFF_FFFF, 2),
}


def _with_print(off: int, length: int) -> tuple[memoryview, int]:
    buf = result_record(Tag.VOID)
    struct.pack_into("<II", buf, 8, off, length)
    return buf, 0


@pytest.mark.parametrize("case", list(MALFORMED))
def test_decode_rejects_malformed_results(case: str) -> None:
    buf, offset = MALFORMED[case]()
    with pytest.raises(GuestProtocolError) as info:
        decode_result(buf, offset, "test result")
    assert info.value.kind == "malformed_record"


def test_decode_value_bounds() -> None:
    rec = memoryview(bytes(64))
    assert decode_value(rec, 64, Tag.BYTES, 32, 32, "v") == bytes(32)
    assert decode_value(rec, 64, Tag.BYTES, 0, 64, "v") == b""
    for length, bits in [(33, 32), (65, 0), (1, 64), (2**32 - 1, 2**64 - 1)]:
        with pytest.raises(GuestProtocolError):
            decode_value(rec, 64, Tag.BYTES, length, bits, "v")


# -- decoding host calls --------------------------------------------------------------------


def call_record(
    name: bytes,
    values: list[tuple[int, int, int]],
    data: bytes = b"",
    *,
    argc: int | None = None,
    name_off: int | None = None,
    name_len: int | None = None,
    size: int | None = None,
) -> memoryview:
    buf = buffer(4096)
    pos = CALL_SIZE
    buf[pos : pos + len(name)] = name
    n_off, pos = pos, pos + len(name)
    d_off = pos
    buf[pos : pos + len(data)] = data
    pos += len(data)
    for i, (tag, length, bits) in enumerate(values):
        VALUE.pack_into(
            buf, ARGS_OFFSET + i * VALUE.size, tag, length, bits if bits >= 0 else d_off
        )
    CALL_HEADER.pack_into(
        buf,
        0,
        pos if size is None else size,
        len(values) if argc is None else argc,
        n_off if name_off is None else name_off,
        len(name) if name_len is None else name_len,
        0,
        0,
    )
    return buf


def test_decode_host_call() -> None:
    buf = call_record(b"notify", [(Tag.STR, 5, -1), (Tag.I64, 0, 2**64 - 2)], b"hello")
    call = decode_call(buf, 0)
    assert call.name == "notify"
    assert call.args == ["hello", -2]
    assert call.output == b""


@pytest.mark.parametrize(
    "kwargs",
    [
        {"argc": 33},
        {"argc": 1000},
        {"name_off": CALL_SIZE - 2, "name_len": 40, "size": CALL_SIZE},
        {"name_off": 2**32 - 1},
        {"name_len": 48},  # longer than SBX_NAME_MAX
        {"size": 8},
        {"size": 2**32 - 1},
    ],
)
def test_decode_rejects_malformed_host_calls(kwargs: dict[str, int]) -> None:
    with pytest.raises(GuestProtocolError):
        decode_call(call_record(b"fn", [], **kwargs), 0)


def test_decode_refuses_a_record_offset_before_its_buffer() -> None:
    """A negative offset (struct and slices count it from the end) is outside the
    buffer, like one past its end: a valid record at the end must not be read."""
    record = call_record(b"fn", [])
    buf = memoryview(bytearray(4096))
    buf[-len(record) :] = record
    assert decode_call(buf, len(buf) - len(record)).name == "fn"
    with pytest.raises(GuestProtocolError, match="outside its buffer"):
        decode_call(buf, -len(record))


def test_decode_rejects_bad_host_call_name_and_args() -> None:
    with pytest.raises(GuestProtocolError, match="UTF-8"):
        decode_call(call_record(b"\xff\xfe", []), 0)
    with pytest.raises(GuestProtocolError):
        decode_call(call_record(b"fn", [(Tag.STR, 100, -1)], b"short"), 0)
    with pytest.raises(GuestProtocolError):
        decode_call(call_record(b"fn", [(99, 0, 0)]), 0)


# -- host function results ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "tag", "decoded"),
    [
        (None, Tag.VOID, None),
        (True, Tag.BOOL, True),
        (-5, Tag.I64, -5),
        (2**63 - 1, Tag.I64, 2**63 - 1),
        (2**63, Tag.U64, 2**63),
        (2**64 - 1, Tag.U64, 2**64 - 1),
        (-(2**63), Tag.I64, -(2**63)),
        (1.25, Tag.F64, 1.25),
        ("snow ❄", Tag.STR, "snow ❄"),
        (b"\x00raw", Tag.BYTES, b"\x00raw"),
        (bytearray(b"ba"), Tag.BYTES, b"ba"),
    ],
)
def test_encode_host_result_roundtrip(value: object, tag: Tag, decoded: object) -> None:
    buf = buffer(4096)
    encode_result(buf, Status.OK, value)
    assert RESULT.unpack_from(buf, 0)[4] == tag
    result = decode_result(buf, 0, "reply")
    assert result.value == decoded and type(result.value) is type(decoded)


@pytest.mark.parametrize(
    "value", [[1], (1,), {"a": 1}, object(), 2**64, -(2**63) - 1, "\ud800", "x" * 5000]
)
def test_encode_host_result_rejects(value: object) -> None:
    with pytest.raises(ArgumentError):
        encode_result(buffer(4096), Status.OK, value)
