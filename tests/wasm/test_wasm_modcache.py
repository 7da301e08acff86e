"""The Wasm module cache (sandbox/wasm/modcache.py): a second from_wasm of the same
module neither validates nor compiles it again, nothing of one sandbox reaches another
made from the cache, and every hostile cache file on disk is detected, logged and
replaced by a fresh compile."""

from __future__ import annotations

import logging
import os
import struct
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from sandbox import Sandbox
from sandbox.snapshot import Snapshot
from sandbox.wasm import WasiConfig, modcache
from sandbox.wasm import module as wasm_module
from sandbox.wasm.sandbox import WasmSandbox

ROOT = Path(__file__).resolve().parents[2]

# argv and environ to stdout; a counter in a global and in memory; an import's value.
PROBE_WAT = """(module
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $asg (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $ag (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $esg (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $eg (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fw (param i32 i32 i32 i32) (result i32)))
  (import "env" "tag" (func $tag (result i32)))
  (memory (export "memory") 1)
  (global $count (mut i32) (i32.const 0))
  (func $out (param $ptr i32) (param $len i32)
    (i32.store (i32.const 16) (local.get $ptr))
    (i32.store (i32.const 20) (local.get $len))
    (drop (call $fw (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24))))
  (func (export "dump")
    (drop (call $asg (i32.const 0) (i32.const 4)))
    (drop (call $ag (i32.const 1024) (i32.const 2048)))
    (call $out (i32.const 2048) (i32.load (i32.const 4)))
    (drop (call $esg (i32.const 0) (i32.const 4)))
    (drop (call $eg (i32.const 1024) (i32.const 8192)))
    (call $out (i32.const 8192) (i32.load (i32.const 4))))
  (func (export "bump") (result i32)
    (global.set $count (i32.add (global.get $count) (i32.const 1)))
    (i32.store (i32.const 60000) (i32.add (i32.load (i32.const 60000)) (i32.const 1)))
    (global.get $count))
  (func (export "peek") (result i32) (i32.load (i32.const 60000)))
  (func (export "who") (result i32) (call $tag)))"""

# A start function that calls the sandbox's own import and writes memory.
START_WAT = """(module
  (import "env" "hello" (func $hello (result i32)))
  (memory (export "memory") 1)
  (func $start (i32.store (i32.const 0) (call $hello)))
  (start $start)
  (func (export "seen") (result i32) (i32.load (i32.const 0))))"""


def _add(k: int) -> bytes:
    return bytes(
        wasmtime.wat2wasm(
            f'(module (func (export "add") (param i32 i32) (result i32) '
            f"local.get 0 local.get 1 i32.add i32.const {k} i32.add))"
        )
    )


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty cache directory, every module written to disk, nothing in memory."""
    monkeypatch.setenv("KVM_SANDBOX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(modcache, "DISK_MIN_LOAD_S", 0.0)
    modcache.clear_memory()
    yield modcache.cache_dir()
    modcache.flush()
    modcache.clear_memory()


class Counts:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.validations = self.loads = 0
        validate, load = wasm_module.validate, WasmSandbox.load

        def counting_validate(data: bytes) -> None:
            self.validations += 1
            validate(data)

        def counting_load(sb: WasmSandbox, module: Any) -> Any:
            self.loads += 1
            return load(sb, module)

        monkeypatch.setattr(wasm_module, "validate", counting_validate)
        monkeypatch.setattr(WasmSandbox, "load", counting_load)


def _probe(args: list[str], env: dict[str, str], tag: int, **kw: Any) -> WasmSandbox:
    sb = Sandbox.from_wasm(
        bytes(wasmtime.wat2wasm(PROBE_WAT)),
        wasi=WasiConfig(args=args, env=env),
        imports={"env": {"tag": lambda: tag}},
        **kw,
    )
    assert isinstance(sb, WasmSandbox)
    return sb


def test_a_second_from_wasm_neither_validates_nor_loads(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counts = Counts(monkeypatch)
    data = _add(1)
    for i in range(3):
        with Sandbox.from_wasm(data) as sb:
            assert sb.call("add", i, 2) == i + 3
    assert (counts.validations, counts.loads) == (1, 1)
    # A path to the same bytes is the same module.
    path = cache.parent / "add.wasm"
    path.write_bytes(data)
    with Sandbox.from_wasm(path) as sb:
        assert sb.call("add", 1, 1) == 3
    assert (counts.validations, counts.loads) == (1, 1)
    # Another config is another engine: loaded again, not validated again.
    from sandbox import SandboxConfig

    with Sandbox.from_wasm(data, config=SandboxConfig(memory_size=64 << 20)) as sb:
        assert sb.call("add", 1, 1) == 3
    assert (counts.validations, counts.loads) == (1, 2)


def test_sandboxes_from_the_cache_see_their_own_wasi_and_imports(cache: Path) -> None:
    a = _probe(["prog", "alpha"], {"WHO": "a"}, 11)
    b = _probe(["prog", "beta", "x"], {"WHO": "b", "MORE": "1"}, 22)
    with a, b:
        a.call("dump")
        b.call("dump")
        assert a.last_output == "prog\0alpha\0WHO=a\0"
        assert b.last_output == "prog\0beta\0x\0WHO=b\0MORE=1\0"
        assert (a.call("who"), b.call("who")) == (11, 22)
        assert (a.call("bump"), a.call("bump"), b.call("bump")) == (1, 2, 1)
        assert (a.call("peek"), b.call("peek")) == (2, 1)
        # A snapshot of a sandbox made from the cache keeps its own WASI config.
        snap = b.snapshot()
    with Sandbox.from_snapshot(snap) as c:
        c.call("dump")
        assert c.last_output == "prog\0beta\0x\0WHO=b\0MORE=1\0"
        assert c.call("peek") == 1  # b's state as the snapshot took it
    # What a and b wrote reaches no sandbox made from the cache later.
    with _probe(["p"], {}, 33) as d:
        assert d.wasi is not None and d.wasi.stdout == b""
        assert (d.call("peek"), d.call("bump"), d.call("who")) == (0, 1, 33)
        d.call("dump")
        assert d.last_output == "p\0"
        d.restore()
        assert d.call("peek") == 0


def test_a_start_function_runs_in_every_sandbox_with_its_own_import(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counts = Counts(monkeypatch)
    data = bytes(wasmtime.wat2wasm(START_WAT))
    calls: list[int] = []
    for value in (5, 6):

        def hello(value: int = value) -> int:
            calls.append(value)
            return value

        with Sandbox.from_wasm(data, imports={"env": {"hello": hello}}) as sb:
            assert sb.call("seen") == value
    assert calls == [5, 6]
    assert (counts.validations, counts.loads) == (1, 1)  # the loaded engine, cached


def test_a_link_error_is_still_raised_from_the_cache(cache: Path) -> None:
    from sandbox.errors import WasmLinkError

    _probe(["p"], {}, 1).close()
    with pytest.raises(WasmLinkError, match="env.tag"):
        Sandbox.from_wasm(bytes(wasmtime.wat2wasm(PROBE_WAT)), wasi=WasiConfig())


def test_small_modules_stay_off_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a small module afresh is cheaper than reading its engine from a file."""
    monkeypatch.setenv("KVM_SANDBOX_CACHE", str(tmp_path))
    modcache.clear_memory()
    with Sandbox.from_wasm(_add(2)) as sb:
        assert sb.call("add", 1, 1) == 4
    modcache.flush()
    assert not list(modcache.cache_dir().glob("*.snap"))


def _entry(cache: Path, data: bytes) -> Path:
    """The cache file of `data` (written by a from_wasm)."""
    with Sandbox.from_wasm(data) as sb:
        sb.call("add", 1, 1)
    modcache.flush()
    (path,) = cache.glob(f"{wasm_module.validated(data).sha256}-*.snap")
    return path


def _replace(path: Path, content: bytes) -> None:
    """Writes `content` as a new file (a new inode: Snapshot.load caches by identity)."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(content)
    os.replace(tmp, path)


def _relabel(path: Path, **labels: str) -> bytes:
    """The file rewritten, with a valid checksum, with some labels changed."""
    snap = Snapshot.load(path)
    out = path.with_name("relabelled")
    snap.save(out, labels={**snap.labels, **labels})
    return out.read_bytes()


def _flip(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x40]) + data[middle + 1 :]


def _version(data: bytes, version: int) -> bytes:
    return data[:8] + struct.pack("<I", version) + data[12:]


HOSTILE: dict[str, tuple[Callable[[bytes, bytes, Path], bytes], str]] = {
    "tampered": (lambda good, other, path: _flip(good), "checksum mismatch"),
    "truncated": (lambda good, other, path: good[: len(good) // 3], "checksum mismatch"),
    "cut short": (lambda good, other, path: good[:20], "too short"),
    "wrong version": (lambda good, other, path: _version(good, 9), "format version 9"),
    "garbage": (lambda good, other, path: os.urandom(4096), "bad magic"),
    "swapped": (lambda good, other, path: other, "holds another module"),
    "old format": (lambda good, other, path: _relabel(path, format="0"), "another version"),
    "other engine": (
        lambda good, other, path: _relabel(path, engine="0" * 64),
        "another build of the engine",
    ),
    "other validator": (
        lambda good, other, path: _relabel(path, validator="0.1"),
        "another wasmtime",
    ),
    "bad handle": (lambda good, other, path: _relabel(path, handle="-1"), "malformed handles"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_cache_file_is_logged_and_compiled_afresh(
    cache: Path, case: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, other_data = _add(100), _add(200)
    path = _entry(cache, data)
    good = path.read_bytes()
    other = _entry(cache, other_data).read_bytes()
    caplog.set_level(logging.WARNING, logger="sandbox.wasm.cache")
    make, why = HOSTILE[case]
    _replace(path, make(good, other, path))
    modcache.clear_memory()  # as a new process
    counts = Counts(monkeypatch)
    with Sandbox.from_wasm(data) as sb:
        assert sb.call("add", 1, 2) == 103
    warnings = [r.getMessage() for r in caplog.records if r.name == "sandbox.wasm.cache"]
    assert len(warnings) == 1 and why in warnings[0] and "compiling it afresh" in warnings[0]
    assert (counts.validations, counts.loads) == (1, 1)  # validated and loaded afresh
    # The fresh compile rewrote the file: a new process takes it as it is.
    modcache.flush()
    modcache.clear_memory()
    caplog.clear()
    with Sandbox.from_wasm(data) as sb:
        assert sb.call("add", 1, 2) == 103
    assert not [r for r in caplog.records if r.name == "sandbox.wasm.cache"]
    assert (counts.validations, counts.loads) == (1, 1)


def test_a_directory_in_place_of_the_file_is_survived(
    cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = _add(300)
    path = _entry(cache, data)
    path.unlink()
    path.mkdir()
    modcache.clear_memory()
    with caplog.at_level(logging.WARNING, logger="sandbox.wasm.cache"):
        with Sandbox.from_wasm(data) as sb:
            assert sb.call("add", 1, 2) == 303
        modcache.flush()
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "ignoring cached Wasm module" in text and "cannot write" in text


def test_with_a_key_unauthenticated_files_are_refused(
    cache: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file with a recomputed checksum passes without a key; with
    SANDBOX_SNAPSHOT_KEY set, only files authenticated with it are read."""
    caplog.set_level(logging.WARNING, logger="sandbox.wasm.cache")
    data = _add(400)
    _entry(cache, data)
    modcache.clear_memory()
    monkeypatch.setenv("SANDBOX_SNAPSHOT_KEY", "k1")
    with Sandbox.from_wasm(data) as sb:
        assert sb.call("add", 1, 2) == 403
    assert "not authenticated" in caplog.text
    modcache.flush()  # rewritten, authenticated with k1
    modcache.clear_memory()
    monkeypatch.setenv("SANDBOX_SNAPSHOT_KEY", "k2")
    caplog.clear()
    with Sandbox.from_wasm(data) as sb:
        assert sb.call("add", 1, 2) == 403
    assert "authentication failed" in caplog.text


def test_a_new_process_starts_from_the_disk_cache(cache: Path, tmp_path: Path) -> None:
    """In a new process, from_wasm of a module in the disk cache neither validates nor
    loads it (both are made to fail there); and an instantiated copy of it from the
    cache runs with that process's own WASI arguments."""
    data = bytes(wasmtime.wat2wasm(PROBE_WAT))
    with _probe(["first"], {}, 1) as sb:
        sb.call("dump")
    modcache.flush()
    assert len(list(cache.glob("*.snap"))) == 1
    module = tmp_path / "probe.wasm"
    module.write_bytes(data)
    script = textwrap.dedent(
        f"""
        from sandbox import Sandbox
        from sandbox.wasm import WasiConfig, module
        from sandbox.wasm.sandbox import WasmSandbox
        def refuse(*args):
            raise AssertionError("validated or loaded again")
        module.validate = refuse
        WasmSandbox.load = refuse
        for n in range(2):
            with Sandbox.from_wasm({str(module)!r}, wasi=WasiConfig(args=["second", str(n)]),
                                   imports={{"env": {{"tag": lambda: 7}}}}) as sb:
                sb.call("dump")
                print(repr(sb.last_output), sb.call("who"), sb.call("bump"))
        """
    )
    env = {**os.environ, "KVM_SANDBOX_CACHE": str(cache.parent), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[:2] == ["'second\\x000\\x00' 7 1", "'second\\x001\\x00' 7 1"]


def test_an_entry_of_another_config_is_refused(
    cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The same module's entry for another sandbox config, under this config's name."""
    from sandbox import SandboxConfig

    caplog.set_level(logging.WARNING, logger="sandbox.wasm.cache")
    data = _add(500)
    path = _entry(cache, data)
    with Sandbox.from_wasm(data, config=SandboxConfig(memory_size=64 << 20)) as sb:
        assert sb.call("add", 1, 1) == 502
    modcache.flush()
    (other,) = [p for p in cache.glob("*.snap") if p != path]
    _replace(path, other.read_bytes())
    modcache.clear_memory()
    with Sandbox.from_wasm(data) as sb:
        assert sb.call("add", 1, 2) == 503
        assert sb.config.memory_size != 64 << 20
    assert "made for another sandbox config" in caplog.text
