"""Big modules as several translation units: wasm2c 1.0.42 splits its output itself
(`--num-outputs=N`: `module-impl.h` with the macros and helpers, `module_0.c` with the
data and element segments, instantiation and exports and some function bodies, and
`module_1.c`... with the rest of the bodies, in the module's order), so the C compiler
builds the units in parallel (docs/aot.md). What this module still does is textual and
checked: the data segments' `{0x.., ...}` initializers become string literals of the
same bytes, which gcc parses much faster (CPython's 24,000 segments: 1.6 GB instead of
2.3 GB for that unit). A shape it does not recognise raises `SplitError` and the caller
compiles the file as wasm2c wrote it.
"""

from __future__ import annotations

import re

_DATA = re.compile(r"^(?:static )?const u8 (data_segment_data_w2c_\w+)\[\] = \{$")
_HEX = re.compile(r"0x([0-9a-f]{2}), ")
_LITERAL = 64  # bytes per line of a data string literal


class SplitError(ValueError):
    """wasm2c's output is not the shape this module expects."""


def data_as_strings(source: str) -> str:
    """`source` with every data segment's `{0x.., ...}` initializer as a string literal of
    the same bytes (the array's size given, so there is no terminating NUL)."""
    lines = source.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        data = _DATA.match(lines[i])
        if data is None:
            out.append(lines[i])
            i += 1
            continue
        end = i + 1
        while end < len(lines) and lines[end] != "};":
            end += 1
        if end == len(lines):
            raise SplitError(f"data segment {data.group(1)} does not end")
        text = "".join(lines[i + 1 : end])
        digits = "".join(_HEX.findall(text))
        if len(digits) != 2 * text.count("0x"):
            raise SplitError(f"unexpected data segment {data.group(1)}")
        size = len(digits) // 2
        head = lines[i].removesuffix("[] = {")
        out.append(f"{head}[{max(size, 1)}] =")
        step = 2 * _LITERAL
        chunks = [digits[k : k + step] for k in range(0, len(digits), step)] or [""]
        for chunk in chunks:
            escaped = "".join(f"\\x{chunk[k : k + 2]}" for k in range(0, len(chunk), 2))
            out.append(f'  "{escaped}"')
        out[-1] += ";"
        i = end + 1
    return "\n".join(out)
