"""The C glue between wasm2c's output for one module and the AOT guest's runtime
(guests/aot/aot.h): the `aot_module` descriptor, an adapter ("thunk") per exported
function or global, and a definition per function import that calls the host.

C names come from wasm2c's header, where a comment `/* import: 'module' 'name' */` or
`/* export: 'name' */` precedes each declaration; the types come from the WasmModule
(read from the binary), so nothing is re-derived from C.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..abi import ValType
from ..module import FuncType, GlobalType, WasmModule


class GlueError(Exception):
    """wasm2c's output is not what the glue expects, or the module uses what the AOT tier
    does not support; the caller keeps the module on the interpreter."""


_DECL = re.compile(r"^(?P<ret>.*?)\b(?P<name>w2c_\w+)\((?P<params>.*)\);$")
_TAG = re.compile(r"^extern const wasm_rt_tag_t (?P<name>w2c_\w+);$")
_INSTANTIATE = re.compile(
    r"^void (?P<name>wasm2c_\w+_instantiate)\((?P<instance>w2c_\w+)\*(?P<params>[^)]*)\);$", re.M
)

# Value type -> (C type, letter in wasm2c's multi-value struct fields).
_C = {
    ValType.I32: ("u32", "i"),
    ValType.I64: ("u64", "j"),
    ValType.F32: ("f32", "f"),
    ValType.F64: ("f64", "d"),
    ValType.FUNCREF: ("wasm_rt_funcref_t", "r"),
    ValType.EXTERNREF: ("wasm_rt_externref_t", "e"),
    ValType.V128: ("v128", "o"),
}


@dataclass(frozen=True)
class _Decl:
    ret: str
    name: str
    params: str


_ESCAPE = re.compile(rb"\\([0-9A-F]{2})")


def _unescaped(text: str) -> str:
    """A name from wasm2c 1.0.42's comments: it writes bytes outside printable ASCII, and
    `/` and `?` (which could end the comment or form a trigraph), as \\XX. (Names with
    a backslash of their own never get here: compiler.check_names refuses them.)"""
    raw = _ESCAPE.sub(lambda m: bytes([int(m[1], 16)]), text.encode())
    return raw.decode(errors="replace")


def _declarations(header: str, marker: str) -> dict[str, _Decl]:
    """wasm2c's declarations of `marker` ("import" or "export"), keyed by the name(s) in
    the comment before each, unescaped (`/* import: 'module' 'name' */` gives
    "module' 'name", `/* export: 'name' */` gives "name"); a key seen twice is an error
    (the module stays on the interpreter)."""
    lines = header.splitlines()
    out: dict[str, _Decl] = {}
    start, end = f"/* {marker}: '", "' */"
    for i, line in enumerate(lines):
        if line.startswith(start) and line.endswith(end) and i + 1 < len(lines):
            key = _unescaped(line[len(start) : -len(end)])
            decl = lines[i + 1].strip()
            m = _DECL.match(decl)
            tag = _TAG.match(decl)
            if (m is None and tag is None) or key in out:
                raise GlueError(f"unexpected wasm2c declaration: {lines[i + 1]!r}")
            if m is not None:
                out[key] = _Decl(m["ret"].strip(), m["name"], m["params"])
            elif tag is not None:  # an exported tag: not reached by name from the host
                out[key] = _Decl("wasm_rt_tag_t", tag["name"], "")
    return out


def _find(decls: dict[str, _Decl], key: str) -> _Decl:
    decl = decls.get(key)
    if decl is None:
        raise GlueError(f"wasm2c's header has no declaration for {key!r}")
    return decl


def _to_c(t: ValType, expr: str) -> str:
    """C value of type t from raw bits `expr` (a u64)."""
    if t == ValType.V128:
        return f"aot_v128_value({expr})"
    if t == ValType.I32:
        return f"(u32){expr}.lo"
    if t == ValType.I64:
        return f"(u64){expr}.lo"
    if t == ValType.F32:
        return f"aot_f32_value({expr}.lo)"
    if t == ValType.F64:
        return f"aot_f64_value({expr}.lo)"
    if t == ValType.FUNCREF:
        return f"aot_funcref_value({expr}.lo)"
    return f"aot_externref_value({expr}.lo)"


def _to_bits(t: ValType, expr: str) -> str:
    """Raw bits (an aot_val) of the C value `expr` of type t."""
    if t == ValType.V128:
        return f"aot_v128_bits({expr})"
    if t in (ValType.I32, ValType.I64):
        bits = f"(uint64_t){expr}"
    elif t == ValType.F32:
        bits = f"aot_f32_bits({expr})"
    elif t == ValType.F64:
        bits = f"aot_f64_bits({expr})"
    elif t == ValType.FUNCREF:
        bits = f"aot_funcref_bits({expr})"
    else:
        bits = f"aot_externref_bits({expr})"
    return f"(aot_val){{{bits}, 0}}"


def _check_types(types: tuple[ValType, ...], what: str) -> None:
    for t in types:
        if t not in _C:
            raise GlueError(f"{what} uses {t.name.lower()}, which the AOT tier does not support")
    if len(types) > 255:
        raise GlueError(f"{what} has more than 255 parameters or results")


def _types_array(name: str, types: tuple[ValType, ...]) -> str:
    body = ", ".join(f"0x{int(t):02x}" for t in types) or "0"
    return f"static const uint8_t {name}[] = {{{body}}};"


def _c_string(text: str) -> str:
    return '"' + "".join(f"\\{b:03o}" for b in text.encode()) + '"'


def generate(module: WasmModule, header: str, header_name: str, module_id: str) -> str:
    """The glue C source for `module`, given wasm2c's header text. Raises GlueError."""
    for imp in module.imports:
        if imp.kind != "func":
            raise GlueError(
                f"import {imp.module}.{imp.name} is a {imp.kind}: the AOT tier links only "
                "function imports"
            )
    inst = _INSTANTIATE.search(header)
    if inst is None:
        raise GlueError("wasm2c's header has no instantiate declaration")
    instance_type = inst["instance"]
    n_import_modules = inst["params"].count(",")
    # wasm2c declares imports sorted by (module, name), exports in module order: both
    # are matched by the comment wasm2c writes before each declaration (check_names in
    # compiler.py has ruled out names that could forge or end such a comment).
    import_decls = _declarations(header, "import")
    export_decls = _declarations(header, "export")
    func_imports = module.func_imports
    if len(import_decls) != len(func_imports) or len(export_decls) != len(module.exports):
        raise GlueError(
            f"wasm2c declared {len(import_decls)} imports and {len(export_decls)} exports, "
            f"the module has {len(func_imports)} and {len(module.exports)}"
        )
    imports = [_find(import_decls, f"{i.module}' '{i.name}") for i in func_imports]
    exports = [_find(export_decls, name) for name in module.exports]
    out = [
        "/* Generated by sandbox/wasm/aot/glue.py: do not edit. */",
        f'#include "{header_name}"',
        "",
    ]
    if "WASM_RT_SIMD_TYPE_DEFINED" in header:
        out += [
            "static inline aot_val aot_v128_bits(v128 v) {",
            "  aot_val r;",
            "  __builtin_memcpy(&r, &v, 16);",
            "  return r;",
            "}",
            "static inline v128 aot_v128_value(aot_val bits) {",
            "  v128 v;",
            "  __builtin_memcpy(&v, &bits, 16);",
            "  return v;",
            "}",
        ]
    import_descs = []
    for index, (decl, imp) in enumerate(zip(imports, func_imports, strict=True)):
        ft = imp.type
        assert isinstance(ft, FuncType)
        what = f"import {imp.module}.{imp.name}"
        _check_types(ft.params + ft.results, what)
        out.append(_types_array(f"import_types_{index}", ft.params + ft.results))
        # The first parameter is wasm2c's pointer to the import module's instance: the
        # runtime passes its own instance record there (see instantiate below).
        ctx_type = decl.params.split(",")[0].strip()
        params = ", ".join(
            [f"{ctx_type} ctx"] + [f"{_C[t][0]} p{i}" for i, t in enumerate(ft.params)]
        )
        args = ", ".join(_to_bits(t, f"p{i}") for i, t in enumerate(ft.params)) or "{0, 0}"
        body = [
            f"  aot_val args[] = {{{args}}};",
            f"  aot_val results[{max(1, len(ft.results))}];",
            f"  aot_call_import((void*)ctx, {index}, args, results);",
        ]
        if len(ft.results) == 1:
            body.append(f"  return {_to_c(ft.results[0], 'results[0]')};")
        elif len(ft.results) > 1:
            body.append(f"  {decl.ret} r;")
            for i, t in enumerate(ft.results):
                body.append(f"  r.{_C[t][1]}{i} = {_to_c(t, f'results[{i}]')};")
            body.append("  return r;")
        out.append(f"{decl.ret} {decl.name}({params}) {{")
        out.extend(body)
        out.append("}")
        import_descs.append(f"  {{{len(ft.params)}, {len(ft.results)}, import_types_{index}}},")
    export_descs = []
    for index, (decl, export) in enumerate(zip(exports, module.exports.values(), strict=True)):
        what = f"export {export.name!r}"
        if export.kind == "func":
            ft = export.type
            assert isinstance(ft, FuncType)
            _check_types(ft.params + ft.results, what)
            types = ft.params + ft.results
            call_args = ", ".join(
                ["(" + instance_type + "*)instance"]
                + [_to_c(t, f"args[{i}]") for i, t in enumerate(ft.params)]
            )
            body = []
            if not ft.results:
                body.append(f"  {decl.name}({call_args});")
            elif len(ft.results) == 1:
                body.append(
                    f"  results[0] = {_to_bits(ft.results[0], f'{decl.name}({call_args})')};"
                )
            else:
                body.append(f"  {decl.ret} r = {decl.name}({call_args});")
                for i, t in enumerate(ft.results):
                    body.append(f"  results[{i}] = {_to_bits(t, f'r.{_C[t][1]}{i}')};")
            kind, nparams, nresults = "AOT_EXPORT_FUNC", len(ft.params), len(ft.results)
        elif export.kind == "global":
            gt = export.type
            assert isinstance(gt, GlobalType)
            _check_types((gt.type,), what)
            types = (gt.type,)
            value = f"*{decl.name}(({instance_type}*)instance)"
            body = [f"  results[0] = {_to_bits(gt.type, value)};"]
            kind, nparams, nresults = "AOT_EXPORT_GLOBAL", 0, 1
        else:
            continue  # memories and tables are not reached by name from the host
        out.append(_types_array(f"export_types_{index}", types))
        out.append(
            f"static void export_{index}(void* instance, const aot_val* args, aot_val* results) {{"
        )
        out.append("  (void)args; (void)results;")
        out.extend(body)
        out.append("}")
        name = export.name.encode()
        export_descs.append(
            f"  {{{_c_string(export.name)}, {len(name)}, {kind}, {nparams}, {nresults}, "
            f"export_types_{index}, export_{index}}},"
        )
    ctx_args = ", ".join(["(" + instance_type + "*)instance"] + ["ctx"] * n_import_modules)
    out += [
        "static void instantiate(void* instance, void* ctx) {",
        "  (void)ctx;",
        f"  {inst['name']}({ctx_args});",
        "}",
        f"static const struct aot_export exports[] = {{\n{chr(10).join(export_descs)}\n  {{0}}}};",
        f"static const struct aot_import imports[] = {{\n{chr(10).join(import_descs)}\n  {{0}}}};",
        "const struct aot_module aot_module = {",
        f"  {_c_string(module_id)},",
        f"  {len(module.data)}u,",
        f"  sizeof({instance_type}),",
        "  instantiate,",
        f"  {len(export_descs)}, exports,",
        f"  {len(import_descs)}, imports,",
        "};",
        "",
    ]
    return "\n".join(out)
