"""Property-based tests of the check that lets a Wasm engine's snapshot file carry page
tables of its own (windows.check_tables, through Layout.check_system_memory as
Snapshot.load runs it): random edits of a real engine's page-table root, window tables
and pool state, and for every edited image the check accepts, a walk of the image as
the MMU walks it (present and user bits ANDed over the levels, NX from any level,
large pages honoured) must show that ring 3 reaches through the windows only
linear-memory pages handed out, each once, inside its window's current size and never
executable, and that no table the walk uses is itself reachable from ring 3. The walk
is a second, independent reading of the x86-64 page tables: it shares no code with the
check."""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterator

import hypothesis
import hypothesis.strategies as st
import pytest
from support import fuzz_settings

from sandbox import Sandbox
from sandbox.layout import PML4, Layout
from sandbox.wasm import WasmSandbox
from sandbox.wasm.abi import WASM_PAGE, WINDOW_BASE, WINDOW_STRIDE
from sandbox.wasm.windows import STATE_SIZE, check_tables

wasmtime = pytest.importorskip("wasmtime")
pytestmark = pytest.mark.requires_kvm

PAGE = 4096
P, W, U, PS, NX = 1, 2, 4, 1 << 7, 1 << 63
ACCESSED, DIRTY = 1 << 5, 1 << 6
ADDR = 0x000F_FFFF_FFFF_F000
TABLE = P | W | U | ACCESSED
LEAF = TABLE | DIRTY | NX
MODULE = """(module (memory 1 8)
  (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0))))"""


class Image:
    def __init__(self, layout: Layout, mem: bytes) -> None:
        self.layout = layout
        self.mem = bytearray(mem)
        self.pool_start = layout.heap_base + layout.heap_size
        self.state = layout.mem_size - STATE_SIZE

    def q(self, addr: int) -> int:
        return int(struct.unpack_from("<Q", self.mem, addr)[0])

    def accepted(self) -> bool:
        """What Snapshot.load's system-area check says of this image."""

        def read(addr: int, length: int) -> bytes:
            return bytes(self.mem[addr : addr + length])

        def roots(added: dict[int, int]) -> str | None:
            return check_tables(self.layout, read, added)

        system = bytes(self.mem[: self.layout.page_tables_end])
        return self.layout.check_system_memory(system, roots) is None


Mapping = tuple[int, int, int, bool]  # virtual address, physical address, size, executable


def mmu_walk(img: Image) -> tuple[list[Mapping], set[int]]:
    """Every ring-3 mapping through PML4 entries 1..511 (whether executable: no NX bit
    on the way), and the physical pages of the tables walked to reach any mapping
    (PML4 entry 0 is the runtime's identity map, compared byte for byte)."""
    mappings: list[Mapping] = []
    tables: set[int] = set()

    def walk(table: int, vbase: int, level: int, user: bool, execute: bool) -> None:
        if not 0 <= table <= len(img.mem) - PAGE:
            mappings.append((vbase, table, 1 << (12 + 9 * level), execute))  # outside: unsafe
            return
        tables.add(table)
        for index in range(512):
            entry = img.q(table + 8 * index)
            if not entry & P:
                continue
            vaddr = vbase + (index << (12 + 9 * (level - 1)))
            u, x = user and bool(entry & U), execute and not entry & NX
            if level == 1 or (level in (2, 3) and entry & PS):
                if u:
                    mappings.append((vaddr, entry & ADDR, 1 << (12 + 9 * (level - 1)), x))
                continue
            walk(entry & ADDR, vaddr, level - 1, u, x)

    for index in range(1, 512):
        entry = img.q(PML4 + 8 * index)
        if entry & P:
            walk(entry & ADDR, index << 39, 3, bool(entry & U), not entry & NX)
    return mappings, tables


def ring3_identity_pages(img: Image) -> set[int]:
    """Pages the runtime's identity map lets ring 3 reach (its leaf tables, PT entries
    with the user bit)."""
    first = img.layout.page_tables_end
    entries = array("Q", bytes(img.mem[0x9000:first]))
    return {i * PAGE for i, e in enumerate(entries) if e & P and e & U}


@pytest.fixture(scope="module")
def engine() -> Iterator[tuple[Layout, bytes, list[tuple[int, int]]]]:
    """A real engine with a grown memory: its layout, memory, and the (page, index) of
    the 8-byte words worth editing (the PML4's and the windows' tables' entries in use
    and their neighbours, the pool state)."""
    with Sandbox.from_wasm(bytes(wasmtime.wat2wasm(MODULE))) as sb:
        assert isinstance(sb, WasmSandbox)
        assert sb.call("grow", 2) == 1
        base = sb.snapshot().base
    layout = base.layout
    img = Image(layout, base.image.read(0, layout.mem_size))
    _, tables = mmu_walk(img)
    slots = [(img.state, i) for i in range(3)] + [(img.state + PAGE, 0), (img.state + PAGE, 1)]
    for table in [PML4, *sorted(tables)]:  # every entry in use, and its neighbours
        used = [i for i in range(512) if img.q(table + 8 * i)]
        slots += [(table, i) for i in sorted({*used, *(i + 1 for i in used), 0, 511}) if i < 512]
    yield layout, bytes(img.mem), slots


MODES = ("set", "table", "flags", "address", "bit", "random")


def _edits(img: Image, slots: list[tuple[int, int]]) -> st.SearchStrategy[list[Edit]]:
    """Edits an attacker would try: an entry set to an address that matters with flags
    that matter, or to a table entry for it, an entry's flags or address replaced, one
    of its bits flipped, or a random word."""
    _, lin_next, table_next = struct.unpack_from("<QQQ", img.mem, img.state)
    layout = img.layout
    addresses = [
        0,
        PML4,
        0x2000,
        img.pool_start,
        lin_next - PAGE,
        lin_next,
        table_next,
        table_next - PAGE,
        img.state,
        layout.heap_base,
        layout.heap_base + layout.heap_size - PAGE,
        layout.stack_top - PAGE,
    ]
    # Pages ring 3 can write that hold zeros: as a table, one that maps nothing (yet).
    blank = [a for a in (layout.stack_base, layout.out_buf) if not any(img.mem[a : a + PAGE])]
    flags = [TABLE, LEAF, LEAF & ~NX, TABLE | PS, LEAF & ~U, LEAF | PS, P | U | W, 0]
    return st.lists(
        st.tuples(
            st.sampled_from(slots),
            st.sampled_from(MODES),
            st.one_of(st.sampled_from(addresses), st.sampled_from(blank)),
            st.sampled_from(flags),
            st.integers(0, 63),
            st.integers(0, (1 << 64) - 1),
        ),
        min_size=1,
        max_size=3,
    )


Edit = tuple[tuple[int, int], str, int, int, int, int]


def _apply(img: Image, edit: Edit) -> None:
    (page, index), mode, address, flags, bit, word = edit
    slot = page + 8 * index
    current = img.q(slot)
    value = {
        "set": address | flags,
        "table": address | TABLE,
        "flags": (current & ADDR) | flags,
        "address": address | (current & ~ADDR),
        "bit": current ^ (1 << bit),
        "random": word,
    }[mode]
    struct.pack_into("<Q", img.mem, slot, value)


def test_accepted_images_give_ring_3_only_the_linear_pages_handed_out(
    engine: tuple[Layout, bytes, list[tuple[int, int]]],
) -> None:
    layout, memory, slots = engine
    original = Image(layout, memory)
    assert original.accepted()
    seen = {"accepted": 0, "refused": 0}

    @fuzz_settings(max_examples=1000, deadline_ms=5000)
    @hypothesis.given(edits=_edits(original, slots))
    def check(edits: list[Edit]) -> None:
        img = original  # edited in place, and put back after the example
        undo = [(page + 8 * index, img.q(page + 8 * index)) for (page, index), *_ in edits]
        try:
            for edit in edits:
                _apply(img, edit)
            examine(img)
        finally:
            for addr, value in reversed(undo):
                struct.pack_into("<Q", img.mem, addr, value)

    def examine(img: Image) -> None:
        if not img.accepted():
            seen["refused"] += 1
            return
        seen["accepted"] += 1
        magic, lin_next, _ = struct.unpack_from("<QQQ", img.mem, img.state)
        counts = struct.unpack_from("<1024I", img.mem, img.state + PAGE)
        mappings, tables = mmu_walk(img)
        reachable = ring3_identity_pages(img)
        for vaddr, phys, size, executable in mappings:
            assert size == PAGE, f"a large page at 0x{vaddr:x}"
            assert not executable, f"ring 3 may execute linear memory at 0x{vaddr:x}"
            assert img.pool_start <= phys < lin_next, f"0x{vaddr:x} -> 0x{phys:x}"
            window, offset = divmod(vaddr - WINDOW_BASE, WINDOW_STRIDE)
            assert vaddr >= WINDOW_BASE and offset < counts[window] * WASM_PAGE
        leaves = [phys for _, phys, _, _ in mappings]
        assert len(set(leaves)) == len(leaves), "a page mapped twice"
        for table in tables:
            assert table not in reachable and table not in set(leaves), f"table 0x{table:x}"

    check()
    assert seen["accepted"] >= 10 and seen["refused"] >= 100, seen
