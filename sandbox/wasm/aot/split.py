"""Splitting wasm2c's C for a big module into several translation units that the C
compiler builds in parallel (Debian's wasm2c 1.0.32 writes one file; `--num-outputs`
came in later wabt releases).

gcc's time and memory grow faster than the size of one translation unit: CPython's
142 MB of C took 470 s of CPU and 6.8 GB at -O2 as one file, ~260 s in all and
under 0.5 GB per unit as 16 (docs/aot.md). The split is textual, over the shapes
wasm2c 1.0.32 emits, and checked: anything unexpected raises `SplitError` and the
caller compiles the file whole.

- The *main* unit is the file without the module's function bodies: wasm2c's macros
  and helpers, the function-type table, the prototypes, the globals, the data and
  element segments, the instantiation and the exports. Its data segments become string
  literals (gcc parses a 20 MB array initializer slowly; a string quickly); it holds no
  hot code and is compiled at -O0.
- Each *function* unit is the prelude (macros and static helpers up to the function-type
  table), the table declared `extern`, every prototype, `extern` declarations of the
  data and element segments its `memory.init` and `table.init` read, and a contiguous
  run of the
  function bodies (wasm2c keeps the module's order, which keeps a source file's functions
  together, so most direct calls, and gcc's inlining of them, stay within one unit).

The module's functions, the function-type table and the segments lose `static` and
become hidden symbols: direct calls across units, no GOT, nothing exported from the
guest.
"""

from __future__ import annotations

import re

HIDDEN = '__attribute__((visibility("hidden")))'
_FUNCTION = re.compile(r"static (\w+ w2c_\w+\(Z_m_instance_t\*)")
_TYPES = re.compile(r"static (u32 func_types\[\d+\];)$")
_DATA = re.compile(r"static const u8 (data_segment_data_w2c_\w+)\[\] = \{$")
_ELEM = re.compile(r"static (const wasm_elem_segment_expr_t elem_segment_exprs_w2c_\w+)\[\] = \{$")
_SEGMENT = re.compile(r"\b(?:data_segment_data|elem_segment_exprs)_w2c_\w+")
_HEX = re.compile(r"0x([0-9a-f]{2}), ")
_LITERAL = 64  # bytes per line of a data string literal


class SplitError(ValueError):
    """wasm2c's output is not the shape the splitter expects."""


def split(source: str, parts: int) -> tuple[str, list[str]]:
    """The main unit and `parts` function units (see the module's docstring) of
    wasm2c's `source`, for a module named `m`."""
    if parts < 1:
        raise SplitError("parts must be at least 1")
    lines = source.split("\n")
    types_at = [i for i, line in enumerate(lines) if _TYPES.match(line)]
    if len(types_at) != 1:
        raise SplitError("no single function-type table")
    types = _TYPES.match(lines[types_at[0]])
    assert types is not None
    main: list[str] = []
    prototypes: list[str] = []
    bodies: list[list[str]] = []
    segments: dict[str, str] = {}  # name -> declaration, of data and element segments
    i = 0
    while i < len(lines):
        line = lines[i]
        function = _FUNCTION.match(line)
        if function is None:
            elem = _ELEM.match(line)
            if i == types_at[0]:
                line = f"{HIDDEN} {types.group(1)}"
            elif elem is not None:
                line = f"{HIDDEN} {elem.group(1)}[] = {{"
                segments[elem.group(1).split()[-1]] = f"{elem.group(1)}[]"
            elif (data := _DATA.match(line)) is not None:
                segments[data.group(1)] = f"const u8 {data.group(1)}[]"
            main.append(line)
            i += 1
            continue
        line = f"{HIDDEN} {line.removeprefix('static ')}"
        if line.endswith(";"):
            prototypes.append(line)
            main.append(line)
            i += 1
            continue
        if not line.endswith("{") and not line.endswith(", "):
            raise SplitError(f"unexpected function header at line {i + 1}")
        end = i + 1
        while end < len(lines) and lines[end] != "}":
            if lines[end] and not lines[end][0].isspace():
                raise SplitError(f"unexpected top-level text in a function at line {end + 1}")
            end += 1
        if end == len(lines):
            raise SplitError("a function body does not end")
        bodies.append([line, *lines[i + 1 : end + 1]])
        i = end + 1
    if not bodies or len(prototypes) < len(bodies):
        raise SplitError(f"{len(bodies)} function bodies, {len(prototypes)} prototypes")
    head = [*lines[: types_at[0]], f"extern {HIDDEN} {types.group(1)}", *prototypes]
    total = sum(len(b) for b in bodies)
    units: list[list[str]] = [[] for _ in range(parts)]
    done = 0
    for body in bodies:
        units[min(parts - 1, done * parts // total)].extend(body)
        done += len(body)
    texts = []
    for unit in units:
        text = "\n".join(unit)
        # the segments this unit's memory.init and table.init read, defined in main
        used = sorted(set(_SEGMENT.findall(text)))
        unknown = [name for name in used if name not in segments]
        if unknown:
            raise SplitError(f"a function uses the undefined segment {unknown[0]}")
        externs = [f"extern {HIDDEN} {segments[name]};" for name in used]
        texts.append("\n".join([*head, *externs, text]) + "\n")
    return _data_as_strings(main), texts


def _data_as_strings(lines: list[str]) -> str:
    """`lines` with every data segment's `{0x.., ...}` initializer as a string literal of
    the same bytes (the array's size given, so there is no terminating NUL)."""
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
        out.append(f"{HIDDEN} const u8 {data.group(1)}[{max(size, 1)}] =")
        step = 2 * _LITERAL
        chunks = [digits[k : k + step] for k in range(0, len(digits), step)] or [""]
        for chunk in chunks:
            escaped = "".join(f"\\x{chunk[k : k + 2]}" for k in range(0, len(chunk), 2))
            out.append(f'  "{escaped}"')
        out[-1] += ";"
        i = end + 1
    return "\n".join(out)
