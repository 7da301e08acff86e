"""Values between host and guest Python: marshal format version 2, read on the host by a
parser of its own that builds only plain values and never executes anything.

Why marshal: it is built into every CPython (the WASI build has no `_json`
accelerator, and a pure-Python encoder costs the guest hundreds of microseconds a
call), it is stable across versions for plain values (3.11 on the host, 3.12 in the
guest), and version 2 has no back-references, so a document cannot share one object
many times. The guest reads what the host sends with `marshal.loads` (the host is
trusted); the host never uses `marshal.loads` on what the guest sends (CPython's own
docs: not secure against malicious data) but `decode` below.

Types: None, bool, int (any size), float (NaN and inf included), str (lone surrogates
kept), bytes (bytearray and memoryview arrive as bytes), tuple, list, dict, set,
frozenset; subclasses travel as their base type (an IntEnum as an int, a namedtuple as
a tuple). Anything else is refused with an error naming its type; nesting is at most
MAX_DEPTH levels, and at most MAX_SET_DEPTH of them sets or frozensets (marshal, since
CPython 3.11, writes a set's members sorted by their own marshal bytes, so every set
around a value doubles the time to write it: a value from a guest, 100 frozensets deep,
would hang a host function that returns it). `decode` bounds every length by the bytes
left, refuses marshal's other types (code, complex, Ellipsis...) and references, and
checks that set members and dict keys are hashable. A set or dict with more than
MAX_SAME_HASH members (keys) of one hash is refused with a CodecError: int and float
hashes are not randomized, so a guest could otherwise send a few MiB of colliding ints
(multiples of 2**61 - 1) that take the host minutes to put in a set (each insertion
compares with every member of that hash), outside any time limit of the call. Values
that Python code makes in practice never come near either limit.
"""

from __future__ import annotations

import marshal
import struct
from collections import Counter
from typing import Any

from ..errors import ArgumentError, GuestProtocolError

VERSION = 2
MAX_DEPTH = 100
MAX_SET_DEPTH = 4  # sets on the path from the root to a value (see the module docstring)
MAX_SAME_HASH = 32  # set members or dict keys of one hash (see the module docstring)
_EXACT = (type(None), bool, int, float, str, bytes)
_BASES: tuple[type, ...] = (bool, int, float, str, bytes, list, tuple, dict, set, frozenset)
_INT = struct.Struct("<i")
_FLOAT = struct.Struct("<d")
_OTHER_TYPES = {
    ord("c"): "code",
    ord("x"): "complex",
    ord("y"): "complex",
    ord("S"): "StopIteration",
    ord("."): "Ellipsis",
    ord(":"): "slice",
}


class CodecError(ValueError):
    """A value the codec cannot carry (the message names its type)."""


def plain(value: object, depth: int = 0, sets: int = 0) -> Any:
    """`value` with every subclass replaced by its base type. Raises CodecError.
    `depth`, `sets`: the containers and the sets around it (recursion)."""
    t = type(value)
    if t in _EXACT:
        return value
    if depth >= MAX_DEPTH:
        raise CodecError(f"the value is nested deeper than {MAX_DEPTH} levels")
    depth += 1
    if t is list or t is tuple:
        assert isinstance(value, (list, tuple))
        return t(plain(v, depth, sets) for v in value)
    if t is dict:
        assert isinstance(value, dict)
        return {plain(k, depth, sets): plain(v, depth, sets) for k, v in value.items()}
    if t is set or t is frozenset:
        assert isinstance(value, (set, frozenset))
        if sets >= MAX_SET_DEPTH:
            raise CodecError(f"the value has sets nested deeper than {MAX_SET_DEPTH} levels")
        return t(plain(v, depth, sets + 1) for v in value)
    if t is bytearray or t is memoryview:
        assert isinstance(value, (bytearray, memoryview))
        return bytes(value)
    for base in _BASES:
        if isinstance(value, base):
            return plain(base(value), depth - 1, sets)
    raise CodecError(
        f"a value of type {t.__module__}.{t.__qualname__} cannot be sent between host and "
        "sandbox (None, bool, int, float, str, bytes, list, tuple, dict, set and frozenset "
        "can); convert it first"
    )


def dumps(value: object) -> bytes:
    """The marshal bytes of a value already made `plain`."""
    return marshal.dumps(value, VERSION)  # type: ignore[arg-type]


def encode_args(what: str, value: object) -> Any:
    """`plain` for arguments: CodecError becomes ArgumentError naming `what`."""
    try:
        return plain(value)
    except CodecError as exc:
        raise ArgumentError(f"{what}: {exc}") from None


def _bad(what: str) -> GuestProtocolError:
    return GuestProtocolError(f"the guest sent a malformed value: {what}")


def _check_hashes(hashes: list[int], what: str) -> None:
    """CodecError if more than MAX_SAME_HASH of `hashes` are equal. O(n): the set of
    the hashes (ints, whose own hashes do not collide) decides for almost every value."""
    if (
        len(hashes) - len(set(hashes)) >= MAX_SAME_HASH
        and Counter(hashes).most_common(1)[0][1] > MAX_SAME_HASH
    ):
        raise CodecError(
            f"a {what} with more than {MAX_SAME_HASH} members of one hash (hash flooding) "
            "cannot be sent from the sandbox"
        )


def _join_digits(digits: list[int]) -> int:
    """sum(d << 15*i): divide and conquer, so a large int costs n log n, not n**2."""
    if len(digits) <= 64:
        value = 0
        for d in reversed(digits):
            value = (value << 15) | d
        return value
    half = len(digits) // 2
    return _join_digits(digits[:half]) | (_join_digits(digits[half:]) << (15 * half))


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise _bad("a length past the end of the data")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def count(self) -> int:
        n: int = _INT.unpack(self.take(4))[0]
        if n < 0 or n > len(self.data) - self.pos:
            raise _bad(f"a count of {n} with {len(self.data) - self.pos} bytes left")
        return n

    def value(self, depth: int) -> Any:
        code = self.take(1)[0]
        if code & 0x80:
            raise _bad("a marshal reference (only version 2 is accepted)")
        c = chr(code)
        if c == "N":
            return None
        if c == "T":
            return True
        if c == "F":
            return False
        if c == "i":
            return _INT.unpack(self.take(4))[0]
        if c == "g":
            return _FLOAT.unpack(self.take(8))[0]
        if c in "ut":
            return self._text(self.count(), "utf-8")
        if c in "aA":
            return self._text(self.count(), "ascii")
        if c in "zZ":
            return self._text(self.take(1)[0], "ascii")
        if c == "s":
            return self.take(self.count())
        if c == "l":
            n = _INT.unpack(self.take(4))[0]
            size = abs(n)
            if size > (len(self.data) - self.pos) // 2:
                raise _bad("an int longer than the data")
            raw = self.take(2 * size)
            digits = list(struct.unpack(f"<{size}H", raw))
            if any(d >= 1 << 15 for d in digits):
                raise _bad("an int digit out of range")
            value = _join_digits(digits)
            return -value if n < 0 else value
        if c in "([<>)":
            if depth >= MAX_DEPTH:
                raise _bad(f"values nested deeper than {MAX_DEPTH} levels")
            n = self.take(1)[0] if c == ")" else self.count()
            items = [self.value(depth + 1) for _ in range(n)]
            if c == "[":
                return items
            if c in "()":
                return tuple(items)
            try:
                if n > MAX_SAME_HASH:
                    _check_hashes([hash(x) for x in items], "set")
                return set(items) if c == "<" else frozenset(items)
            except TypeError:
                raise _bad("an unhashable member of a set") from None
        if c == "{":
            if depth >= MAX_DEPTH:
                raise _bad(f"values nested deeper than {MAX_DEPTH} levels")
            pairs: list[tuple[Any, Any]] = []
            hashes: list[int] = []
            while self.data[self.pos : self.pos + 1] != b"0":
                key = self.value(depth + 1)
                try:
                    hashes.append(hash(key))
                except TypeError:
                    raise _bad("an unhashable dict key") from None
                pairs.append((key, self.value(depth + 1)))
            self.pos += 1
            if len(hashes) > MAX_SAME_HASH:
                _check_hashes(hashes, "dict")
            return dict(pairs)
        if code in _OTHER_TYPES:
            raise CodecError(
                f"a value of type {_OTHER_TYPES[code]} cannot be sent between sandbox and host"
            )
        raise _bad(f"unknown marshal type {code:#x}")

    def _text(self, n: int, encoding: str) -> str:
        try:
            return self.take(n).decode(encoding, "surrogatepass")
        except UnicodeDecodeError:
            raise _bad(f"a string that is not {encoding}") from None


def decode(data: bytes) -> Any:
    """The value of marshal-2 bytes the guest wrote. Raises GuestProtocolError for bytes
    that are malformed, CodecError for a well-formed value of a type the codec does not
    carry."""
    reader = _Reader(data)
    value = reader.value(0)
    if reader.pos != len(data):
        raise _bad(f"{len(data) - reader.pos} bytes after the value")
    return value
