"""Property-based tests of Snapshot.load on mutations of a real snapshot file (the demo
guest's, saved once per module, with and without a key): byte flips anywhere,
truncation at any offset, appended garbage. Each must be refused with a SnapshotError,
except where the change cannot matter (the HMAC of an authenticated file read without
a key, which is then read like a checksummed one): then the snapshot loads and its
sandboxes answer as the original's do.

Then crafted files, whose checksum and HMAC are recomputed after the edit (what an
attacker who can write the file, and knows the key, makes): flips in the structure
(prefix, JSON header, vCPU state, piece headers) and JSON-level replacements of header
fields. Each is refused with a SnapshotError, or loads and then answers a call
correctly or with a SandboxError (a trap, a time limit): never another exception, a
hang, or a crash of the host. The guest's memory itself is not mutated here: any guest
code is its own business, contained like any guest (tests/core/test_faults.py)."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, example, given
from hypothesis import strategies as st
from support import drain, fuzz_settings

from sandbox import Sandbox, SandboxError, Snapshot, SnapshotError

pytestmark = pytest.mark.requires_kvm

KEY = "fuzz key"
KEY_ENV = "SANDBOX_SNAPSHOT_KEY"
PREFIX = struct.Struct("<8sII")  # magic, version, header length (sandbox/snapshot.py)
DIGEST = 32


@dataclass(frozen=True)
class Saved:
    """A saved snapshot file's bytes, and where its parts are."""

    data: bytes
    keyed: bool
    header_start: int
    header_end: int
    structure_end: int  # prefix, header, vCPU state and the first piece's header

    @property
    def trailer(self) -> int:
        return len(self.data) - (2 if self.keyed else 1) * DIGEST

    def with_trailer(self, body: bytes) -> bytes:
        """`body` with the trailer a writer with the key would give it."""
        trailer = hashlib.sha256(body).digest()
        if self.keyed:
            mac_key = hashlib.sha256(b"sandbox snapshot key\0" + KEY.encode()).digest()
            trailer += hmac.new(mac_key, body, "sha256").digest()
        return body + trailer


def parse(data: bytes, keyed: bool) -> Saved:
    _, _, header_len = PREFIX.unpack_from(data, 0)
    header = json.loads(data[PREFIX.size : PREFIX.size + header_len])
    header_end = PREFIX.size + header_len
    return Saved(
        data, keyed, PREFIX.size, header_end, header_end + sum(header["blobs"].values()) + 16
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[bool, Saved]]:
    folder = tmp_path_factory.mktemp("snapshot-fuzz")
    with Sandbox() as sb:
        assert sb.call("add", 2, 3) == 5
        snap = sb.snapshot()
        snap.save(folder / "plain.snap", key=None)
        snap.save(folder / "keyed.snap", key=KEY)
    yield {
        keyed: parse((folder / name).read_bytes(), keyed)
        for keyed, name in ((False, "plain.snap"), (True, "keyed.snap"))
    }
    drain()


_serial = itertools.count(1)


def write(folder: Path, data: bytes) -> Path:
    """`data` in a file of its own, with a modification time no other file here has:
    Snapshot.load caches by (device, inode, size, mtime), and an inode is reused as
    soon as the last example's file is deleted."""
    n = next(_serial)
    path = folder / f"{n}.snap"
    path.write_bytes(data)
    os.utime(path, ns=(n * 1_000_000_007, n * 1_000_000_007))
    return path


def behaves_like_the_original(snap: Snapshot) -> None:
    with Sandbox.from_snapshot(snap) as sb:
        assert sb.call("add", 2, 3, timeout=5) == 5
        assert sb.call("echo", "héllo", timeout=5) == "héllo"


def load(path: Path, key: str | None, via_env: bool) -> Snapshot:
    if not via_env:
        return Snapshot.load(path, key=key)
    old = os.environ.pop(KEY_ENV, None)
    try:
        if key is not None:
            os.environ[KEY_ENV] = key
        return Snapshot.load(path)
    finally:
        os.environ.pop(KEY_ENV, None)
        if old is not None:
            os.environ[KEY_ENV] = old


# -- corruption: any change is caught -------------------------------------------------


# Positions: any (taken modulo the file's size), in the prefix and header, or counted
# from the end (negative: the trailer).
POSITIONS = st.one_of(st.integers(0, 1 << 21), st.integers(0, 600), st.integers(-2 * DIGEST, -1))
FLIPS = st.lists(st.tuples(POSITIONS, st.integers(1, 255)), max_size=3)
CUTS = st.one_of(st.none(), st.integers(0, 1 << 21), st.integers(-80, -1))
APPENDED = st.one_of(st.just(b""), st.binary(min_size=1, max_size=80))


@fuzz_settings(120, deadline_ms=10_000)
@given(
    st.booleans(),
    st.sampled_from([None, KEY, "another key"]),
    st.booleans(),
    FLIPS,
    CUTS,
    APPENDED,
)
@example(True, None, False, [(-1, 1)], None, b"")  # the HMAC flipped, read without a key
@example(True, KEY, True, [(-1, 1)], None, b"")  # the same, with the key
@example(False, None, False, [], -1, b"")
@example(False, None, False, [], None, b"\0")
@example(True, KEY, False, [], 16, b"")
def test_corrupted_files_are_refused(
    saved: dict[bool, Saved],
    tmp_path_factory: pytest.TempPathFactory,
    keyed: bool,
    key: str | None,
    via_env: bool,
    flips: list[tuple[int, int]],
    cut: int | None,
    extra: bytes,
) -> None:
    original = saved[keyed]
    size = len(original.data)
    mutated = bytearray(original.data)
    for at, mask in flips:
        mutated[at % size] ^= mask
    if cut is not None:
        del mutated[cut % (size + 1) if cut >= 0 else size + cut :]
    mutated += extra
    changed = [i for i in range(min(len(mutated), size)) if mutated[i] != original.data[i]]
    same_size = len(mutated) == size
    # What can load: the file unchanged, read with the key it was written with (or, if
    # written with none, with none); an authenticated file read without a key when only
    # its HMAC changed.
    key_fits = key == KEY if keyed else key is None
    loads = same_size and (
        (not changed and (key_fits or (keyed and key is None)))
        or (keyed and key is None and all(i >= size - DIGEST for i in changed))
    )
    path = write(tmp_path_factory.getbasetemp(), bytes(mutated))
    try:
        snap = load(path, key, via_env)
    except SnapshotError as exc:
        event(f"refused: {str(exc).split(': ', 1)[1][:30]}")
        assert not loads, f"refused a usable file: {exc}"
        return
    finally:
        path.unlink()
    event("loaded")
    assert loads, f"loaded a corrupted file (flips {flips}, cut {cut}, {extra!r} appended)"
    behaves_like_the_original(snap)


# -- crafted files: valid trailer, hostile content ------------------------------------

# Header fields an attacker might set, as paths into the JSON document.
FIELDS = [
    ("abi_version",),
    ("guest_path",),
    ("config", "memory_size"),
    ("config", "stack_size"),
    ("config", "heap_size"),
    ("config", "input_buffer_size"),
    ("config", "output_buffer_size"),
    ("config", "timeout"),
    ("config", "output_limit"),
    ("layout", "mem_size"),
    ("layout", "page_tables_end"),
    ("layout", "image_base"),
    ("layout", "image_end"),
    ("layout", "in_buf"),
    ("layout", "out_size"),
    ("layout", "stack_top"),
    ("layout", "heap_size"),
    ("layout", "extra"),
    ("functions",),
    ("functions", 0),
    ("functions", 0, 0),
    ("functions", 0, 1),
    ("functions", 0, 2),
    ("functions_table",),
    ("blobs",),
    ("blobs", "regs"),
    ("blobs", "xsave"),
    ("blobs", "xcrs"),
    ("pieces",),
    ("labels",),
    ("labels", "x"),
    ("unknown",),
]
JSON_VALUES = st.one_of(
    st.integers(-3, 3),
    st.sampled_from([2**31, 2**32, 2**63, 2**64, -(2**63), 10**30, 4096, 2 << 20]),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.none(),
    st.booleans(),
    st.lists(st.integers(-1, 300), max_size=4),
    st.dictionaries(st.text(max_size=4), st.integers(0, 8), max_size=2),
)


def set_field(doc: Any, path: tuple[str | int, ...], value: Any) -> None:
    """doc[path] = value where the path's parents exist (else nothing)."""
    for part in path[:-1]:
        try:
            doc = doc[part]
        except (KeyError, IndexError, TypeError):
            return
    if isinstance(doc, dict) or (isinstance(doc, list) and isinstance(path[-1], int)):
        doc[path[-1]] = value  # type: ignore[index]


def rebuilt(original: Saved, header: bytes) -> bytes:
    body = original.data[: original.trailer]
    body = (
        PREFIX.pack(b"SBXSNAP\0", 2 if original.keyed else 1, len(header))
        + header
        + body[original.header_end :]
    )
    return original.with_trailer(body)


def load_crafted(tmp_path_factory: pytest.TempPathFactory, original: Saved, data: bytes) -> None:
    path = write(tmp_path_factory.getbasetemp(), data)
    try:
        snap = Snapshot.load(path, key=KEY if original.keyed else None)
    except SnapshotError as exc:
        event(f"refused: {str(exc).split(': ', 1)[1][:40]}")
        return
    finally:
        path.unlink()
    try:
        with Sandbox.from_snapshot(snap) as sb:
            assert sb.call("add", 2, 3, timeout=5) == 5
        event("loaded, answers")
    except SandboxError as exc:
        event(f"loaded, then {type(exc).__name__}")  # a typed refusal or trap: contained


@fuzz_settings(150, deadline_ms=10_000)
@given(st.booleans(), st.sampled_from(FIELDS), JSON_VALUES)
@example(False, ("pieces",), 2**64)
@example(False, ("blobs", "regs"), 2**63)
@example(True, ("layout", "mem_size"), 10**30)
@example(False, ("functions", 0, 1), [0])  # a void parameter
def test_crafted_headers(
    saved: dict[bool, Saved],
    tmp_path_factory: pytest.TempPathFactory,
    keyed: bool,
    field: tuple[str | int, ...],
    value: Any,
) -> None:
    original = saved[keyed]
    doc = json.loads(original.data[original.header_start : original.header_end])
    set_field(doc, field, value)
    load_crafted(tmp_path_factory, original, rebuilt(original, json.dumps(doc).encode()))


@fuzz_settings(150, deadline_ms=10_000)
@given(st.booleans(), st.data())
def test_crafted_structure_flips(
    saved: dict[bool, Saved], tmp_path_factory: pytest.TempPathFactory, keyed: bool, data: Any
) -> None:
    original = saved[keyed]
    body = bytearray(original.data[: original.trailer])
    end = original.structure_end
    flips = data.draw(
        st.lists(st.tuples(st.integers(0, end - 1), st.integers(1, 255)), min_size=1, max_size=3)
    )
    for at, mask in flips:
        body[at] ^= mask
    load_crafted(tmp_path_factory, original, original.with_trailer(bytes(body)))
