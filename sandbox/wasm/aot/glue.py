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


_DECL = re.compile(r"^(?P<ret>.*?)\b(?P<name>Z_\w+)\((?P<params>.*)\);$")
_INIT = re.compile(r"^void (?P<prefix>Z_\w+)_init_module\(void\);$", re.M)
_INSTANTIATE = re.compile(r"^void (?P<name>Z_\w+_instantiate)\((?P<params>[^)]*)\);$", re.M)

# Value type -> (C type, letter in wasm2c's multi-value struct fields).
_C = {
    ValType.I32: ("u32", "i"),
    ValType.I64: ("u64", "j"),
    ValType.F32: ("f32", "f"),
    ValType.F64: ("f64", "d"),
    ValType.FUNCREF: ("wasm_rt_funcref_t", "r"),
    ValType.EXTERNREF: ("wasm_rt_externref_t", "e"),
}


@dataclass(frozen=True)
class _Decl:
    ret: str
    name: str
    params: str


def _declarations(header: str, marker: str) -> dict[str, _Decl]:
    """wasm2c's declarations of `marker` ("import" or "export"), by the comment before
    each (`/* import: 'module' 'name' */`); a comment seen twice is an error."""
    lines = header.splitlines()
    out: dict[str, _Decl] = {}
    for i, line in enumerate(lines):
        if line.startswith(f"/* {marker}: ") and i + 1 < len(lines):
            m = _DECL.match(lines[i + 1].strip())
            if m is None or line in out:
                raise GlueError(f"unexpected wasm2c declaration: {lines[i + 1]!r}")
            out[line] = _Decl(m["ret"].strip(), m["name"], m["params"])
    return out


def _find(decls: dict[str, _Decl], comment: str) -> _Decl:
    decl = decls.get(comment)
    if decl is None:
        raise GlueError(f"wasm2c's header has no declaration under {comment!r}")
    return decl


def _to_c(t: ValType, expr: str) -> str:
    """C value of type t from raw bits `expr` (a u64)."""
    if t == ValType.I32:
        return f"(u32){expr}"
    if t == ValType.I64:
        return f"(u64){expr}"
    if t == ValType.F32:
        return f"aot_f32_value({expr})"
    if t == ValType.F64:
        return f"aot_f64_value({expr})"
    if t == ValType.FUNCREF:
        return f"aot_funcref_value({expr})"
    return f"aot_externref_value({expr})"


def _to_bits(t: ValType, expr: str) -> str:
    """Raw bits (u64) of the C value `expr` of type t."""
    if t in (ValType.I32, ValType.I64):
        return f"(uint64_t){expr}"
    if t == ValType.F32:
        return f"aot_f32_bits({expr})"
    if t == ValType.F64:
        return f"aot_f64_bits({expr})"
    if t == ValType.FUNCREF:
        return f"aot_funcref_bits({expr})"
    return f"aot_externref_bits({expr})"


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
    init = _INIT.search(header)
    inst = _INSTANTIATE.search(header)
    if init is None or inst is None:
        raise GlueError("wasm2c's header has no init_module/instantiate declarations")
    prefix = init["prefix"]
    instance_type = f"{prefix}_instance_t"
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
    imports = [_find(import_decls, f"/* import: '{i.module}' '{i.name}' */") for i in func_imports]
    exports = [_find(export_decls, f"/* export: '{name}' */") for name in module.exports]
    out = [
        "/* Generated by sandbox/wasm/aot/glue.py: do not edit. */",
        f'#include "{header_name}"',
        "",
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
        args = ", ".join(_to_bits(t, f"p{i}") for i, t in enumerate(ft.params)) or "0"
        body = [
            f"  uint64_t args[] = {{{args}}};",
            f"  uint64_t results[{max(1, len(ft.results))}];",
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
            f"static void export_{index}(void* instance, const uint64_t* args, "
            "uint64_t* results) {"
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
        f"  {prefix}_init_module,",
        "  instantiate,",
        f"  {len(export_descs)}, exports,",
        f"  {len(import_descs)}, imports,",
        "};",
        "",
    ]
    return "\n".join(out)
