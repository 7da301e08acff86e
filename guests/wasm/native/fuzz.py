"""Mutation fuzzing of the engine's decoder/compiler (developer tool): random byte flips,
truncations and insertions of the spec suite's binary modules and of the exception-handling
modules of tests/wasm/programs/eh/ (converted with wasmtime.wat2wasm), loaded natively
(build with sanitizers: see runner.py). The decoder must reply, never crash or hang."""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import runner  # noqa: E402


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data[8:])
    for _ in range(rng.randint(1, 8)):
        op = rng.random()
        if op < 0.5 and b:
            i = rng.randrange(len(b))
            b[i] = rng.choice(
                [0, 0x7F, 0x80, 0xFF, rng.randrange(256), b[i] ^ (1 << rng.randrange(8))]
            )
        elif op < 0.7 and b:
            del b[rng.randrange(len(b)) :]
        elif op < 0.85:
            i = rng.randrange(len(b) + 1)
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 6)))
        elif b:
            i = rng.randrange(len(b))
            del b[i : i + rng.randint(1, 6)]
    return data[:8] + bytes(b)


EH_PROGRAMS = Path(__file__).resolve().parents[3] / "tests" / "wasm" / "programs" / "eh"


def eh_corpus() -> list[bytes]:
    """The exception-handling seed modules (the spec suite is Wasm 2.0: it has none)."""
    import wasmtime

    return [bytes(wasmtime.wat2wasm(f.read_text())) for f in sorted(EH_PROGRAMS.glob("*.wat"))]


def main() -> int:
    lib, spec_dir, seconds = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
    seed = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    files = sorted(spec_dir.glob("*/*.wasm"))
    corpus = [f.read_bytes() for f in files if f.stat().st_size < 20000]
    corpus += eh_corpus() * max(1, len(corpus) // 20)  # about 1 mutant in 20
    eng = runner.Engine(lib)
    rng = random.Random(seed)
    n = 0
    stats: dict[str, int] = {}
    end = time.time() + seconds
    while time.time() < end:
        data = mutate(rng, rng.choice(corpus))
        st, _ = eng.load(data)
        stats[st] = stats.get(st, 0) + 1
        n += 1
    print(n, stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
