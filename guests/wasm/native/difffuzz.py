"""Differential execution fuzzing against wasmtime (developer tool): mutated spec-suite
modules and exception-handling modules (tests/wasm/programs/eh/) that wasmtime validates
(Wasm 2.0 features, fixed-width SIMD and exception handling included, no imports)
are instantiated in both engines and every exported function is called with zero
arguments, in order; results and traps must agree. wasmtime runs with fuel, the engine
under a native time limit. Exports with v128 parameters or results are skipped (the
wasmtime Python API aborts the process on them); SIMD inside the functions runs.

    python guests/wasm/native/difffuzz.py LIB SPECJSONDIR SECONDS [SEED]
"""

from __future__ import annotations

import ctypes
import math
import random
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fuzz  # noqa: E402
import runner  # noqa: E402
import wasmtime  # noqa: E402

from sandbox.wasm.module import FuncType  # noqa: E402
from sandbox.wasm.module import load as read_module  # noqa: E402

CODES = {"i32": 0x7F, "i64": 0x7E, "f32": 0x7D, "f64": 0x7C, "funcref": 0x70, "externref": 0x6F}
NAMES = {code: name for name, code in CODES.items()}
NULL = 0xFFFF_FFFF_FFFF_FFFF  # the ABI's null reference (WASM_NULL_REF)


def engine() -> wasmtime.Engine:
    cfg = wasmtime.Config()
    cfg.consume_fuel = True
    for f in (
        "wasm_relaxed_simd",
        "wasm_threads",
        "wasm_multi_memory",
        "wasm_memory64",
        "wasm_tail_call",
        "wasm_gc",
        "wasm_function_references",
    ):
        try:
            setattr(cfg, f, False)
        except Exception:
            pass
    cfg.wasm_exceptions = True
    return wasmtime.Engine(cfg)


def norm(t: int, v) -> tuple:
    """A comparable form of a result: NaNs compare equal to each other."""
    if t == 0x7D:
        bits = struct.unpack("<I", struct.pack("<f", v))[0] if isinstance(v, float) else v
        f = struct.unpack("<f", struct.pack("<I", bits & 0xFFFFFFFF))[0]
        return ("nan",) if math.isnan(f) else ("f32", bits & 0xFFFFFFFF)
    if t == 0x7C:
        bits = struct.unpack("<Q", struct.pack("<d", v))[0] if isinstance(v, float) else v
        f = struct.unpack("<d", struct.pack("<Q", bits))[0]
        return ("nan",) if math.isnan(f) else ("f64", bits)
    if t == 0x7F:
        return ("i32", v & 0xFFFFFFFF)
    if t == 0x7E:
        return ("i64", v & 0xFFFFFFFFFFFFFFFF)
    return ("ref", v is None or v == NULL)


def main() -> int:
    lib, spec_dir, seconds = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
    rng = random.Random(int(sys.argv[4]) if len(sys.argv) > 4 else 1)
    eng = runner.Engine(lib)
    eng.lib.native_set_timeout_us(ctypes.c_long(200000))
    timed_out = ctypes.c_int.in_dll(eng.lib, "native_timed_out")
    wt = engine()
    corpus = []
    seeds = [f.read_bytes() for f in sorted(spec_dir.glob("*/*.wasm"))]
    for data in seeds + fuzz.eh_corpus() * max(1, len(seeds) // 20):
        try:
            m = wasmtime.Module(wt, data)
        except Exception:
            continue
        if not m.imports and any(isinstance(e.type, wasmtime.FuncType) for e in m.exports):
            corpus.append(data)
    stats = {"modules": 0, "calls": 0, "mismatch": 0, "skipped": 0}
    end = time.time() + seconds
    while time.time() < end:
        data = fuzz.mutate(rng, rng.choice(corpus)) if rng.random() < 0.9 else rng.choice(corpus)
        try:
            m = wasmtime.Module(wt, data)
        except Exception:
            continue
        if m.imports:
            continue
        store = wasmtime.Store(wt)
        store.set_fuel(2_000_000)
        st, payload = eng.load(data)
        if st != "OK":
            print("LOAD MISMATCH", st, payload[:80])
            stats["mismatch"] += 1
            continue
        handle = struct.unpack_from("<I", payload)[0]
        try:
            winst = wasmtime.Instance(store, m, [])
            wstatus = "OK"
        except wasmtime.Trap:
            wstatus = "TRAP"
        except Exception:
            stats["skipped"] += 1  # fuel exhausted in the start function, ...
            continue
        st, payload = eng.instantiate(handle)
        if st == "LIMIT":
            break  # memory windows used up: this process is done
        if timed_out.value:
            stats["skipped"] += 1
            continue
        if st != wstatus:
            print("INSTANTIATE MISMATCH", st, wstatus, payload[:80])
            stats["mismatch"] += 1
            continue
        if st != "OK":
            continue
        stats["modules"] += 1
        inst = struct.unpack_from("<I", payload)[0]
        exports = winst.exports(store)
        for name, export in read_module(data).exports.items():
            # Signatures from our own reader: wasmtime's Python API aborts on a v128 type.
            if export.kind != "func" or not isinstance(export.type, FuncType):
                continue  # a tag's type is a FuncType too
            sig = export.type
            params = [NAMES[int(t)] for t in sig.params if int(t) in NAMES]
            results = [int(t) for t in sig.results]
            if len(params) != len(sig.params) or any(t not in NAMES for t in results):
                continue
            args = bytes([len(params)])
            for p in params:
                args += bytes([CODES[p]]) + struct.pack("<Q", NULL if p.endswith("ref") else 0)
            wargs = [None if p.endswith("ref") else (0.0 if p[0] == "f" else 0) for p in params]
            try:
                wres = exports[name](store, *wargs)
                nres = len(results)
                wres = [wres] if nres == 1 else ([] if nres == 0 else list(wres))
                wout = ("OK", [norm(t, v) for t, v in zip(results, wres, strict=True)])
            except wasmtime.Trap as exc:
                msg = str(exc)
                if "fuel" in msg or "stack" in msg:
                    break  # states diverge from here (or exhaustion sizes differ)
                wout = ("TRAP", None)
            except Exception:
                break
            st, payload = eng.invoke(inst, name, args)
            if timed_out.value:
                break
            stats["calls"] += 1
            if st == "OK":
                ours = ("OK", [norm(t, v) for t, v in runner.decode_values(payload)])
            else:
                ours = (st, None)
            if ours != wout:
                stats["mismatch"] += 1
                print("CALL MISMATCH", name, ours, wout, payload[:60])
                Path(f"/tmp/difffuzz-{stats['mismatch']}.wasm").write_bytes(data)
                break
    print(stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
