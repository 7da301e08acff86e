"""Property-based tests of the parsers of what the Wasm engine guest answers
(sandbox/wasm/abi.py): a reply (`parse_reply`), a value list (`decode_values`) and the
fast path of a call's result (`InvokeEncoder.result`). The engine runs untrusted
modules, so its answers are untrusted: any bytes give the value they encode or a
GuestProtocolError, never another exception; the fast path agrees with the full
decoding wherever it answers; and what the host encodes reads back as it was."""

from __future__ import annotations

import math
import struct
from typing import Any

from hypothesis import event, example, given
from hypothesis import strategies as st
from support import fuzz_settings

from sandbox.abi import Signature, Tag, encode_call
from sandbox.errors import ArgumentError, GuestProtocolError, SandboxError
from sandbox.wasm.abi import (
    MISS,
    NULL_REF,
    V128_MASK,
    InvokeEncoder,
    Reply,
    Status,
    ValType,
    check_ok,
    decode_values,
    encode_values,
    pack_values,
    parse_reply,
    to_python,
)

# The engine's wasm_invoke (guests/wasm/guest.c): (i32 instance, str export, bytes values)
# -> bytes reply.
WASM_INVOKE = Signature("wasm_invoke", (Tag.I32, Tag.STR, Tag.BYTES), Tag.BYTES)
U64 = (1 << 64) - 1
SCALAR_TYPES = [ValType.I32, ValType.I64, ValType.F32, ValType.F64]
TYPE_CODES = st.one_of(st.sampled_from(list(ValType)).map(int), st.integers(0, 255))


def same(a: Any, b: Any) -> bool:
    """== that also holds for NaN (by bits) and tells True from 1."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b) or math.isnan(a) and math.isnan(b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@st.composite
def value_lists(draw: st.DrawFn) -> bytes:
    """Value lists as the engine writes them, then perhaps lying about their count or
    types, cut short or run long."""
    types = draw(st.lists(TYPE_CODES, max_size=6))
    out = bytearray([len(types)])
    for t in types:
        out.append(t)
        width = 16 if t == ValType.V128 else 8
        out += draw(st.binary(min_size=width, max_size=width))
    choice = draw(st.integers(0, 5))
    if choice == 0:
        out[0] = draw(st.integers(0, 255))
    elif choice == 1:
        del out[draw(st.integers(0, len(out))) :]
    elif choice == 2:
        out += draw(st.binary(min_size=1, max_size=17))
    return bytes(out)


def ref_values(payload: bytes) -> list[tuple[int, int]] | None:
    """The value list format (guests/wasm/wasm_abi.h), decoded again: a count byte, then
    per value a type byte and 8 bytes (16 for v128), little-endian, nothing after."""
    if not payload:
        return None
    at, out = 1, []
    for _ in range(payload[0]):
        if at >= len(payload):
            return None
        t = payload[at]
        width = 16 if t == ValType.V128 else 8
        if at + 1 + width > len(payload) or t not in set(ValType):
            return None
        out.append((t, int.from_bytes(payload[at + 1 : at + 1 + width], "little")))
        at += 1 + width
    return out if at == len(payload) else None


@fuzz_settings(300)
@given(st.one_of(value_lists(), st.binary(max_size=60)))
@example(b"\x01\x7b" + bytes(8))  # a v128 with 8 of its 16 bytes
@example(b"\x02\x7f" + bytes(8))  # one value of two
@example(b"\xff")
@example(b"\x00\x00")
def test_decode_values(payload: bytes) -> None:
    expected = ref_values(payload)
    try:
        values = decode_values(payload, "results of f")
    except GuestProtocolError as exc:
        event("refused")
        assert expected is None, f"refused a valid value list: {exc}"
        assert "results of f" in str(exc)
        return
    event(f"accepted, {len(values)} values")
    assert expected is not None and [(int(t), b) for t, b in values] == expected
    assert all(isinstance(t, ValType) for t, _ in values)
    assert pack_values(values) == payload  # one encoding per value list
    for t, bits in values:
        to_python(t, bits)  # every decoded value has a Python value


@fuzz_settings(200)
@given(st.one_of(st.binary(max_size=24), st.none(), st.integers(), st.text(max_size=3)))
@example(b"")
@example(b"\x01")
@example(b"\x07")
def test_parse_reply(data: Any) -> None:
    try:
        reply = parse_reply(data, "wasm_get")
    except GuestProtocolError as exc:
        assert not (isinstance(data, bytes) and data and data[0] in set(Status)) or (
            data[0] != Status.OK and len(data) < 2
        ), exc
        return
    assert isinstance(data, bytes) and reply.status == data[0]
    if reply.status == Status.OK:
        assert (reply.trap_kind, reply.payload) == (0, data[1:])
    else:
        assert (reply.trap_kind, reply.payload) == (data[1], data[2:])
    assert isinstance(reply.message, str)
    try:
        check_ok(reply, "f")
    except SandboxError:  # the typed error a status stands for
        assert reply.status != Status.OK


# -- the fast path of a call's result -------------------------------------------------


def full_decoding(reply: bytes) -> Any:
    """What the call path does when the fast path misses (WasmSandbox.call): the
    result, or the SandboxError the reply stands for."""
    try:
        parsed = parse_reply(reply, "f")
        check_ok(parsed, "f")
        values = [to_python(t, b) for t, b in decode_values(parsed.payload, "results of f")]
    except SandboxError as exc:
        return exc
    return None if not values else values[0] if len(values) == 1 else tuple(values)


@st.composite
def replies(draw: st.DrawFn, results: tuple[ValType, ...]) -> bytes:
    """An OK reply with `results` (sometimes other types, count or status), or bytes."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=40))
    types = [
        t if draw(st.integers(0, 5)) else draw(st.sampled_from(list(ValType))) for t in results
    ]
    if draw(st.integers(0, 5)) == 0:
        types = types[:-1] if types and draw(st.booleans()) else [*types, ValType.I32]
    values = [(t, draw(st.integers(0, V128_MASK if t == ValType.V128 else U64))) for t in types]
    status = Status.OK if draw(st.integers(0, 5)) else draw(st.sampled_from(list(Status)))
    return bytes([status]) + pack_values(values)


@st.composite
def encoders_and_replies(draw: st.DrawFn) -> tuple[InvokeEncoder, bytes]:
    params = tuple(draw(st.lists(st.sampled_from(list(ValType)), max_size=4)))
    results = tuple(draw(st.lists(st.sampled_from(SCALAR_TYPES + [ValType.V128]), max_size=4)))
    encoder = InvokeEncoder(WASM_INVOKE, 0, 1, "f", params, results)
    return encoder, draw(replies(results))


@fuzz_settings(300)
@given(encoders_and_replies())
@example((InvokeEncoder(WASM_INVOKE, 0, 1, "f", (), (ValType.I32,)), b"\x00\x01\x7f" + b"\xff" * 8))
@example((InvokeEncoder(WASM_INVOKE, 0, 1, "f", (), (ValType.F32,)), b"\x00\x01\x7d" + b"\x01" * 8))
@example((InvokeEncoder(WASM_INVOKE, 0, 1, "f", (), ()), b"\x00\x00"))
def test_result_fast_path_agrees(case: tuple[InvokeEncoder, bytes]) -> None:
    encoder, reply = case
    fast = encoder.result(reply)
    full = full_decoding(reply)
    if fast is MISS:
        event("miss")
        return
    event("fast")
    assert not isinstance(full, BaseException), full
    assert same(fast, full)


# -- what the host writes reads back ----------------------------------------------------

ARGS: dict[ValType, st.SearchStrategy[Any]] = {
    ValType.I32: st.integers(-(1 << 31), (1 << 32) - 1),
    ValType.I64: st.integers(-(1 << 63), U64),
    ValType.F32: st.floats(width=32),
    ValType.F64: st.floats() | st.integers(-(1 << 53), 1 << 53),
    ValType.V128: st.integers(0, V128_MASK),
    ValType.FUNCREF: st.none() | st.integers(0, NULL_REF - 1),
    ValType.EXTERNREF: st.none() | st.integers(0, NULL_REF - 1),
    ValType.EXNREF: st.none(),
}


def expected_python(t: ValType, v: Any) -> Any:
    if t in (ValType.I32, ValType.I64):
        bits = 32 if t == ValType.I32 else 64
        v &= (1 << bits) - 1
        return v - (1 << bits) if v >> (bits - 1) else v
    if t == ValType.F32:
        return struct.unpack("<f", struct.pack("<f", v))[0]
    if t == ValType.F64:
        return float(v)
    return v


@fuzz_settings(200)
@given(
    st.lists(st.sampled_from(list(ValType)), max_size=8).flatmap(
        lambda types: st.tuples(st.just(types), st.tuples(*(ARGS[t] for t in types)))
    )
)
def test_values_read_back(case: tuple[list[ValType], tuple[Any, ...]]) -> None:
    """encode_values -> decode_values -> to_python gives the arguments back (ints as
    the signed value of their width, f32 rounded), and InvokeEncoder's fast path writes
    the record encode_values + encode_call write."""
    types, args = case
    data = encode_values(types, args, "f")
    decoded = decode_values(data, "f")
    assert [t for t, _ in decoded] == types
    assert same(
        [to_python(t, b) for t, b in decoded],
        [expected_python(t, v) for t, v in zip(types, args, strict=True)],
    )
    encoder = InvokeEncoder(WASM_INVOKE, 0, 7, "f", tuple(types), ())
    fast = memoryview(bytearray(4096))
    slow = memoryview(bytearray(4096))
    try:
        encoder.encode(fast, args)
    except ArgumentError:
        raise AssertionError("the fast path refused arguments encode_values took") from None
    size = encode_call(slow, WASM_INVOKE, (7, "f", data), 1)
    assert bytes(fast[:size]) == bytes(slow[:size])


def test_reply_message_of_bad_utf8() -> None:
    assert Reply(Status.TRAP, 0, b"\xff").message == "\ufffd"
