"""Output floods: a guest that prints without end must cost the host bounded memory and
time linear in what it printed. `SandboxConfig.output_limit` (bytes, default 1 MiB) caps
what is kept: past it `last_output` holds the first output_limit bytes at most (cut on a
character boundary), `last_output_truncated` is True, the `output=` callback has received
at most output_limit bytes for the call, and the call still returns its result.

Issue 11: `last_output += text` made output cost quadratic time (8 MB: 4.4 s; 100 MB did
not finish in 20 s) and kept everything printed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError
from support import ROOT

from sandbox import Sandbox, SandboxConfig

pytestmark = pytest.mark.requires_kvm

KiB = 1024
MiB = 1024 * KiB


def test_default_output_limit_is_one_mib() -> None:
    assert SandboxConfig().output_limit == MiB


@pytest.mark.parametrize("bad", [-1, "lots", 1.5])
def test_output_limit_is_validated(bad: object) -> None:
    assert SandboxConfig(output_limit=4096).output_limit == 4096
    with pytest.raises(ValidationError):
        SandboxConfig(output_limit=bad)


class Collector:
    def __init__(self) -> None:
        self.chunks: list[str] = []

    def __call__(self, text: str) -> None:
        self.chunks.append(text)

    @property
    def size(self) -> int:
        return sum(len(c.encode()) for c in self.chunks)

    @property
    def text(self) -> str:
        return "".join(self.chunks)


def test_output_under_the_limit_is_kept_whole(flood_guest: Path) -> None:
    got = Collector()
    config = SandboxConfig(output_limit=64 * KiB)
    with Sandbox(flood_guest, config=config, output=got) as sb:
        assert sb.call("flood", 60_000, "x") == 60_000
        assert sb.last_output == "x" * 60_000
        assert sb.last_output_truncated is False
        assert got.text == "x" * 60_000


@pytest.mark.parametrize("unit", ["x", "é", "😀"])
@pytest.mark.parametrize("limit", [64 * KiB, 64 * KiB + 1, 64 * KiB + 3])
def test_output_past_the_limit_is_cut_and_marked(flood_guest: Path, unit: str, limit: int) -> None:
    got = Collector()
    config = SandboxConfig(output_limit=limit)
    with Sandbox(flood_guest, config=config, output=got) as sb:
        assert sb.call("flood", MiB, unit) == MiB  # the call still returns its result
        kept = sb.last_output.encode()
        assert len(kept) <= limit
        assert len(kept) > limit - len(unit.encode())  # cut at the limit, not before
        assert sb.last_output == unit * len(sb.last_output)  # whole characters only
        assert sb.last_output_truncated is True
        assert got.size <= limit
        assert got.text == sb.last_output[: len(got.text)]
        # The next call starts a new count.
        got.chunks.clear()
        assert sb.call("flood", 100, unit) == 100 // len(unit.encode()) * len(unit.encode())
        assert sb.last_output_truncated is False
        assert sb.last_output == unit * (100 // len(unit.encode()))
        assert got.text == sb.last_output


def test_limit_counts_output_flushed_with_host_calls(probe_guest: Path) -> None:
    """Text flushed with a host call counts too (ask_host prints, then calls the host)."""
    got = Collector()
    config = SandboxConfig(output_limit=10)
    functions = {"add_one": lambda n: n + 1}
    with Sandbox(probe_guest, config=config, output=got, host_functions=functions) as sb:
        assert sb.call("ask_host", 41) == 42
        assert sb.last_output == "asking the"
        assert sb.last_output_truncated is True
        assert got.text == "asking the"


def test_multibyte_text_survives_flush_boundaries(flood_guest: Path) -> None:
    """The guest flushes its print buffer every 4 KiB, which cuts 3-byte characters in
    two; the host must join them again, not replace each half with U+FFFD."""
    with Sandbox(flood_guest) as sb:
        n = sb.call("flood", 100_000, "€")
        assert n == 99_999
        assert sb.last_output.count("\ufffd") == 0
        assert sb.last_output == "€" * 33_333


FLOOD_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from sandbox import Sandbox

    def hwm_kib():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])

    def reset_hwm():
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    got = [0]
    with Sandbox(sys.argv[1], output=lambda t: got.__setitem__(0, got[0] + len(t))) as sb:
        sb.call("flood", 1 << 20, "x")  # warm up
        for mb in [8, 8, 32, 32, 100]:
            got[0] = 0
            reset_hwm()
            before = hwm_kib()
            start = time.monotonic()
            result = sb.call("flood", mb * 10**6, "x")
            seconds = time.monotonic() - start
            print(json.dumps({
                "mb": mb, "seconds": seconds, "result": result,
                "hwm_growth_kib": hwm_kib() - before,
                "kept": len(sb.last_output), "callback": got[0],
                "truncated": getattr(sb, "last_output_truncated", None),
            }), flush=True)
    """
)


def run_floods(guest: Path, timeout: float) -> tuple[list[dict[str, float]], bool]:
    """The script's results, and whether it finished within `timeout`."""
    proc = subprocess.Popen(
        [sys.executable, "-c", FLOOD_SCRIPT, str(guest)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    try:
        out, err = proc.communicate(timeout=timeout)
        finished = True
        assert proc.returncode == 0, err
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        finished = False
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")], finished


def test_floods_cost_linear_time_and_bounded_memory(flood_guest: Path) -> None:
    """8 MB, 32 MB and 100 MB floods with the default limit, in a fresh process."""
    runs, finished = run_floods(flood_guest, timeout=60)
    assert finished, f"the floods did not finish within 60 s; done: {runs}"
    by_size: dict[int, list[dict[str, float]]] = {}
    for run in runs:
        by_size.setdefault(int(run["mb"]), []).append(run)
        assert run["result"] == run["mb"] * 10**6
        assert run["kept"] <= MiB
        assert run["callback"] <= MiB
        assert run["truncated"] is True
        # The host keeps at most the limit (plus a copy or two), not the flood.
        assert run["hwm_growth_kib"] < 8 * KiB, run
    t8 = min(r["seconds"] for r in by_size[8])
    t32 = min(r["seconds"] for r in by_size[32])
    # Linear: 4x the output costs about 4x the time (quadratic would be 16x).
    assert t32 < 8 * t8 + 0.5, (t8, t32)
    assert by_size[100][0]["seconds"] < 30
