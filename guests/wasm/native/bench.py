"""Native timing of the engine against wasmtime's JIT on benches/wasm/kernels.c and
benches/wasm/simd_kernels.c (developer tool): per kernel, `--repeat` rounds of one call
in each engine (alternating, so that both see the same machine), the medians and their
ratio; both engines in this process. Optionally several engine builds side by side
(`LIB ...`: each timed in the same rounds, in its own subprocess), which makes before /
after comparisons on a noisy machine fair.

    python guests/wasm/native/bench.py [LIB ...] [--repeat N] [--only NAME,...]
    python guests/wasm/native/bench.py --profile LIB   # LIB built with -DENG_PROFILE

`--profile` prints the dynamic count of each op and the most frequent op pairs per kernel
(the counts come from the engine's ENG_PROFILE build).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import runner  # noqa: E402

BENCHES = HERE.parents[2] / "benches" / "wasm"
# (module source, extra clang flags, [(export, args)]): the rows of benches/bench_wasm.py.
MODULES = [
    (
        "kernels.c",
        [],
        [("fib", (30,)), ("sieve", (1 << 21,)), ("matmul", (128,)), ("sha256", (1 << 20,))],
    ),
    ("simd_kernels.c", ["-msimd128"], [("dot", (1 << 16, 400)), ("blend", (1 << 18, 10))]),
]


def compile_module(src: str, flags: list[str], out_dir: Path) -> bytes:
    out = out_dir / (Path(src).stem + ".wasm")
    cmd = ["clang", "--target=wasm32", "-O2", "-mbulk-memory", *flags, "-nostdlib"]
    subprocess.run([*cmd, "-Wl,--no-entry", "-o", str(out), str(BENCHES / src)], check=True)
    return out.read_bytes()


def instantiate(eng: runner.Engine, data: bytes) -> int:
    st, payload = eng.load(data)
    assert st == "OK", (st, payload)
    st, payload = eng.instantiate(struct.unpack_from("<I", payload)[0])
    assert st == "OK", (st, payload)
    return int(struct.unpack_from("<I", payload)[0])


def encode_args(args: tuple[int, ...]) -> bytes:
    return bytes([len(args)]) + b"".join(bytes([0x7F]) + struct.pack("<Q", a) for a in args)


def worker(lib: str, wasm_dir: Path) -> int:
    """Serves timing requests for one engine build: reads 'module export' lines on stdin,
    answers each with the call's seconds and result (JSON)."""
    eng = runner.Engine(lib)
    insts = {
        src: instantiate(eng, (wasm_dir / (Path(src).stem + ".wasm")).read_bytes())
        for src, _, _ in MODULES
    }
    args_of = {name: args for _, _, ks in MODULES for name, args in ks}
    for line in sys.stdin:
        src, name = line.split()
        t = time.perf_counter()
        st, payload = eng.invoke(insts[src], name, encode_args(args_of[name]))
        dt = time.perf_counter() - t
        assert st == "OK", (st, payload)
        print(json.dumps([dt, runner.decode_values(payload)[0][1] & 0xFFFFFFFF]), flush=True)
    return 0


def op_names() -> list[str]:
    """The engine's op names in enum order (ops.h: OPS_ALL, SIMD_LIST, its _A and _B
    variants)."""
    text = (HERE.parent / "ops.h").read_text()
    groups: dict[str, list[str]] = {}
    for m in re.finditer(r"#define (OPS_\w+)\(X\)((?:.*\\\n)*.*)", text):
        groups[m.group(1)] = re.findall(r"X\((\w+)\)", m.group(2))
    all_m = re.search(r"#define OPS_ALL\(X\)((?:.*\\\n)*.*)", text)
    assert all_m is not None
    pairs_m = re.search(r"#define SIMD_PAIRS\(P, X\)((?:.*\\\n)*.*)", text)
    assert pairs_m is not None
    pairs = re.findall(r"P\(X, \w+, \w+, (\w+), \w+\)", pairs_m.group(1))
    groups["OPS_SIMDFUSED"] += pairs + [n + "_P" for n in pairs] + [n + "_X" for n in pairs]
    names = [n for g in re.findall(r"(OPS_\w+)\(X\)", all_m.group(1)) for n in groups[g]]
    simd = re.findall(r"Y\(0x[0-9a-f]+, (\w+),", text)
    return names + simd + [n + "_A" for n in simd] + [n + "_B" for n in simd]


def profile(lib: str, wasm_dir: Path, only: set[str] | None) -> int:
    names = op_names()
    n = len(names)
    eng = runner.Engine(lib)
    ops = (ctypes.c_uint64 * n).in_dll(eng.lib, "eng_prof_ops")
    pairs = (ctypes.c_uint64 * (n * n)).in_dll(eng.lib, "eng_prof_pairs")
    for src, _, kernels in MODULES:
        inst = instantiate(eng, (wasm_dir / (Path(src).stem + ".wasm")).read_bytes())
        for name, args in kernels:
            if only and name not in only:
                continue
            eng.invoke(inst, name, encode_args(args))  # the data set up: not counted
            ctypes.memset(ops, 0, ctypes.sizeof(ops))
            ctypes.memset(pairs, 0, ctypes.sizeof(pairs))
            st, payload = eng.invoke(inst, name, encode_args(args))
            assert st == "OK", (st, payload)
            total = sum(ops)
            print(f"== {name}: {total} dispatches")
            for i in sorted(range(n), key=lambda i: -ops[i])[:25]:
                if ops[i] * 200 >= total:
                    print(f"  {ops[i] / total:6.1%} {names[i]}")
            print("  pairs:")
            top = sorted(range(n * n), key=lambda i: -pairs[i])[:20]
            for i in top:
                if pairs[i] * 200 >= total:
                    print(f"  {pairs[i] / total:6.1%} {names[i // n]} -> {names[i % n]}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("libs", nargs="*", default=["/tmp/wasm-native/libwasmengine.so"])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--only", default="", help="comma-separated kernel names")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--wasm-dir", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a.worker, Path(a.wasm_dir))
    only = set(a.only.split(",")) if a.only else None
    wasm_dir = Path(tempfile.mkdtemp())
    datas = {src: compile_module(src, flags, wasm_dir) for src, flags, _ in MODULES}
    if a.profile:
        return profile(a.libs[0], wasm_dir, only)
    import wasmtime

    store = wasmtime.Store()
    wfuncs = {}
    for src, _, kernels in MODULES:
        wi = wasmtime.Instance(store, wasmtime.Module(store.engine, datas[src]), [])
        for name, _ in kernels:
            wfuncs[name] = wi.exports(store)[name]
    workers = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", lib, "--wasm-dir", str(wasm_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for lib in a.libs
    ]

    def ours(w: subprocess.Popen[str], src: str, name: str) -> tuple[float, int]:
        assert w.stdin is not None and w.stdout is not None
        w.stdin.write(f"{src} {name}\n")
        w.stdin.flush()
        dt, res = json.loads(w.stdout.readline())
        return float(dt), int(res)

    for src, _, kernels in MODULES:
        for name, args in kernels:
            if only and name not in only:
                continue
            fn = wfuncs[name]
            ref = fn(store, *args) & 0xFFFFFFFF
            for w in workers:  # warm-up (data set up on the first call)
                ours(w, src, name)
            wt: list[float] = []
            mine: list[list[float]] = [[] for _ in workers]
            ok = True
            for _ in range(a.repeat):
                t = time.perf_counter()
                fn(store, *args)
                wt.append(time.perf_counter() - t)
                for i, w in enumerate(workers):
                    dt, res = ours(w, src, name)
                    mine[i].append(dt)
                    ok = ok and res == ref
            wmed = statistics.median(wt)
            cols = "  ".join(
                f"{statistics.median(m) * 1e3:8.2f} ms {statistics.median(m) / wmed:5.2f}x"
                for m in mine
            )
            print(
                f"{name:7s} wasmtime {wmed * 1e3:7.2f} ms  {cols}  {'ok' if ok else 'MISMATCH'}",
                flush=True,
            )
    for w in workers:
        assert w.stdin is not None
        w.stdin.close()
        w.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
