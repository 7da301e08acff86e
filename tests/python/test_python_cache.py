"""The Python interpreter's disk cache (sandbox/python/tcache.py): a process starts the
interpreter once and saves it; the next process's first Sandbox("python") reads the file
instead of starting CPython again, and what it runs is the same. A file that is corrupt,
renamed or inconsistent is logged, ignored and replaced; sandboxes with preopened
directories and KVM_SANDBOX_PYTHON_CACHE=0 write nothing. Each case runs fresh
processes (the interpreter is also cached per process) against a cache directory of
its own."""

from __future__ import annotations

from pathlib import Path

import pytest
from python_support import run_script

from sandbox.python import tcache
from sandbox.snapshot import Snapshot
from sandbox.wasm import savedstate

pytestmark = pytest.mark.requires_kvm

PRELUDE = """
import logging, sys
logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, format="LOG %(name)s: %(message)s")
for name in logging.root.manager.loggerDict:
    if not name.startswith("sandbox.python.cache"):
        logging.getLogger(name).setLevel(logging.WARNING)
from sandbox import Sandbox, SandboxConfig
from sandbox.python import tcache
from sandbox.wasm.wasi import Preopen
"""
CALLS = """
def triple(x):
    return x * 3

COUNT = []

def count():
    COUNT.append(1)
    return len(COUNT)

with Sandbox("python", reset="per_call"{extra}) as sb:
    print("RESULT", sb.call(triple, 14), sb.call(count), sb.call(count), sb.tier)
    print("DATA", sb.run("import os\\nos.path.exists('/data/f') and open('/data/f').read()"))
tcache.flush()
"""
HIT = "read the Python interpreter from"


def run(cache: Path, extra: str = "", env: dict[str, str] | None = None) -> str:
    script = cache.parent / f"{cache.name}-probe.py"
    environ = {"KVM_SANDBOX_CACHE": str(cache), **(env or {})}
    proc = run_script(script, PRELUDE + CALLS.format(extra=extra), env=environ)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RESULT 42 1 1 " in proc.stdout, proc.stdout[-3000:]  # per_call: fresh each time
    return proc.stdout


def files(cache: Path) -> list[Path]:
    folder = cache / tcache.SUBDIR
    return sorted(folder.glob("*.snap")) if folder.is_dir() else []


def test_the_second_process_reads_what_the_first_saved(tmp_path: Path) -> None:
    first = run(tmp_path)
    assert HIT not in first
    (saved,) = files(tmp_path)
    assert saved.stat().st_mode & 0o777 == 0o600
    assert (saved.parent.stat().st_mode & 0o777) == 0o700
    second = run(tmp_path)
    assert HIT in second and "ignoring" not in second
    assert files(tmp_path) == [saved]


def test_a_corrupt_file_is_ignored_and_replaced(tmp_path: Path) -> None:
    run(tmp_path)
    (saved,) = files(tmp_path)
    data = bytearray(saved.read_bytes())
    data[len(data) // 2] ^= 0xFF
    saved.write_bytes(bytes(data))
    out = run(tmp_path)
    assert "ignoring the cached Python interpreter" in out and "checksum mismatch" in out
    assert HIT in run(tmp_path)  # rewritten by the run that ignored it


def test_a_truncated_file_is_ignored(tmp_path: Path) -> None:
    run(tmp_path)
    (saved,) = files(tmp_path)
    with open(saved, "r+b") as f:
        f.truncate(saved.stat().st_size // 3)
    out = run(tmp_path)
    assert "ignoring the cached Python interpreter" in out and HIT not in out


def test_a_file_renamed_to_another_key_is_refused(tmp_path: Path) -> None:
    run(tmp_path)
    bigger = ", config=SandboxConfig(memory_size=320 * 2**20, heap_size=64 * 2**20)"
    run(tmp_path, bigger)
    one, two = files(tmp_path)
    one.replace(two)  # the other config's interpreter under this one's name
    out = run(tmp_path, bigger) + run(tmp_path)
    assert "saved for other inputs" in out


def test_a_file_whose_token_does_not_match_its_memory_is_refused(tmp_path: Path) -> None:
    """A consistent file (valid checksum, windows as the host maps them) whose labels
    lie about the interpreter: the checks a start makes, made on a sandbox spawned from
    it, refuse it, and the interpreter is started afresh."""
    run(tmp_path)
    (saved,) = files(tmp_path)
    base = savedstate.read(saved)
    labels = dict(base.labels)
    labels["python.token"] = "00" * 16
    Snapshot.save(base, saved, labels=labels)
    out = run(tmp_path)
    assert "ignoring the cached Python interpreter" in out and "layout" in out
    assert HIT in run(tmp_path)


def test_one_interpreter_serves_every_host_directory_and_the_switch_writes_nothing(
    tmp_path: Path,
) -> None:
    """Sandboxes with directories start from an interpreter started with empty ones at
    the same guest paths (interpreter.placeholders): it is saved once and read by a
    process that gives another host directory there, which sees its own files."""
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text(name)
    opens = ", preopens=[Preopen(host_path={!r}, guest_path='/data')]"
    first = run(tmp_path / "a", opens.format(str(tmp_path / "one")))
    assert "DATA one" in first and HIT not in first
    (saved,) = files(tmp_path / "a")
    second = run(tmp_path / "a", opens.format(str(tmp_path / "two")))
    assert "DATA two" in second and HIT in second
    assert files(tmp_path / "a") == [saved]
    run(tmp_path / "b", env={tcache.ENVIRONMENT: "0"})
    assert files(tmp_path / "b") == []


def test_the_aot_tier_reads_its_interpreter_too(tmp_path: Path) -> None:
    """The compiled guest's interpreter, saved and read back the same way (the compiled
    guest itself from the machine's cache: benches and tests do not compile it here)."""
    from sandbox.python import interpreter
    from sandbox.wasm.aot import compiler

    guest = compiler.lookup(interpreter.module())
    if guest is None:
        pytest.skip("the compiled CPython guest is not cached (the aot tests compile it)")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / guest.parent.name).symlink_to(guest.parent)
    first = run(tmp_path / "cache", ', tier="aot"')
    assert HIT not in first and "RESULT 42 1 1 aot" in first
    second = run(tmp_path / "cache", ', tier="aot"')
    assert HIT in second and "ignoring" not in second
