"""Patches to wasm2c's output (sandbox/wasm/aot/compiler.py applies them): the AOT
runtime's trap kinds for call_indirect and table bounds, SIMDe's corrections, exnref
tables' helpers, and the size check of a throw's payload (guests/aot/aot.h)."""

from __future__ import annotations

import re


class PatchError(Exception):
    """wasm2c's output is not the shape these patches expect (another wasm2c version)."""


_CALL_INDIRECT = """
/* sandbox AOT: call_indirect traps with the interpreter's kind for each reason. */
#undef CHECK_CALL_INDIRECT
#define CHECK_CALL_INDIRECT(table, ft, x)                        \\
  (LIKELY((x) < table.size && ft == table.data[x].func_type) ||  \\
   aot_call_indirect_check(&(table), ft, x))
#include "simd_fixes.h"
"""


def patch(source: str) -> str:
    """wasm2c's C with the AOT runtime's trap kinds: call_indirect's three reasons, and
    table bounds (wasm2c says OOB for memory and tables alike). Raises PatchError
    if the text is not the shape these patches expect (another wasm2c version)."""
    lines = source.split("\n")
    out: list[str] = []
    in_table = False
    patched = tables = 0
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#define CHECK_CALL_INDIRECT("):
            while lines[i].endswith("\\"):
                out.append(lines[i])
                i += 1
            out.append(lines[i])
            out.extend(_CALL_INDIRECT.split("\n"))
            patched += 1
            i += 1
            continue
        if line == "typedef simde_v128_t v128;":  # then its #endif: SIMDe is defined
            out.append(line)
            out.append(lines[i + 1])
            out.append('#include "simd_fixes.h"')
            i += 2
            continue
        if "table" in line.lower() and (line.startswith("static inline") or "DEFINE_TABLE" in line):
            in_table = True
        elif not line.strip():
            in_table = False
        exnref = re.fullmatch(r"DEFINE_TABLE_(\w+)\(externref\)", line)
        if exnref is not None:  # wasm2c 1.0.42 uses exnref tables' helpers, never defines them
            out += [line, "#ifdef WASM_RT_EXCEPTIONS_H_", f"{line[: line.index('(')]}(exnref)"]
            out.append("#endif")
            i += 1
            continue
        if in_table and ("TRAP(OOB)" in line or "RANGE_CHECK(" in line):
            line = line.replace("TRAP(OOB)", "TRAP(TABLE_OOB)")
            line = line.replace("RANGE_CHECK(", "AOT_TABLE_RANGE_CHECK(")
            tables += 1
        out.append(line)
        i += 1
    if patched != 1:
        raise PatchError("unexpected wasm2c output: no CHECK_CALL_INDIRECT macro to patch")
    if "_table_" in source and not tables:
        raise PatchError("unexpected wasm2c output: no table bounds checks to patch")
    return "\n".join(out)


def throws(source: str) -> str:
    """The throws of tags (payload size known at compile time) checked against wasm2c's
    exnref size (AOT_LOAD_EXCEPTION in guests/aot/aot.h)."""
    return source.replace("wasm_rt_load_exception(&", "AOT_LOAD_EXCEPTION(&")
