"""JSON <-> guest values, by the function's declared signature.

    i32 u32 i64 u64   JSON integer (range-checked)
    f32 f64           JSON number, or "NaN" / "Infinity" / "-Infinity"
    bool              JSON true / false
    str               JSON string
    bytes             base64 string (RFC 4648, standard alphabet)

Results use the same encodings (non-finite floats as those three strings).
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Sequence

from ..abi import Signature, Tag, Value
from .errors import ApiError, bad_request

_INTS = {
    Tag.I32: (-(1 << 31), (1 << 31) - 1),
    Tag.U32: (0, (1 << 32) - 1),
    Tag.I64: (-(1 << 63), (1 << 63) - 1),
    Tag.U64: (0, (1 << 64) - 1),
}
_FLOATS = (Tag.F32, Tag.F64)
_SPECIAL_FLOATS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _arg(sig: Signature, i: int, tag: Tag, value: object) -> object:
    def wrong(expected: str) -> ApiError:
        got = "null" if value is None else type(value).__name__
        return bad_request(
            f"{sig} argument {i + 1}: expected {expected}, got {got}", "ArgumentError"
        )

    bounds = _INTS.get(tag)
    if bounds is not None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong(f"{tag.type_name} (a JSON integer)")
        if not bounds[0] <= value <= bounds[1]:
            raise bad_request(
                f"{sig} argument {i + 1}: {value} is out of range for {tag.type_name} "
                f"({bounds[0]} to {bounds[1]})",
                "ArgumentError",
            )
        return value
    if tag in _FLOATS:
        if isinstance(value, str) and value in _SPECIAL_FLOATS:
            return _SPECIAL_FLOATS[value]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong(f"{tag.type_name} (a JSON number)")
        return value
    if tag is Tag.BOOL:
        if not isinstance(value, bool):
            raise wrong("bool (true or false)")
        return value
    if tag is Tag.STR:
        if not isinstance(value, str):
            raise wrong("str (a JSON string)")
        return value
    if tag is Tag.BYTES:
        if not isinstance(value, str):
            raise wrong("bytes (a base64 string)")
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise bad_request(
                f"{sig} argument {i + 1}: not valid base64", "ArgumentError"
            ) from None
    raise wrong(tag.type_name)


def args_from_json(sig: Signature, args: Sequence[object]) -> list[object]:
    """Python values for a call of `sig`; raises ApiError (400) on a wrong count, type
    or integer range (arguments are numbered from 1). Sizes are checked by the call
    itself (ArgumentError)."""
    if len(args) != len(sig.params):
        raise bad_request(
            f"{sig} takes {len(sig.params)} argument(s), got {len(args)}", "ArgumentError"
        )
    return [
        _arg(sig, i, tag, value)
        for i, (tag, value) in enumerate(zip(sig.params, args, strict=True))
    ]


def result_to_json(value: Value) -> object:
    """The JSON form of a guest result."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    return value
