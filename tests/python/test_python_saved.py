"""A Python sandbox's state saved to a file and read back (PythonSnapshot.save,
sandbox.python.load_snapshot; sandbox/python/saved.py): in another process the state is
the one saved (globals, imports, functions defined), calls and resets start from it,
the directories are the reader's; and a hostile corpus of files with valid checksums
whose labels lie, each refused with a SnapshotError naming what is wrong, or, for a
lie that costs only time (functions the guest does not know), answered correctly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from python_support import run_script

from sandbox import ArgumentError, Sandbox, SandboxPool, SnapshotError
from sandbox.python import PythonSandbox, PythonSnapshot, load_snapshot, saved
from sandbox.python.shipping import ship
from sandbox.wasm.wasi import Preopen

pytestmark = pytest.mark.requires_kvm

SETUP = """
import json
DATA = {"x": 41}
SEEN = []
def double(x):
    return 2 * x
def seen():
    SEEN.append(1)
    return len(SEEN)
"""


def add(a: int, b: int) -> int:
    return a + b


READER = """
import sys
from sandbox import Sandbox
from sandbox.python import load_snapshot

def add(a, b):
    return a + b

snap = load_snapshot(sys.argv[1])
with Sandbox.from_snapshot(snap) as sb:
    print("STATE", sb.run("DATA['x'] + 1"), sb.call("double", 21), sb.call(add, 2, 3), sb.tier)
    sb.run("SEEN.append(1)")
    print("KEPT", sb.run("len(SEEN)"))
with snap.spawn(reset="per_call") as sb:
    print("FRESH", sb.run("SEEN.append(1) or len(SEEN)"), sb.run("SEEN.append(1) or len(SEEN)"))
with snap.spawn(host_functions={"shout": str.upper}) as sb:
    print("HOST", sb.run("from sandbox_guest import host\\nhost.shout('hi')"))
"""


@pytest.fixture
def state(tier: str) -> Iterator[PythonSnapshot]:
    with Sandbox("python", tier=tier) as sb:
        assert isinstance(sb, PythonSandbox)
        sb.run(SETUP)
        assert sb.call(add, 1, 2) == 3
        yield sb.snapshot()


def test_a_saved_state_runs_in_a_new_process(
    state: PythonSnapshot, tier: str, tmp_path: Path
) -> None:
    path = tmp_path / "warm.snap"
    state.save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    proc = run_script(tmp_path / "reader.py", READER, str(path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"STATE 42 42 5 {tier}" in proc.stdout
    assert "KEPT 1" in proc.stdout
    assert "FRESH 1 1" in proc.stdout  # per_call: every call from the file's state
    assert "HOST HI" in proc.stdout
    path.unlink()


def test_a_loaded_state_in_the_same_process_knows_the_functions(
    state: PythonSnapshot, tmp_path: Path
) -> None:
    path = tmp_path / "warm.snap"
    state.save(path)
    loaded = load_snapshot(path)
    path.unlink()
    assert loaded.known == state.known and ship(add).key in loaded.known
    assert loaded.config == state.config
    with loaded.spawn() as sb:
        assert sb.call(add, 20, 22) == 42
        assert sb.run("json.dumps(DATA)") == '{"x": 41}'
    with SandboxPool(snapshot=loaded, size=1) as pool:  # per_call: each from the file's state
        assert [pool.call("seen"), pool.call("seen")] == [1, 1]


@pytest.mark.parametrize("tier", ["interp"])
def test_the_directories_are_the_readers(tier: str, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    for folder, text in ((first, "one"), (second, "two")):
        folder.mkdir()
        (folder / "f.txt").write_text(text)
    read = "open('/data/f.txt').read()"
    with Sandbox(
        "python", tier=tier, preopens=[Preopen(host_path=first, guest_path="/data")]
    ) as sb:
        assert sb.run(read) == "one"
        path = tmp_path / "warm.snap"
        sb.snapshot().save(path)
    with pytest.raises(SnapshotError, match=r"/data \(ro\)"):
        load_snapshot(path)
    with pytest.raises(SnapshotError, match="directories"):
        load_snapshot(
            path, preopens=[Preopen(host_path=second, guest_path="/data", read_only=False)]
        )
    loaded = load_snapshot(path, preopens=[Preopen(host_path=second, guest_path="/data")])
    path.unlink()
    with loaded.spawn() as sb:
        assert sb.run(read) == "two"


def test_a_key_authenticates_it(state: PythonSnapshot, tmp_path: Path) -> None:
    """As for any snapshot file (sandbox/snapshot.py): with a key configured, only files
    authenticated with it are read; without one, an authenticated file is read like a
    checksummed one."""
    path = tmp_path / "warm.snap"
    state.save(path, key=b"k" * 32)
    with pytest.raises(SnapshotError, match="authentication failed"):
        load_snapshot(path, key=b"x" * 32)
    assert load_snapshot(path, key=b"k" * 32).known == state.known
    state.save(path)
    with pytest.raises(SnapshotError, match="not authenticated"):
        load_snapshot(path, key=b"k" * 32)
    path.unlink()


def test_the_native_loader_points_to_this_one(state: PythonSnapshot, tmp_path: Path) -> None:
    path = tmp_path / "warm.snap"
    state.save(path)
    with pytest.raises(SnapshotError, match="sandbox.python.load_snapshot"):
        Sandbox.from_snapshot(path)
    path.unlink()


# -- a hostile corpus: valid checksums, lying labels ---------------------------------------

ADDRESSES = saved.ADDRESSES_LABEL
# (the case, the labels changed (None: removed), what the SnapshotError says)
LIES: list[tuple[str, dict[str, str | None], str]] = [
    ("no format label", {saved.FORMAT_LABEL: None}, "not a Python sandbox's saved state"),
    ("other format", {saved.FORMAT_LABEL: "2"}, "format '2'"),
    ("other guest runtime", {saved.RUNTIME_LABEL: "0" * 64}, "another version"),
    ("no runtime", {saved.RUNTIME_LABEL: None}, "another version"),
    ("unknown tier", {saved.TIER_LABEL: "jit"}, "tier 'jit'"),
    ("short token", {saved.TOKEN_LABEL: "abcd"}, "token"),
    ("token not hex", {saved.TOKEN_LABEL: "zz" * 16}, "token"),
    ("five addresses", {ADDRESSES: "1,2,3,4,5"}, "addresses"),
    ("address over u32", {ADDRESSES: "1,2,3,4,5,4294967296"}, "addresses"),
    ("address negative", {ADDRESSES: "1,2,3,4,-5,0"}, "addresses"),
    ("address not ascii", {ADDRESSES: "1,2,3,4,\u0665,0"}, "addresses"),
    ("known key malformed", {saved.KNOWN_LABEL: "not-a-key"}, "known-functions"),
    ("packages it lacks", {saved.PACKAGES_LABEL: "0" * 24}, "another package set"),
    ("directories it lacks", {saved.PREOPENS_LABEL: '[["/data", true]]'}, "/data"),
    ("preopens not JSON", {saved.PREOPENS_LABEL: "[["}, "preopens"),
    ("preopens not a list", {saved.PREOPENS_LABEL: '{"a": 1}'}, "directories"),
]


def _lie(state: PythonSnapshot, path: Path, changes: dict[str, str | None]) -> None:
    labels: dict[str, str] = {}
    for name, value in {**saved.labels(state.template, state.known), **changes}.items():
        if value is not None:
            labels[name] = value
    state.wasm.save(path, labels=labels)


@pytest.fixture
def interp_state() -> Iterator[PythonSnapshot]:
    with Sandbox("python") as sb:
        assert isinstance(sb, PythonSandbox)
        sb.run(SETUP)
        yield sb.snapshot()


@pytest.mark.parametrize(("case", "changes", "says"), LIES, ids=[c for c, _, _ in LIES])
def test_lying_labels_are_refused(
    interp_state: PythonSnapshot,
    tmp_path: Path,
    case: str,
    changes: dict[str, str | None],
    says: str,
) -> None:
    path = tmp_path / "lie.snap"
    _lie(interp_state, path, changes)
    try:
        with pytest.raises(SnapshotError, match=says.replace("(", r"\(")):
            load_snapshot(path)
    finally:
        path.unlink()


def _addresses(state: PythonSnapshot, **changed: int) -> str:
    a = state.template.addresses
    numbers = {
        "call": a.call, "serve": a.serve, "empty_tuple": a.empty_tuple, "none": a.none,
        "mailbox": a.mailbox, "instance": a.instance, **changed,
    }  # fmt: skip
    order = ("call", "serve", "empty_tuple", "none", "mailbox", "instance")
    return ",".join(str(numbers[n]) for n in order)


@pytest.mark.parametrize(
    ("changed", "says"),
    [
        ({"mailbox": 0xFFFF0000}, "mailbox is not in the interpreter's memory"),
        ({"instance": 7}, "not the engine's main one"),
        ({"call": 0}, "does not answer"),
        ({"serve": 8}, "does not answer"),
        ({"call": 123456}, "does not answer"),
    ],
    ids=[
        "mailbox outside memory",
        "another instance",
        "call slot 0",
        "serve elsewhere",
        "call slot past the table",
    ],
)
def test_lying_addresses_are_refused(
    interp_state: PythonSnapshot, tmp_path: Path, changed: dict[str, int], says: str
) -> None:
    path = tmp_path / "lie.snap"
    _lie(interp_state, path, {ADDRESSES: _addresses(interp_state, **changed)})
    try:
        with pytest.raises(SnapshotError, match=says):
            load_snapshot(path)
    finally:
        path.unlink()


def test_a_lie_about_known_functions_costs_only_a_resend(
    interp_state: PythonSnapshot, tmp_path: Path
) -> None:
    """The labels claim the guest has `add` defined; it does not: the host sends the
    call without the source, the guest says it does not know it, the host sends it."""
    path = tmp_path / "lie.snap"
    assert ship(add).key not in interp_state.known
    _lie(interp_state, path, {saved.KNOWN_LABEL: ship(add).key})
    loaded = load_snapshot(path)
    path.unlink()
    assert ship(add).key in loaded.known
    with loaded.spawn() as sb:
        assert sb.call(add, 1, 2) == 3
    with loaded.spawn(reset="per_call") as sb:
        assert sb.call(add, 3, 4) == 7


def test_corrupt_and_other_files_are_refused(interp_state: PythonSnapshot, tmp_path: Path) -> None:
    path = tmp_path / "warm.snap"
    interp_state.save(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(SnapshotError, match="checksum"):
        load_snapshot(path)
    path.write_bytes(bytes(data[: len(data) // 3]))
    with pytest.raises(SnapshotError):
        load_snapshot(path)
    path.write_bytes(b"")
    with pytest.raises(SnapshotError):
        load_snapshot(path)
    path.unlink()
    with pytest.raises(FileNotFoundError):
        load_snapshot(path)
    with pytest.raises(ArgumentError, match="a str or a path"):
        load_snapshot(0)  # type: ignore[arg-type]  (os.stat would take it as a descriptor)
    interp_state.wasm.save(path)  # the engine's state without the Python labels
    with pytest.raises(SnapshotError, match="not a Python sandbox's saved state"):
        load_snapshot(path)
    with Sandbox() as native:  # a native guest's snapshot file
        native.snapshot().save(path)
    with pytest.raises(SnapshotError):
        load_snapshot(path)
    path.unlink()
