"""Native spec-test driver for the Wasm engine (developer tool, not part of the package).

Builds guests/wasm natively (native/build.sh), converts .wast files with wast2json into a
temporary directory and runs their commands against the engine through ctypes. Each
.wast file runs in its own process (the engine's memory windows are per process).

    python guests/wasm/native/runner.py /work/shared/wasm-spec-testsuite/i32.wast ...
    python guests/wasm/native/runner.py --all /work/shared/wasm-spec-testsuite
"""

from __future__ import annotations

import argparse
import ctypes
import json
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The value reading and comparison the in-VM runner uses too (tests/wasm/spec_common.py).
sys.path.insert(0, str(HERE.parents[2] / "tests" / "wasm"))
from spec_common import V128, convert, matches, value_bits  # noqa: E402

STATUS = {
    0: "OK",
    1: "TRAP",
    2: "MALFORMED",
    3: "INVALID",
    4: "UNLINKABLE",
    5: "BAD_CALL",
    6: "LIMIT",
}


class Engine:
    def __init__(self, lib_path: str) -> None:
        lib = ctypes.CDLL(lib_path)
        self.lib = lib
        sz = ctypes.POINTER(ctypes.c_size_t)
        rp = ctypes.POINTER(ctypes.c_uint8)
        lib.native_load.argtypes = [ctypes.c_char_p, ctypes.c_size_t, sz]
        lib.native_load.restype = rp
        lib.native_instantiate.argtypes = [ctypes.c_uint32, sz]
        lib.native_instantiate.restype = rp
        lib.native_register.argtypes = [ctypes.c_uint32, ctypes.c_char_p, sz]
        lib.native_register.restype = rp
        lib.native_invoke.argtypes = [
            ctypes.c_uint32,
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_char_p,
            ctypes.c_size_t,
            sz,
        ]
        lib.native_invoke.restype = rp
        lib.native_get.argtypes = [ctypes.c_uint32, ctypes.c_char_p, ctypes.c_size_t, sz]
        lib.native_get.restype = rp
        cb_type = ctypes.CFUNCTYPE(
            ctypes.c_void_p,
            ctypes.c_uint32,
            ctypes.c_uint32,
            ctypes.POINTER(ctypes.c_uint8),
            ctypes.c_size_t,
            sz,
        )
        self._keep = []

        def on_import(inst, idx, args, n, out_len):
            # Spec tests only import host functions that return nothing.
            buf = ctypes.create_string_buffer(b"\x00", 1)
            self._keep.append(buf)
            out_len[0] = 1
            return ctypes.addressof(buf)

        self._cb = cb_type(on_import)
        lib.native_set_import.argtypes = [cb_type]
        lib.native_set_import(self._cb)
        lib.native_init()

    @staticmethod
    def _reply(ptr, n) -> tuple[str, bytes]:
        data = ctypes.string_at(ptr, n.value)
        return STATUS.get(data[0], "?"), data[1:]

    def load(self, data: bytes):
        n = ctypes.c_size_t()
        return self._reply(self.lib.native_load(data, len(data), ctypes.byref(n)), n)

    def instantiate(self, m: int):
        n = ctypes.c_size_t()
        return self._reply(self.lib.native_instantiate(m, ctypes.byref(n)), n)

    def register(self, inst: int, name: str):
        n = ctypes.c_size_t()
        return self._reply(self.lib.native_register(inst, name.encode(), ctypes.byref(n)), n)

    def invoke(self, inst: int, name: str, args: bytes):
        n = ctypes.c_size_t()
        b = name.encode()
        return self._reply(
            self.lib.native_invoke(inst, b, len(b), args, len(args), ctypes.byref(n)), n
        )

    def get(self, inst: int, name: str):
        n = ctypes.c_size_t()
        b = name.encode()
        return self._reply(self.lib.native_get(inst, b, len(b), ctypes.byref(n)), n)


def encode_values(vals) -> bytes:
    out = bytearray([len(vals)])
    for v in vals:
        t, bits = value_bits(v)
        out.append(t)
        out += bits.to_bytes(16 if t == V128 else 8, "little")
    return bytes(out)


def decode_values(payload: bytes):
    n = payload[0]
    vals = []
    at = 1
    for _ in range(n):
        t = payload[at]
        size = 16 if t == V128 else 8
        vals.append((t, int.from_bytes(payload[at + 1 : at + 1 + size], "little")))
        at += 1 + size
    return vals


def run_json(engine: Engine, path: Path, verbose: bool) -> tuple[int, int, list[str]]:
    spec = json.loads(path.read_text())
    base = path.parent
    passed = total = 0
    fails: list[str] = []
    current = None
    named: dict[str, int] = {}

    def fail(cmd, why):
        fails.append(f"{path.stem}:{cmd.get('line')}: {cmd['type']}: {why}")

    def module_instance(cmd):
        data = (base / cmd["filename"]).read_bytes()
        st, payload = engine.load(data)
        if st != "OK":
            return st, payload
        handle = struct.unpack_from("<I", payload)[0]
        return engine.instantiate(handle)

    def do_action(act):
        inst = named[act["module"]] if act.get("module") else current
        if inst is None:
            return "NOINST", b""
        if act["type"] == "invoke":
            return engine.invoke(inst, act["field"], encode_values(act.get("args", [])))
        return engine.get(inst, act["field"])

    for cmd in spec["commands"]:
        ty = cmd["type"]
        if ty == "module":
            st, payload = module_instance(cmd)
            total += 1
            if st == "OK":
                passed += 1
                current = struct.unpack_from("<I", payload)[0]
                if cmd.get("name"):
                    named[cmd["name"]] = current
            else:
                current = None
                fail(cmd, f"module failed: {st} {payload[1:]!r}")
        elif ty == "register":
            inst = named[cmd["name"]] if cmd.get("name") else current
            if inst is not None:
                engine.register(inst, cmd["as"])
        elif ty == "action":
            do_action(cmd["action"])
        elif ty == "assert_return":
            total += 1
            st, payload = do_action(cmd["action"])
            if st != "OK":
                fail(cmd, f"{st} {payload!r}")
                continue
            got = decode_values(payload)
            exp = cmd["expected"]
            if len(got) == len(exp) and all(matches(e, g) for e, g in zip(exp, got, strict=True)):
                passed += 1
            else:
                fail(cmd, f"got {got} expected {exp}")
        elif ty in ("assert_trap", "assert_exhaustion"):
            total += 1
            if "action" in cmd:
                st, payload = do_action(cmd["action"])
            else:
                st, payload = module_instance(cmd)
            if st == "TRAP":
                msg = payload[1:].decode(errors="replace")
                if cmd["text"] in msg or msg in cmd["text"]:
                    passed += 1
                else:
                    fail(cmd, f"trap {msg!r}, expected {cmd['text']!r}")
            else:
                fail(cmd, f"{st} {payload!r}, expected trap {cmd['text']!r}")
        elif ty == "assert_uninstantiable":
            total += 1
            st, payload = module_instance(cmd)
            if st == "TRAP":
                passed += 1
            else:
                fail(cmd, f"{st} {payload!r}, expected uninstantiable")
        elif ty == "assert_unlinkable":
            total += 1
            st, payload = module_instance(cmd)
            if st == "UNLINKABLE":
                passed += 1
            else:
                fail(cmd, f"{st} {payload!r}, expected unlinkable")
        elif ty in ("assert_invalid", "assert_malformed") and cmd.get("module_type") == "binary":
            # The host validates with wasmtime; here only: the decoder must not crash.
            engine.load((base / cmd["filename"]).read_bytes())
    return passed, total, fails


def convert_to(wast: Path, tmp: Path) -> Path:
    """The wast2json output of `wast`, in its own directory under `tmp`."""
    out = tmp / wast.stem
    out.mkdir(parents=True, exist_ok=True)
    convert(wast, out)
    return out / (wast.stem + ".json")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="*", type=Path)
    ap.add_argument("--all", type=Path, help="run every non-SIMD .wast file in this directory")
    ap.add_argument(
        "--simd", type=Path, help="run every SIMD (simd_*) .wast file in this directory"
    )
    ap.add_argument("--lib", default=None)
    ap.add_argument("--one", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--fails", type=int, default=5, help="failures to print per file")
    args = ap.parse_args()
    lib = args.lib
    if args.one:
        engine = Engine(lib)
        p, t, fails = run_json(engine, args.one, args.verbose)
        print(json.dumps({"passed": p, "total": t, "fails": fails}))
        return 0
    if lib is None:
        lib = (
            subprocess.run([str(HERE / "build.sh")], check=True, capture_output=True, text=True)
            .stdout.strip()
            .splitlines()[-1]
        )
    files = list(args.files)
    if args.all:
        files += sorted(f for f in args.all.glob("*.wast") if not f.name.startswith("simd"))
    if args.simd:
        files += sorted(args.simd.glob("simd*.wast"))
    tmp = Path(tempfile.mkdtemp(prefix="wasm-spec-"))
    grand_p = grand_t = 0
    rows = []
    for wast in files:
        js = convert_to(wast, tmp)
        proc = subprocess.run(
            [sys.executable, __file__, "--lib", lib, "--one", str(js)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        try:
            res = json.loads(proc.stdout.strip().splitlines()[-1])
        except Exception:
            rows.append((wast.stem, 0, -1))
            print(f"{wast.stem:28s} CRASH rc={proc.returncode} {proc.stderr[-500:]}")
            continue
        p, t = res["passed"], res["total"]
        grand_p += p
        grand_t += t
        rows.append((wast.stem, p, t))
        pct = 100.0 * p / t if t else 100.0
        print(f"{wast.stem:28s} {p:5d}/{t:<5d} {pct:6.2f}%")
        for f in res["fails"][: args.fails]:
            print("    " + f[:300])
    print(f"{'TOTAL':28s} {grand_p:5d}/{grand_t:<5d} {100.0 * grand_p / max(grand_t, 1):6.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
