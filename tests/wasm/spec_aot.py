"""The spec suite in the AOT tier (sandbox.wasm.aot): the modules of a .wast file are
compiled into one guest (aot.compile_modules; cached on disk, so a second run compiles
nothing), and the file runs in an engine made of it exactly as spec_runner.py runs it in
the interpreter engine: the same commands (`register` and imports between instances
included), the same comparisons and trap messages.

    python tests/wasm/spec_aot.py FILE.wast ...
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import spec_runner
from spec_common import ROOT, spec_files
from spec_runner import FileResult


def run_file(wast: Path, work: Path) -> FileResult:
    """`wast` in the AOT tier: its modules compiled into one guest, run as
    spec_runner.run_file runs them in the interpreter engine."""
    return spec_runner.run_file(wast, work, tier="aot")


def main(argv: list[str]) -> int:
    files = [Path(a) for a in argv] or spec_files()
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        for wast in files:
            r = run_file(wast, Path(tmp))
            print(
                f"{r.name:28} {r.passed:5} passed {r.failed:4} failed {r.seconds:6.1f} s {r.error}"
            )
            for f in r.failures[:5]:
                print("   ", f)
            bad += r.failed + bool(r.error)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main(sys.argv[1:]))
