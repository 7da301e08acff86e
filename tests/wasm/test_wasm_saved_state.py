"""A Wasm sandbox's snapshot saved to a file and read back (WasmSnapshot.save,
sandbox.wasm.load_snapshot; sandbox/wasm/savedstate.py), and
the check that makes that safe: the Wasm windows' page tables in a file must be ones the
host could have written (windows.check_tables), so that ring 3 reaches through them only
the linear-memory pages handed out and every reset searches every page it can write.

Before this, Snapshot.load refused any page-table root beyond the runtime's own, so an
engine with linear memory could not be saved at all. The hostile corpus edits a real
engine's memory (a leaf onto a page table or the system area, an executable or extra
leaf, a root outside the window slots, a table used twice, a malformed pool state...)
and each edit must be refused, directly and through a file with a valid checksum."""

from __future__ import annotations

import struct
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sandbox import ArgumentError, Sandbox, Snapshot, SnapshotError
from sandbox import x86_64 as x86
from sandbox.layout import PML4, Layout
from sandbox.memory import MemoryImage
from sandbox.wasm import WasmEngineError, WasmSandbox, WasmTrap, load_snapshot, savedstate
from sandbox.wasm.abi import WASM_PAGE
from sandbox.wasm.module import WasmModule, load
from sandbox.wasm.state import WasmSnapshot
from sandbox.wasm.windows import STATE_SIZE, check_tables

wasmtime = pytest.importorskip("wasmtime")
pytestmark = pytest.mark.requires_kvm

MODULE = """
(module
  (memory (export "memory") 1 8)
  (global $g (mut i32) (i32.const 0))
  (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))
  (func (export "load") (param i32) (result i32) (i32.load (local.get 0)))
  (func (export "store") (param i32 i32) (i32.store (local.get 0) (local.get 1)))
  (func (export "grow_touch") (result i32)  ;; grows 2 pages and uses the first new one
    (drop (memory.grow (i32.const 2)))
    (i32.store (i32.const 196608) (i32.const 77))
    (i32.load (i32.const 196608)))
  (func (export "bump") (result i32)
    (global.set $g (i32.add (global.get $g) (i32.const 1))) (global.get $g)))
"""
MARK = 3 * WASM_PAGE - 4  # the last word of the grown memory
TABLE = x86.PTE_PRESENT | x86.PTE_WRITABLE | x86.PTE_USER | x86.PTE_ACCESSED
LEAF = TABLE | x86.PTE_DIRTY | x86.PTE_NX
ADDR = 0x000F_FFFF_FFFF_F000


@pytest.fixture(scope="module")
def module() -> WasmModule:
    return load(bytes(wasmtime.wat2wasm(MODULE)))


@pytest.fixture(scope="module")
def wasm_bytes(module: WasmModule) -> bytes:
    return module.data


@pytest.fixture(scope="module")
def grown(wasm_bytes: bytes) -> Iterator[WasmSnapshot]:
    """An engine whose memory grew to 3 Wasm pages (two grows), with marks written."""
    with Sandbox.from_wasm(wasm_bytes) as sb:
        assert isinstance(sb, WasmSandbox)
        assert sb.call("grow", 1) == 1 and sb.call("grow", 1) == 2
        sb.call("store", 8, 1234)
        sb.call("store", MARK, 5678)
        assert sb.call("bump") == 1
        yield sb.snapshot()


@pytest.fixture
def saved(grown: WasmSnapshot, tmp_path: Path) -> Path:
    path = tmp_path / "engine.snap"
    grown.save(path, labels={"note": "kept"})
    return path


def test_saved_engine_reads_back_with_its_memory_globals_and_guard(
    saved: Path, module: WasmModule
) -> None:
    base = savedstate.read(saved)
    assert base.labels["note"] == "kept"
    snap = savedstate.attach(base, modules={module.sha256: module}, wasi=None)
    with Sandbox.from_snapshot(snap) as sb:
        assert sb.call("load", 8) == 1234 and sb.call("load", MARK) == 5678
        assert sb.call("bump") == 2  # the global as saved, then incremented
        with pytest.raises(WasmTrap):  # the byte past the 3 pages is guard space
            sb.call("load", 3 * WASM_PAGE)
        assert sb.call("grow", 1) == 3  # and it grows on from there
        sb.call("store", 3 * WASM_PAGE, 9)
        assert sb.call("load", 3 * WASM_PAGE) == 9


def test_a_loaded_engine_resets_every_page_it_writes(saved: Path, module: WasmModule) -> None:
    snap = savedstate.attach(savedstate.read(saved), modules={module.sha256: module}, wasi=None)
    with Sandbox.from_snapshot(snap, reset="per_call") as sb:
        for _ in range(3):
            assert sb.call("load", MARK) == 5678
            sb.call("store", MARK, 1)
            sb.call("store", 8, 2)
            assert sb.call("grow", 2) == 3  # grown pages, new page tables: all undone
            assert sb.call("bump") == 2
            assert sb.call("grow_touch") == 77  # KVM maps the new page...
            with pytest.raises(WasmTrap):  # ...and the reset takes it away again
                sb.call("load", 3 * WASM_PAGE)


def test_load_snapshot_is_the_public_way_back(
    saved: Path, wasm_bytes: bytes, tmp_path: Path
) -> None:
    snap = load_snapshot(saved, wasm_bytes)  # bytes, validated; a path or WasmModule too
    with Sandbox.from_snapshot(snap) as sb:
        assert sb.call("load", MARK) == 5678
    other = bytes(wasmtime.wat2wasm('(module (func (export "f")))'))
    with pytest.raises(SnapshotError, match="engine.snap: instance .* not one of the modules"):
        load_snapshot(saved, other)
    with pytest.raises(ArgumentError):
        load_snapshot(saved, [wasm_bytes, 3])  # type: ignore[list-item]


def test_a_keyed_snapshot_needs_its_key(
    grown: WasmSnapshot, wasm_bytes: bytes, tmp_path: Path
) -> None:
    path = tmp_path / "keyed.snap"
    grown.save(path, key="k1")
    assert load_snapshot(path, wasm_bytes, key="k1").wasm_state.main is not None
    with pytest.raises(SnapshotError, match="authentication failed"):
        load_snapshot(path, wasm_bytes, key="k2")


def test_a_wasi_program_saved_after_its_work_resumes_there(tmp_path: Path) -> None:
    """A WASI module's state, saved after calls that changed it, read back with a WASI
    configuration of the reader's (the default, none given): the preopens and streams
    are the reader's, the memory the writer's."""
    text = """(module
      (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "note") (param i32) (i32.store (i32.const 100) (local.get 0)))
      (func (export "say") (result i32)
        (i32.store (i32.const 0) (i32.const 100)) (i32.store (i32.const 4) (i32.const 4))
        (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))"""
    data = bytes(wasmtime.wat2wasm(text))
    path = tmp_path / "wasi.snap"
    with Sandbox.from_wasm(data) as sb:
        sb.call("note", 0x6B6F_2121)  # "!!ok" little-endian
        sb.snapshot().save(path)
    snap = load_snapshot(path, data)
    assert snap.wasm_state.wasi_config is not None
    with Sandbox.from_snapshot(snap) as copy:
        assert isinstance(copy, WasmSandbox)
        assert copy.call("say") == 0
        assert copy.wasi is not None and copy.wasi.stdout == b"!!ok"


def test_a_plain_snapshot_load_still_refuses_window_tables(saved: Path) -> None:
    with pytest.raises(SnapshotError, match="beyond the runtime's own page tables.*load_snapshot"):
        Snapshot.load(saved)


def test_attach_needs_the_modules_and_binds_imports_again(saved: Path, module: WasmModule) -> None:
    base = savedstate.read(saved)
    with pytest.raises(SnapshotError, match="not one of the modules given"):
        savedstate.attach(base, modules={}, wasi=None)
    with pytest.raises(SnapshotError, match="registered modules"):
        savedstate.attach(base, modules={module.sha256: module}, wasi=None, registered=frozenset())


def test_an_engine_with_python_callable_imports_is_not_saved(tmp_path: Path) -> None:
    text = '(module (import "host" "f" (func $f)) (func (export "run") (call $f)))'
    with Sandbox.from_wasm(
        bytes(wasmtime.wat2wasm(text)), imports={"host": {"f": lambda: None}}
    ) as sb:
        assert isinstance(sb, WasmSandbox)
        with pytest.raises(WasmEngineError, match="Python callables"):
            sb.snapshot().save(tmp_path / "x.snap")
    assert not (tmp_path / "x.snap").exists()


# -- the hostile corpus: edits of a real engine's memory ---------------------------------


class Image:
    """A writable copy of a snapshot's memory, walked the way the MMU walks it."""

    def __init__(self, snap: Snapshot) -> None:
        self.layout: Layout = snap.layout
        self.mem = bytearray(snap.image.read(0, self.layout.mem_size))
        self.template = array("Q", self.layout.system_area()[PML4 : PML4 + 4096])

    def entry(self, addr: int) -> int:
        return int(struct.unpack_from("<Q", self.mem, addr)[0])

    def set(self, addr: int, value: int) -> None:
        struct.pack_into("<Q", self.mem, addr, value)

    def roots(self) -> dict[int, int]:
        ours = array("Q", self.mem[PML4 : PML4 + 4096])
        return {i: e for i, (e, t) in enumerate(zip(ours, self.template, strict=True)) if e != t}

    def slots(self, table: int) -> list[int]:
        """Addresses of the present entries of the table at `table`."""
        return [table + 8 * i for i in range(512) if self.entry(table + 8 * i)]

    def path(self) -> tuple[int, int, int, int]:
        """Slots of the first window's root, PDPT, PD and PT entries (first leaf)."""
        root = PML4 + 8 * min(self.roots())
        pdpt = self.slots(self.entry(root) & ADDR)[0]
        pd = self.slots(self.entry(pdpt) & ADDR)[0]
        pt = self.slots(self.entry(pd) & ADDR)[0]
        return root, pdpt, pd, pt

    def pool(self) -> tuple[int, int, int]:
        state = self.layout.mem_size - STATE_SIZE
        magic, lin_next, table_next = struct.unpack_from("<QQQ", self.mem, state)
        return state, lin_next, table_next

    def check(self) -> str | None:
        return check_tables(self.layout, lambda a, n: bytes(self.mem[a : a + n]), self.roots())


def _leaf_on_table(img: Image) -> None:
    _, _, pd, pt = img.path()
    img.set(pt, (img.entry(pd) & ADDR) | LEAF)  # the PT itself, writable from ring 3


def _leaf_on_system(img: Image) -> None:
    img.set(img.path()[3], PML4 | LEAF)


def _leaf_executable(img: Image) -> None:
    pt = img.path()[3]
    img.set(pt, img.entry(pt) & ~x86.PTE_NX)


def _leaf_supervisor_flags(img: Image) -> None:
    pt = img.path()[3]
    img.set(pt, img.entry(pt) & ~x86.PTE_USER)


def _leaf_twice(img: Image) -> None:
    pt = img.path()[3]
    img.set(pt + 8, img.entry(pt))


def _leaf_in_guard_space(img: Image) -> None:
    state = img.pool()[0]  # the window's size one Wasm page less: its last page is guard
    count = struct.unpack_from("<I", img.mem, state + 4096)[0]
    struct.pack_into("<I", img.mem, state + 4096, count - 1)


def _window_larger_than_mapped(img: Image) -> None:
    state = img.pool()[0]
    count = struct.unpack_from("<I", img.mem, state + 4096)[0]
    struct.pack_into("<I", img.mem, state + 4096, count + 1)


def _root_outside_window_slots(img: Image) -> None:
    root = img.path()[0]
    img.set(PML4 + 8 * 1, img.entry(root))
    img.set(root, 0)


def _root_on_identity_pdpt(img: Image) -> None:
    img.set(img.path()[0], 0x2000 | TABLE)


def _table_twice(img: Image) -> None:
    _, _, pd, _ = img.path()
    img.set(pd + 8 * 511, img.entry(pd))


def _large_page(img: Image) -> None:
    _, _, pd, _ = img.path()
    img.set(pd, img.entry(pd) | (1 << 7))


def _pool_out_of_order(img: Image) -> None:
    state, lin_next, table_next = img.pool()
    struct.pack_into("<QQ", img.mem, state + 8, table_next + 4096, table_next)


def _pool_never_written(img: Image) -> None:
    struct.pack_into("<Q", img.mem, img.pool()[0], 0)


def _leaf_past_the_handed_out_pages(img: Image) -> None:
    _, lin_next, _ = img.pool()
    img.set(img.path()[3], lin_next | LEAF)


EDITS: dict[str, tuple[Callable[[Image], None], str]] = {
    "leaf on a page table": (_leaf_on_table, "as the host never maps"),
    "leaf on the system area": (_leaf_on_system, "as the host never maps"),
    "executable leaf": (_leaf_executable, "as the host never maps"),
    "supervisor leaf": (_leaf_supervisor_flags, "as the host never maps"),
    "one page mapped twice": (_leaf_twice, "as the host never maps"),
    "a page in guard space": (_leaf_in_guard_space, "as the host never maps"),
    "window larger than mapped": (_window_larger_than_mapped, "does not map its"),
    "root outside the window slots": (_root_outside_window_slots, "neither the runtime's"),
    "root on the identity map's PDPT": (_root_on_identity_pdpt, "not the host's"),
    "one table used twice": (_table_twice, "not the host's"),
    "a large page": (_large_page, "not the host's"),
    "pool state out of order": (_pool_out_of_order, "pool state is malformed"),
    "pool state never written": (_pool_never_written, "never written"),
    "leaf past the pages handed out": (_leaf_past_the_handed_out_pages, "never maps"),
}


def test_the_real_engine_passes(grown: WasmSnapshot) -> None:
    img = Image(grown.base)
    assert img.roots(), "the grown engine has a window root"
    assert img.check() is None


@pytest.mark.parametrize("name", list(EDITS))
def test_each_edit_of_the_windows_is_refused(grown: WasmSnapshot, name: str) -> None:
    edit, why = EDITS[name]
    img = Image(grown.base)
    edit(img)
    found = img.check()
    assert found is not None and why in found, found


@pytest.mark.parametrize("name", ["leaf on a page table", "root outside the window slots"])
def test_an_edited_file_with_a_valid_checksum_is_refused(
    grown: WasmSnapshot, module: WasmModule, tmp_path: Path, name: str
) -> None:
    """The same edits through a file: written by Snapshot.save (so its checksum is
    right), read by savedstate.read, refused naming the windows."""
    base = grown.base
    img = Image(base)
    EDITS[name][0](img)
    pieces = [(a, bytes(img.mem[a : a + n])) for a, n in base.image.data_ranges()]
    forged = Snapshot(
        image=MemoryImage(base.layout.mem_size, pieces),
        cpu=base.cpu,
        layout=base.layout,
        functions=base.functions,
        functions_table=base.functions_table,
        config=base.config,
        guest_path=base.guest_path,
    )
    path = tmp_path / "forged.snap"
    WasmSnapshot(forged, grown.wasm_state, WasmSandbox).save(path)
    with pytest.raises(SnapshotError, match=EDITS[name][1]):
        savedstate.read(path)
