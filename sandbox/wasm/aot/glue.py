"""The C glue between wasm2c's output for one module and the AOT guest's runtime
(guests/aot/aot.h): the `aot_module` descriptor (the module's real import and export
names and types, as data), an adapter ("thunk") per exported function or global, a
locator per exported table, memory or global, and a definition of each of wasm2c's
import functions (a call of the runtime, which links it).

wasm2c compiles the module with plain names (rename.py); C names come from its header,
where a comment `/* import: 'i' 'k' */` or `/* export: 'ek' */` precedes each
declaration; the types come from the WasmModule (read from the binary), so nothing is
re-derived from C.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

from ..abi import ValType
from ..module import Export, FuncType, GlobalType, Import, WasmModule
from . import rename


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


def _declarations(header: str, marker: str) -> dict[str, _Decl]:
    """wasm2c's declarations of `marker` ("import" or "export"), keyed by the name(s) in
    the comment before each (`/* import: 'i' '3' */` gives "i' '3", `/* export: 'e0' */`
    gives "e0": the plain names of rename.py); a key seen twice is an error (the module
    stays on the interpreter). Function imports and all exports have such a comment."""
    lines = header.splitlines()
    out: dict[str, _Decl] = {}
    start, end = f"/* {marker}: '", "' */"
    for i, line in enumerate(lines):
        if line.startswith(start) and line.endswith(end) and i + 1 < len(lines):
            key = line[len(start) : -len(end)]
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


def _field_imports(header: str) -> dict[str, _Decl]:
    """wasm2c's accessors of the table, memory and global imports, keyed as in
    _declarations: the instance struct has a field per such import, after a comment
    `/* import: 'module' 'name' */`, named as the accessor wasm2c declares `extern`."""
    lines = header.splitlines()
    out: dict[str, _Decl] = {}
    start, end = "  /* import: '", "' */"
    for i, line in enumerate(lines):
        if line.startswith(start) and line.endswith(end) and i + 1 < len(lines):
            key = line[len(start) : -len(end)]
            field_ = re.fullmatch(r"  .*?\*(w2c_\w+);", lines[i + 1])
            if field_ is None or key in out:
                raise GlueError(f"unexpected wasm2c import field: {lines[i + 1]!r}")
            decl = re.search(
                rf"^extern (?P<ret>.*?)\b{field_[1]}\((?P<params>[^)]*)\);$", header, re.M
            )
            if decl is None:
                raise GlueError(f"wasm2c's header has no accessor {field_[1]}")
            out[key] = _Decl(decl["ret"].strip(), field_[1], decl["params"])
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


def _import_key(index: int) -> str:
    return f"{rename.IMPORT_MODULE}' '{rename.import_name(index)}"


_TABLE_ELEM = {
    "wasm_rt_funcref_table_t*": ValType.FUNCREF,
    "wasm_rt_externref_table_t*": ValType.EXTERNREF,
}
_KIND = {"func": 0, "table": 1, "memory": 2, "global": 3, "tag": 4}
_NO_MAX = "UINT64_MAX"


def _import_desc(index: int, imp: Import) -> tuple[str, str]:
    """The type array and the `struct aot_import` initializer of import `index`."""
    np = nr = mutable = 0
    types: tuple[ValType, ...] = ()
    low, high = "0", _NO_MAX
    what = f"import {imp.module}.{imp.name}"
    if isinstance(imp.type, FuncType):
        ft = imp.type
        _check_types(ft.params + ft.results, what)
        types, np, nr = ft.params + ft.results, len(ft.params), len(ft.results)
    elif isinstance(imp.type, GlobalType):
        _check_types((imp.type.type,), what)
        types, nr, mutable = (imp.type.type,), 1, int(imp.type.mutable)
    if imp.elem is not None:
        types = (imp.elem,)
    if imp.limits is not None:
        low = f"{imp.limits.min}u"
        high = _NO_MAX if imp.limits.max is None else f"{imp.limits.max}u"
    name = f"import_types_{index}"
    init = (
        f"  {{{_c_string(imp.module)}, {len(imp.module.encode())}, {_c_string(imp.name)}, "
        f"{len(imp.name.encode())}, {_KIND[imp.kind]}, {np}, {nr}, {mutable}, {name}, "
        f"{low}, {high}}},"
    )
    return _types_array(name, types), init


def _import_function(decl: _Decl, imp: Import, func_index: int) -> list[str]:
    """wasm2c's import function `decl`: a call of aot_call_import (function `func_index`
    among the function imports)."""
    ft = imp.type
    assert isinstance(ft, FuncType)
    # The first parameter is wasm2c's pointer to the import module's instance: the
    # runtime passes its own instance record there (see instantiate below).
    ctx_type = decl.params.split(",")[0].strip()
    params = ", ".join([f"{ctx_type} ctx"] + [f"{_C[t][0]} p{i}" for i, t in enumerate(ft.params)])
    args = ", ".join(_to_bits(t, f"p{i}") for i, t in enumerate(ft.params)) or "{0, 0}"
    body = [
        f"  aot_val args[] = {{{args}}};",
        f"  aot_val results[{max(1, len(ft.results))}];",
        f"  aot_call_import((void*)ctx, {func_index}, args, results);",
    ]
    if len(ft.results) == 1:
        body.append(f"  return {_to_c(ft.results[0], 'results[0]')};")
    elif len(ft.results) > 1:
        body.append(f"  {decl.ret} r;")
        for i, t in enumerate(ft.results):
            body.append(f"  r.{_C[t][1]}{i} = {_to_c(t, f'results[{i}]')};")
        body.append("  return r;")
    return [f"{decl.ret} {decl.name}({params}) {{", *body, "}"]


def _export(
    index: int, decl: _Decl, export: Export, instance_type: str
) -> tuple[list[str], str] | None:
    """The adapters and the `struct aot_export` initializer of an export (None: a tag,
    not reached from outside the module)."""
    what = f"export {export.name!r}"
    out: list[str] = []
    thunk = locate = "NULL"
    np = nr = mutable = 0
    if export.kind == "func":
        ft = export.type
        assert isinstance(ft, FuncType)
        _check_types(ft.params + ft.results, what)
        types = ft.params + ft.results
        np, nr = len(ft.params), len(ft.results)
        call_args = ", ".join(
            ["(" + instance_type + "*)instance"]
            + [_to_c(t, f"args[{i}]") for i, t in enumerate(ft.params)]
        )
        if not ft.results:
            body = [f"  {decl.name}({call_args});"]
        elif len(ft.results) == 1:
            body = [f"  results[0] = {_to_bits(ft.results[0], f'{decl.name}({call_args})')};"]
        else:
            body = [f"  {decl.ret} r = {decl.name}({call_args});"]
            for i, t in enumerate(ft.results):
                body.append(f"  results[{i}] = {_to_bits(t, f'r.{_C[t][1]}{i}')};")
        thunk = f"export_{index}"
    elif export.kind == "global":
        gt = export.type
        assert isinstance(gt, GlobalType)
        _check_types((gt.type,), what)
        types, nr, mutable = (gt.type,), 1, int(gt.mutable)
        value = f"*{decl.name}(({instance_type}*)instance)"
        body = [f"  results[0] = {_to_bits(gt.type, value)};"]
        thunk, locate = f"export_{index}", f"locate_{index}"
    elif export.kind == "memory":
        types, body, locate = (), [], f"locate_{index}"
    elif export.kind == "table":
        elem = _TABLE_ELEM.get(decl.ret.replace(" ", ""))
        if elem is None:
            raise GlueError(f"{what} is a table of a kind the AOT tier does not link")
        types, body, locate = (elem,), [], f"locate_{index}"
    else:
        return None
    out.append(_types_array(f"export_types_{index}", types))
    if thunk != "NULL":
        out += [
            f"static void {thunk}(void* instance, const aot_val* args, aot_val* results) {{",
            "  (void)args; (void)results;",
            *body,
            "}",
        ]
    if locate != "NULL":
        out += [
            f"static void* {locate}(void* instance) {{",
            f"  return (void*){decl.name}(({instance_type}*)instance);",
            "}",
        ]
    init = (
        f"  {{{_c_string(export.name)}, {len(export.name.encode())}, {_KIND[export.kind]}, "
        f"{np}, {nr}, {mutable}, export_types_{index}, {thunk}, {locate}}},"
    )
    return out, init


def generate(module: WasmModule, header: str, header_name: str, module_id: str) -> str:
    """The glue C source for `module`, given wasm2c's header text. Raises GlueError."""
    for imp in module.imports:
        if imp.kind == "tag":
            raise GlueError(
                f"import {imp.module}.{imp.name} is a tag: the AOT tier does not link tags"
            )
    inst = _INSTANTIATE.search(header)
    if inst is None:
        raise GlueError("wasm2c's header has no instantiate declaration")
    instance_type = inst["instance"]
    n_import_modules = inst["params"].count(",")
    # wasm2c compiled the module renamed (rename.py): import k is "i" "k", export k "ek";
    # both are matched by the comment wasm2c writes before each declaration.
    func_decls = _declarations(header, "import")
    field_decls = _field_imports(header)
    export_decls = _declarations(header, "export")
    keys = {_import_key(k): i.kind == "func" for k, i in enumerate(module.imports)}
    if set(func_decls) != {k for k, f in keys.items() if f} or set(field_decls) != {
        k for k, f in keys.items() if not f
    }:
        raise GlueError("wasm2c declared other imports than the module has")
    if len(export_decls) != len(module.exports):
        raise GlueError(
            f"wasm2c declared {len(export_decls)} exports, the module has {len(module.exports)}"
        )
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
    import_descs, func_indices = [], []
    for index, imp in enumerate(module.imports):
        types, init = _import_desc(index, imp)
        out.append(types)
        import_descs.append(init)
        if imp.kind == "func":
            func_indices.append(str(index))
            decl = func_decls[_import_key(index)]
            out += _import_function(decl, imp, len(func_indices) - 1)
        else:
            decl = field_decls[_import_key(index)]
            ctx_type = decl.params.strip()
            out += [
                f"{decl.ret} {decl.name}({ctx_type} ctx) {{",
                f"  return ({decl.ret})aot_import_ptr((void*)ctx, {index});",
                "}",
            ]
    export_descs = []
    for index, export in enumerate(module.exports.values()):
        decl = _find(export_decls, rename.export_name(index))
        made = _export(index, decl, export, instance_type)
        if made is not None:
            out += made[0]
            export_descs.append(made[1])
    memories = [i for i, imp in enumerate(module.imports) if imp.kind == "memory"]
    ctx_args = ", ".join(["(" + instance_type + "*)instance"] + ["ctx"] * n_import_modules)
    out += [
        "static void instantiate(void* instance, void* ctx) {",
        "  (void)ctx;",
        f"  {inst['name']}({ctx_args});",
        "}",
        f"static const struct aot_export exports[] = {{\n{chr(10).join(export_descs)}\n  {{0}}}};",
        f"static const struct aot_import imports[] = {{\n{chr(10).join(import_descs)}\n  {{0}}}};",
        f"static const uint32_t func_imports[] = {{{', '.join(func_indices) or '0'}}};",
        "const struct aot_module aot_module = {",
        f"  {_c_string(module_id)},",
        f"  {len(module.data)}u,",
        f"  0x{zlib.crc32(module.data):08x}u,",
        f"  sizeof({instance_type}),",
        "  instantiate,",
        f"  {len(export_descs)}, exports,",
        f"  {len(import_descs)}, imports,",
        f"  {len(func_indices)}, func_imports,",
        f"  {memories[0] if memories else -1},",
        "};",
        "",
    ]
    return "\n".join(out)
