"""Property-based tests of sandbox.python.codec: `decode` reads what a hostile guest
writes, so any bytes give either the value marshal itself would read or the documented
error (GuestProtocolError for malformed bytes, CodecError for a well-formed value the
codec does not carry), never another exception, a hang or an allocation the bytes do
not pay for; and every value of the documented types, nested up to MAX_DEPTH, comes
back from encode -> decode as it went in.

Regression (found here): a set or dict of distinct ints of one hash (multiples of
2**61 - 1) cost the host quadratic time; 30,000 of them (450 KB of a 4 MiB mailbox)
took ~7 s to decode, a full mailbox minutes, outside any time limit of the call."""

from __future__ import annotations

import enum
import marshal
import struct
import time
from collections import namedtuple
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from support import fuzz_settings

from sandbox import Sandbox
from sandbox.errors import GuestProtocolError, HostFunctionError
from sandbox.python import PythonError
from sandbox.python.codec import (
    MAX_DEPTH,
    MAX_SAME_HASH,
    MAX_SET_DEPTH,
    CodecError,
    decode,
    dumps,
    plain,
)

HASH_MODULUS = 2**61 - 1  # sys.hash_info.modulus: ints that differ by it share a hash


def canon(value: Any) -> Any:
    """A form of a decoded value that == compares exactly: the type of every part, floats
    by their bits (NaN, -0.0), sets and dicts as sorted / ordered pairs."""
    t = type(value)
    if t is float:
        return ("float", struct.pack("<d", value))
    if t in (list, tuple):
        return (t.__name__, [canon(v) for v in value])
    if t in (set, frozenset):
        return (t.__name__, sorted((canon(v) for v in value), key=repr))
    if t is dict:
        return ("dict", [(canon(k), canon(v)) for k, v in value.items()])
    assert t in (type(None), bool, int, str, bytes), t
    return (t.__name__, value)


def decode_checked(data: bytes) -> Any:
    """decode(data), which must agree with marshal.loads where it returns a value
    (marshal is only the oracle here: the bytes it is given are well-formed)."""
    try:
        value = decode(data)
    except (GuestProtocolError, CodecError):
        return None
    try:
        reference = marshal.loads(data)
    except ValueError:
        # marshal refuses a long with a zero top digit, which decode reads as the same
        # int; nothing else well-formed for decode is malformed for marshal.
        assert b"l" in data
        return value
    assert canon(value) == canon(reference)
    return value


# -- arbitrary bytes and mutations of valid encodings ---------------------------------


@fuzz_settings(300)
@given(st.binary(max_size=200))
@example(b"l\xff\xff\xff\x7f")  # an int of 2**31 digits claimed
@example(b"s\xff\xff\xff\xff")  # a negative length
@example(b"[\xff\xff\xff\x7f" + b"N" * 8)  # a list of 2**31 - 1 items claimed
@example(b"(" * 50 + b"\x01\x00\x00\x00" * 50)  # deep, then truncated
@example(b"{" * (MAX_DEPTH + 1) + b"0" * (MAX_DEPTH + 1))
@example(b"u\x02\x00\x00\x00\xed\xa0")  # a truncated surrogate
@example(b"\xe9\x01\x00\x00\x00")  # a reference flag
def test_decode_arbitrary_bytes(data: bytes) -> None:
    decode_checked(data)


# A byte-level vocabulary of marshal version 2 (type codes and their fields), so that
# generated documents get past the first byte more often than random bytes do.
_TOKENS = st.one_of(
    st.sampled_from([b"N", b"T", b"F", b"0", b"(", b"[", b"{", b"<", b">", b")", b"g", b"l"]),
    st.sampled_from([b"i", b"u", b"s", b"a", b"z", b"[", b"(", b"<"]).flatmap(
        lambda code: st.integers(-3, 12).map(lambda n: code + struct.pack("<i", n))
    ),
    st.binary(min_size=1, max_size=4),
)


@fuzz_settings(300)
@given(st.lists(_TOKENS, max_size=30).map(b"".join))
def test_decode_token_soup(data: bytes) -> None:
    decode_checked(data)


_HUGE_COUNTS = [0x7FFF_FFFF, 0xFFFF_FFFF, 0x8000_0000, 0x4000_0000, 0x0010_0000]


def mutated(data: bytes, edits: list[tuple[int, int, int]], cut: int | None) -> bytes:
    """`data` with edits applied: (kind, position, value), kind 0 flips bit value % 8 of a
    byte, 1 sets a byte, 2 writes a huge count at the position, 3 inserts a byte; then
    cut to `cut` bytes."""
    out = bytearray(data)
    for kind, pos, value in edits:
        if not out:
            break
        pos %= len(out)
        if kind == 0:
            out[pos] ^= 1 << (value % 8)
        elif kind == 1:
            out[pos] = value % 256
        elif kind == 2:
            out[pos : pos + 4] = struct.pack("<I", _HUGE_COUNTS[value % len(_HUGE_COUNTS)])
        else:
            out.insert(pos, value % 256)
    return bytes(out if cut is None else out[:cut])


# -- the documented types -------------------------------------------------------------

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**300), max_value=2**300),
    st.floats(allow_nan=True, allow_infinity=True),
    # Every code point, lone surrogates included (marshal carries them).
    st.text(alphabet=st.characters(exclude_categories=()), max_size=20),
    st.binary(max_size=20),
)
_HASHABLE = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.tuples(inner, inner), st.frozensets(inner, max_size=4).map(frozenset)
    ),
    max_leaves=8,
)
VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.lists(inner, max_size=5).map(tuple),
        st.dictionaries(_HASHABLE, inner, max_size=4),
        st.sets(_HASHABLE, max_size=4),
        st.frozensets(_HASHABLE, max_size=4),
    ),
    max_leaves=25,
)


def set_depth(value: Any) -> int:
    """The most sets and frozensets on one path from the root of `value` to a leaf."""
    t = type(value)
    if t in (list, tuple):
        return max((set_depth(v) for v in value), default=0)
    if t is dict:
        return max((max(set_depth(k), set_depth(v)) for k, v in value.items()), default=0)
    if t in (set, frozenset):
        return 1 + max((set_depth(v) for v in value), default=0)
    return 0


@fuzz_settings(300)
@given(VALUES)
def test_round_trip(value: Any) -> None:
    """Within MAX_SET_DEPTH, every value comes back as it went; beyond, plain refuses it."""
    if set_depth(value) > MAX_SET_DEPTH:
        with pytest.raises(CodecError, match="sets nested deeper"):
            plain(value)
        return
    assert canon(decode_checked(dumps(plain(value)))) == canon(value)


@fuzz_settings(300)
@given(
    VALUES.filter(lambda v: set_depth(v) <= MAX_SET_DEPTH),
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2**16), st.integers(0, 255)), max_size=3),
    st.none() | st.integers(0, 400),
)
def test_decode_mutated_encodings(
    value: Any, edits: list[tuple[int, int, int]], cut: int | None
) -> None:
    decode_checked(mutated(dumps(plain(value)), edits, cut))


class Color(enum.IntEnum):
    RED = 1


Point = namedtuple("Point", "x y")

_NEST = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}


def nested(kinds: list[str]) -> tuple[Any, bytes]:
    """1 inside containers of `kinds` (outermost first; "dict" puts it under key 0), and
    its marshal bytes, written here (marshal.dumps itself is slow on deep sets). Inside
    a set, lists and dicts (unhashable) become tuples."""
    in_set = False
    for i, kind in enumerate(kinds):
        if in_set and kind in ("list", "dict"):
            kinds[i] = "tuple"
        in_set = in_set or kind in ("set", "frozenset")
    value: Any = 1
    data = b"i\x01\x00\x00\x00"
    for kind in reversed(kinds):
        if kind == "dict":
            value, data = {0: value}, b"{i\x00\x00\x00\x00" + data + b"0"
        else:
            code = {"list": b"[", "tuple": b"(", "set": b"<", "frozenset": b">"}[kind]
            value, data = _NEST[kind]([value]), code + b"\x01\x00\x00\x00" + data
    return value, data


@fuzz_settings(150)
@given(
    st.integers(0, MAX_DEPTH + 2).flatmap(
        lambda n: st.lists(
            st.sampled_from(["list", "tuple", "dict", "frozenset"]), min_size=n, max_size=n
        )
    ),
    st.booleans(),
)
@example(["frozenset"] * 25, False)  # main: plain took it, marshal.dumps ran ~5 s (2**depth)
@example(["tuple", "frozenset"] * 13, True)
def test_nesting_limits(kinds: list[str], outer_set: bool) -> None:
    """Up to MAX_DEPTH containers, MAX_SET_DEPTH of them sets, travel both ways (quickly:
    dumps is exponential in the sets' nesting); one more container is refused by plain
    (CodecError) and by decode (GuestProtocolError); more sets only by plain."""
    if outer_set:
        kinds = ["set", *kinds]
    value, data = nested(kinds)
    sets = sum(k in ("set", "frozenset") for k in kinds)
    if len(kinds) > MAX_DEPTH:
        with pytest.raises(CodecError, match="nested deeper"):
            plain(value)
        with pytest.raises(GuestProtocolError, match="nested deeper"):
            decode(data)
        return
    assert canon(decode(data)) == canon(value)
    if sets > MAX_SET_DEPTH:
        with pytest.raises(CodecError, match="sets nested deeper"):
            plain(value)
        return
    start = time.perf_counter()
    assert canon(decode(dumps(plain(value)))) == canon(value)
    assert time.perf_counter() - start < 0.5


def test_subclasses_travel_as_their_base() -> None:
    value = plain([Color.RED, Point(1, 2), bytearray(b"ab"), memoryview(b"cd")])
    assert canon(decode(dumps(value))) == canon([1, (1, 2), b"ab", b"cd"])


# -- hash flooding --------------------------------------------------------------------


def colliding(groups: int, per_group: int, kind: str) -> bytes:
    """The marshal bytes of a set or dict (of None values) of `groups` groups of
    `per_group` distinct ints, the ints of a group of one hash (written here: building
    the set itself would be quadratic)."""
    ints = [k * HASH_MODULUS + g for g in range(groups) for k in range(1, per_group + 1)]
    items = marshal.dumps(ints, 2)[5:]  # the list's items, each an int of its own
    if kind == "set":
        return b"<" + struct.pack("<i", len(ints)) + items
    return b"{" + b"".join(marshal.dumps(i, 2) + b"N" for i in ints) + b"0"


@fuzz_settings(100, deadline_ms=5000)
@given(st.integers(1, 40), st.integers(1, 3 * MAX_SAME_HASH), st.sampled_from(["set", "dict"]))
@example(1, 30_000, "set")  # main: ~7 s, quadratic in the count
@example(1, 30_000, "dict")
def test_colliding_hashes_cost_linear_time(groups: int, per_group: int, kind: str) -> None:
    """A set or dict whose members share hashes is decoded exactly while no more than
    MAX_SAME_HASH share one, else refused with a CodecError, in time linear in its size."""
    data = colliding(groups, per_group, kind)
    start = time.perf_counter()
    try:
        decoded = decode_checked(data) if per_group <= MAX_SAME_HASH else decode(data)
    except CodecError as exc:
        assert "hash flooding" in str(exc)
        assert per_group > MAX_SAME_HASH
    else:
        assert per_group <= MAX_SAME_HASH
        assert len(decoded) == groups * per_group
    assert time.perf_counter() - start < 1.0 + len(data) / 1e6  # ~50 ms/MB when quiet


def test_hash_flooding_within_the_limit_is_cheap() -> None:
    """The worst case that is accepted (every group at MAX_SAME_HASH) costs about what
    plain ints do: ~2 MB decode well within a few seconds."""
    data = colliding(4000, MAX_SAME_HASH, "set")
    start = time.perf_counter()
    assert len(decode(data)) == 4000 * MAX_SAME_HASH
    assert time.perf_counter() - start < 5.0


# -- the same limits through a real guest ---------------------------------------------


def colliding_set(n: int) -> set[int]:
    return {k * (2**61 - 1) for k in range(1, n + 1)}


def deep_frozenset(depth: int) -> frozenset[Any]:
    value: frozenset[Any] = frozenset([1])
    for _ in range(depth - 1):
        value = frozenset([value])
    return value


@pytest.mark.requires_kvm
def test_guest_results_and_host_functions_within_the_limits() -> None:
    """A guest's result of colliding ints is refused as a TypeError of its own (the
    sandbox stays usable); a host function that returns a value a guest sent it, nested
    30 frozensets deep, fails at once with a HostFunctionError (main: marshal.dumps ran
    for ~2**30 times the value's size)."""

    def echo(value: Any) -> Any:
        return value

    def bounce(depth: int) -> object:  # runs in the guest: annotations of builtins only
        # Sends echo(<1 in `depth` frozensets>) as bytes written here (the guest's own
        # marshal.dumps would take 2**depth), then returns what the host answers.
        import sandbox_guest as g
        from sandbox_guest import host

        inner = b"i\x01\x00\x00\x00"
        for _ in range(depth):
            inner = b">\x01\x00\x00\x00" + inner
        call = b"(\x03\x00\x00\x00u\x04\x00\x00\x00echo(\x01\x00\x00\x00" + inner + b"{0"
        original = g._dumps

        def forged(value: object, version: int) -> bytes:
            if isinstance(value, tuple) and value[:1] == ("echo",):
                return call
            return original(value, version)

        g._dumps = forged
        try:
            return host.echo(None)
        finally:
            g._dumps = original

    with Sandbox("python", host_functions={"echo": echo}) as sb:
        assert sb.call(colliding_set, MAX_SAME_HASH) == colliding_set(MAX_SAME_HASH)
        with pytest.raises(PythonError, match="hash flooding"):
            sb.call(colliding_set, MAX_SAME_HASH + 1, timeout=20)
        assert sb.call(bounce, MAX_SET_DEPTH, timeout=20) == deep_frozenset(MAX_SET_DEPTH)
        start = time.perf_counter()
        with pytest.raises(HostFunctionError, match="sets nested deeper") as info:
            sb.call(bounce, 30, timeout=20)
        assert isinstance(info.value.__cause__, CodecError)
        assert time.perf_counter() - start < 10
        assert sb.call(colliding_set, 3) == colliding_set(3)
