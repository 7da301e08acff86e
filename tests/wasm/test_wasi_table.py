"""WASI preview1 (sandbox/wasm/wasi/): the table of the 46 functions and their types, the
constants against wasi-libc's header, the signatures against what wasi-libc imports, and the
configuration's validation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError
from support import compile_wasi
from wasi_support import (
    WASI_FUNCTIONS,
    WASI_HEADER,
)

from sandbox.errors import ConfigError
from sandbox.wasm.wasi import (
    I32,
    I64,
    Errno,
    Preopen,
    Rights,
    WasiConfig,
    WasiContext,
)

# -- the table of functions --------------------------------------------------------------


def test_every_preview1_function_is_present_with_wasm_types() -> None:
    with WasiContext(WasiConfig()) as ctx:
        assert sorted(ctx.functions) == sorted(WASI_FUNCTIONS)
        assert len(ctx.functions) == 46
        for name, fn in ctx.functions.items():
            assert set(fn.params) <= {I32, I64}, name
            assert fn.results == (() if name == "proc_exit" else (I32,)), name
            assert fn[2] is fn.call
    assert (I32, I64) == (0x7F, 0x7E)


def test_constants_match_wasi_libc_header() -> None:
    if not WASI_HEADER.exists():
        pytest.skip(f"{WASI_HEADER} is not installed")
    text = WASI_HEADER.read_text()
    errnos = dict(re.findall(r"#define __WASI_ERRNO_(\w+) \(UINT16_C\((\d+)\)\)", text))
    assert len(errnos) == 77
    for name, value in errnos.items():
        assert Errno["TOOBIG" if name == "2BIG" else name] == int(value)
    rights = dict(
        re.findall(r"#define __WASI_RIGHTS_(\w+) \(\(__wasi_rights_t\)\(1 << (\d+)\)\)", text)
    )
    assert len(rights) == 30
    for name, shift in rights.items():
        assert Rights[name] == 1 << int(shift)


def test_signatures_match_what_wasi_libc_imports(tmp_path: Path) -> None:
    wasmtime = pytest.importorskip("wasmtime")
    # This wasi-libc dropped proc_raise from its header; every other function is taken
    # with the signature wasi-libc itself declares.
    declared = [n for n in WASI_FUNCTIONS if f"__wasi_{n}(" in WASI_HEADER.read_text()]
    if len(declared) < 40:
        pytest.skip("the installed wasi/api.h lacks the preview1 functions")
    table = ", ".join(f"(void *)&__wasi_{n}" for n in declared)
    source = (
        "#include <wasi/api.h>\n"
        f"void *volatile table[] = {{{table}}};\n"
        "int main(int argc, char **argv) { return (int)(long)table[argc]; }\n"
    )
    module = wasmtime.Module.from_file(wasmtime.Engine(), str(compile_wasi(tmp_path, source)))
    codes = {"i32": I32, "i64": I64}
    imported = {}
    for imp in module.imports:
        if imp.module == "wasi_snapshot_preview1":
            imported[imp.name] = (
                tuple(codes[str(t)] for t in imp.type.params),
                tuple(codes[str(t)] for t in imp.type.results),
            )
    assert sorted(imported) == sorted(declared)
    with WasiContext(WasiConfig()) as ctx:
        for name, (params, results) in imported.items():
            assert (ctx.functions[name].params, ctx.functions[name].results) == (params, results), (
                name
            )


# -- configuration -------------------------------------------------------------------------


def test_config_validation(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="NUL"):
        WasiConfig(args=["a\0b"])
    with pytest.raises(ValidationError, match="UTF-8"):
        WasiConfig(args=["\udcff"])
    with pytest.raises(ValidationError, match="variable name"):
        WasiConfig(env={"A=B": "x"})
    with pytest.raises(ValidationError, match="stdout"):
        WasiConfig(stdout="file")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="stdin"):
        WasiConfig(stdin="text")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="used twice"):
        WasiConfig(
            preopens=[
                Preopen(host_path=tmp_path, guest_path="/"),
                Preopen(host_path=tmp_path, guest_path="/"),
            ]
        )
    with pytest.raises(ValidationError, match="extra"):
        WasiConfig(argv=["x"])  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="guest_path"):
        Preopen(host_path=tmp_path, guest_path="")
    with pytest.raises(ValidationError):
        WasiConfig(capture_limit=-1)
    with pytest.raises(ConfigError, match="cannot open host directory"):
        WasiContext(WasiConfig(preopens=[Preopen(host_path=tmp_path / "nope", guest_path="/")]))
    with pytest.raises(TypeError):
        WasiContext({})  # type: ignore[arg-type]
    assert WasiConfig(stdin="inherit").stdin == "inherit"
    assert Preopen(host_path=tmp_path, guest_path="/").read_only is True
