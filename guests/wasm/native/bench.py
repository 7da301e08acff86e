"""Native timing of the engine against wasmtime's JIT on benches/wasm/kernels.c
(developer tool): best of N calls per kernel, both engines in this process."""

from __future__ import annotations

import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import runner  # noqa: E402

KERNELS = [("fib", 30), ("sieve", 1 << 21), ("matmul", 128), ("sha256", 1 << 20)]


def main() -> int:
    lib = sys.argv[1] if len(sys.argv) > 1 else "/tmp/wasm-native/libwasmengine.so"
    src = HERE.parents[2] / "benches" / "wasm" / "kernels.c"
    out = Path(tempfile.mkdtemp()) / "kernels.wasm"
    subprocess.run(
        [
            "clang",
            "--target=wasm32",
            "-O2",
            "-mbulk-memory",
            "-nostdlib",
            "-Wl,--no-entry",
            "-o",
            str(out),
            str(src),
        ],
        check=True,
    )
    data = out.read_bytes()
    eng = runner.Engine(lib)
    st, payload = eng.load(data)
    assert st == "OK", (st, payload)
    st, payload = eng.instantiate(struct.unpack_from("<I", payload)[0])
    assert st == "OK", (st, payload)
    inst = struct.unpack_from("<I", payload)[0]
    import wasmtime

    store = wasmtime.Store()
    wi = wasmtime.Instance(store, wasmtime.Module(store.engine, data), [])
    for name, arg in KERNELS:
        args = bytes([1, 0x7F]) + struct.pack("<Q", arg)
        best = 1e9
        for _ in range(5):
            t = time.perf_counter()
            st, payload = eng.invoke(inst, name, args)
            best = min(best, time.perf_counter() - t)
        ours = runner.decode_values(payload)[0][1]
        fn = wi.exports(store)[name]
        wbest = 1e9
        for _ in range(5):
            t = time.perf_counter()
            ref = fn(store, arg)
            wbest = min(wbest, time.perf_counter() - t)
        mask = (1 << 64) - 1
        same = (ours & mask) == (ref & mask) or (ours & 0xFFFFFFFF) == (ref & 0xFFFFFFFF)
        print(
            f"{name:8s} ours {best * 1e3:8.2f} ms  wasmtime {wbest * 1e3:8.2f} ms  "
            f"ratio {best / wbest:5.2f}x  {'ok' if same else f'MISMATCH {ours} {ref}'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
