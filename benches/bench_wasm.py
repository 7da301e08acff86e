"""Wasm compute: a Wasm module run by our engine guest inside the micro-VM, against the
same module run by wasmtime's JIT on the host (the reference, DESIGN.md section 6).

The Wasm engine guest does not exist yet (issue 4): the row is reported as skipped with
that reason. Replace the skip with the measurement when the engine lands.
"""

from __future__ import annotations

THEME = "compute"


def test_wasm_engine_vs_wasmtime(bench_nofloor):
    bench_nofloor.skip(
        "Wasm engine guest vs wasmtime JIT (same module)",
        "not implemented yet (issue 4: the Wasm engine guest)",
        baseline_what="wasmtime JIT on the host",
        kind="peer",
    )
