"""Linear-memory windows: the host maps the engine's Wasm memories into guest virtual
memory, behind unmapped guard space.

Memory k of the engine lives at WINDOW_BASE + k * WINDOW_STRIDE (guests/wasm/wasm_abi.h).
Only its current pages are mapped (user, read-write, no-execute); the rest of the
16 GiB window is not, so any access past the end (a 32-bit address plus a 32-bit offset
reaches at most 8 GiB) page-faults, and the host turns that fault into a Wasm trap.

The physical pages come from the "pool", the part of guest memory above the engine's
heap, which the identity map leaves unmapped (ring 3 reaches it only through windows):

    heap end  +----------------------------+
              | linear memory pages    ^   |  allocated upwards, 4 KiB at a time
              |            ...             |
              | page-table pages       v   |  PDPT/PD/PT of the windows, downwards
    top - 8K  | pool state                 |  next free page each way, pages per window
    mem_size  +----------------------------+

All of this state lives in guest memory, not in Python, so snapshots and restores carry
it with the rest. Windows only grow; a restore that takes a window back to fewer pages
rewrites page tables KVM's shadow MMU has already used, so the sandbox flushes it then
(see Sandbox.watch_page_tables).
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Callable

from .. import x86_64 as x86
from ..layout import PML4, Layout
from ..memory import GuestMemory
from .abi import MAX_MEMORIES, MAX_PAGES, WASM_PAGE, WINDOW_BASE, WINDOW_STRIDE
from .wasi import MemoryOutOfBounds

PAGE = x86.PAGE_SIZE
PAGES_PER_WASM_PAGE = WASM_PAGE // PAGE
STATE_SIZE = 2 * PAGE
_HEADER = struct.Struct("<QQQ")  # magic, next linear page (up), next table page (down)
_MAGIC = 0x5342_5741_534D_0001
_TABLE = x86.PTE_PRESENT | x86.PTE_WRITABLE | x86.PTE_USER | x86.PTE_ACCESSED
_LEAF = _TABLE | x86.PTE_DIRTY | x86.PTE_NX
_ADDR_MASK = 0x000F_FFFF_FFFF_F000


def pool_reach(layout: Layout, read: Callable[[int, int], bytes]) -> list[tuple[int, int]] | None:
    """The guest ranges that can hold pages written since a memory was equal to an image
    whose pool state `read(address, length)` reads: everything below the pool, the
    linear-memory pages handed out, and the page tables and state at the top. The gap
    between the last two is written by nobody: ring 3 reaches the pool only through the
    windows, whose pages come from below it, and the host writes it only in `grow`, which
    widens the reach first (`Windows.on_reach`). None (all of memory) if the state does
    not read as one the host wrote."""
    pool_start, state = layout.heap_base + layout.heap_size, layout.mem_size - STATE_SIZE
    magic, lin_next, table_next = _HEADER.unpack(read(state, _HEADER.size))
    if magic != _MAGIC:  # the pool was never used: nothing in it is written
        return [(0, pool_start)]
    if lin_next % PAGE or table_next % PAGE or not pool_start <= lin_next <= table_next <= state:
        return None
    return _reach(lin_next, table_next, layout.mem_size)


def _reach(lin_next: int, table_next: int, mem_size: int) -> list[tuple[int, int]]:
    if table_next <= lin_next:
        return [(0, mem_size)]
    return [(0, lin_next), (table_next, mem_size - table_next)]


def check_tables(
    layout: Layout, read: Callable[[int, int], bytes], roots: dict[int, int]
) -> str | None:
    """Why the windows' page tables in a memory image are not ones `Windows.grow` could
    have written (None if they are), for a state read from a file: `roots` are the PML4
    entries (index -> entry) that differ from the runtime's own, `read(address, length)`
    reads the image. What it holds them to, so that ring 3 reaches through the windows
    only the linear-memory pages handed out and pool_reach's ranges stay exact:

    - the pool state reads as one the host wrote (magic, page-aligned next pointers in
      order inside the pool), each window at most MAX_PAGES Wasm pages;
    - every root is a window slot's, and every table under it an upper-level entry with
      the windows' flags pointing at a page of the page-table part of the pool, each
      table page used once;
    - every leaf has the windows' flags (user, writable, never executable) and maps a
      linear-memory page handed out, each at most once; and each window maps exactly its
      current size from its start: nothing in its guard space."""
    pool_start, state = layout.heap_base + layout.heap_size, layout.mem_size - STATE_SIZE
    if state - pool_start < 16 * PAGE:
        return "no Wasm pool in this layout" if roots else None
    magic, lin_next, table_next = _HEADER.unpack(read(state, _HEADER.size))
    counts = array("I", read(state + PAGE, 4 * MAX_MEMORIES))
    if magic != _MAGIC:
        if roots or any(counts):
            return "Wasm windows are mapped but the pool state was never written"
        return None
    if lin_next % PAGE or table_next % PAGE or not pool_start <= lin_next <= table_next <= state:
        return "the Wasm pool state is malformed"
    if max(counts) > MAX_PAGES:
        return "a Wasm window is larger than the Wasm limit"
    first_root, end_root = WINDOW_BASE >> 39, (WINDOW_BASE + MAX_MEMORIES * WINDOW_STRIDE) >> 39
    tables: set[int] = set()
    leaves: set[int] = set()
    mapped = [0] * MAX_MEMORIES

    def table(entry: int) -> int | None:
        addr = entry & _ADDR_MASK
        if entry != addr | _TABLE or not table_next <= addr < state or addr in tables:
            return None
        tables.add(addr)
        return addr

    def walk(addr: int, vbase: int, shift: int) -> str | None:
        for index, entry in enumerate(array("Q", read(addr, PAGE))):
            if entry == 0:
                continue
            vaddr = vbase + (index << shift)
            if shift > 12:
                sub = table(entry)
                if sub is None:
                    return f"a Wasm window's page table at 0x{vaddr:x} is not the host's"
                why = walk(sub, vaddr, shift - 9)
                if why is not None:
                    return why
                continue
            page = entry & _ADDR_MASK
            window, offset = divmod(vaddr - WINDOW_BASE, WINDOW_STRIDE)
            if (
                entry != page | _LEAF
                or not pool_start <= page < lin_next
                or page in leaves
                or not 0 <= window < MAX_MEMORIES
                or offset >= counts[window] * WASM_PAGE
            ):
                return f"Wasm window {window} maps 0x{offset:x} as the host never maps"
            leaves.add(page)
            mapped[window] += 1
        return None

    for index, entry in sorted(roots.items()):
        if not first_root <= index < end_root:
            return f"page-table root entry {index} is neither the runtime's nor a window's"
        root = table(entry)
        if root is None:
            return f"page-table root entry {index} is not the host's"
        why = walk(root, index << 39, 30)
        if why is not None:
            return why
    for window, count in enumerate(counts):
        if mapped[window] != count * PAGES_PER_WASM_PAGE:
            return f"Wasm window {window} does not map its {count} pages"
    return None


class Windows:
    """The host's side of WASM_HOST_GROW for one sandbox's memory. `on_reach`, if given,
    is told the ranges that can hold written pages (pool_reach) before `grow` writes
    beyond the last ones (Sandbox.limit_reset_scan takes them)."""

    def __init__(
        self,
        memory: GuestMemory,
        layout: Layout,
        on_reach: Callable[[list[tuple[int, int]] | None], None] | None = None,
    ) -> None:
        self.memory = memory
        self.pool_start = layout.heap_base + layout.heap_size
        self.state = layout.mem_size - STATE_SIZE
        self._counts = self.state + PAGE  # u32 pages per window
        self._on_reach = on_reach
        if self.state - self.pool_start < 16 * PAGE:
            raise ValueError("no room for Wasm linear memory above the heap: raise memory_size")

    @property
    def watch(self) -> list[tuple[int, int]]:
        """Guest ranges whose restore can unmap pages KVM has mapped (see module doc)."""
        return [(self.state, STATE_SIZE)]

    def _header(self) -> tuple[int, int]:
        view = self.memory.view
        magic, lin_next, table_next = _HEADER.unpack_from(view, self.state)
        if magic != _MAGIC:  # first use: the pool is empty
            return self.pool_start, self.state
        return lin_next, table_next

    def pages(self, window: int) -> int:
        return int(struct.unpack_from("<I", self.memory.view, self._counts + 4 * window)[0])

    def grow(self, window: object, pages: object) -> bool:
        """Maps window `window` up to `pages` Wasm pages. False when the pool is used up
        or `pages` is beyond the Wasm limit; the engine's arguments are checked."""
        if not isinstance(window, int) or not 0 <= window < MAX_MEMORIES:
            raise ValueError(f"memory window {window!r} out of range")
        if not isinstance(pages, int) or pages < 0:
            raise ValueError(f"page count {pages!r} out of range")
        current = self.pages(window)
        if pages <= current:
            return True
        if pages > MAX_PAGES:
            return False
        lin_next, table_next = self._header()
        first, end = current * PAGES_PER_WASM_PAGE, pages * PAGES_PER_WASM_PAGE
        count = end - first
        # Worst case of new tables: a PT per 2 MiB touched, a PD per 1 GiB, a PDPT.
        tables = (count + 511) // 512 + 1 + (count >> 18) + 1 + 1
        lowest = table_next - tables * PAGE  # the lowest page table this grow may take
        if lin_next + count * PAGE > lowest:
            return False
        if self._on_reach is not None:  # before anything is written
            self._on_reach(_reach(lin_next + count * PAGE, lowest, self.memory.size))
        view = self.memory.view
        base = WINDOW_BASE + window * WINDOW_STRIDE
        phys = lin_next
        page = first
        while page < end:
            vaddr = base + page * PAGE
            pt, table_next = self._table(vaddr, table_next)
            run = min(end - page, 512 - (vaddr >> 12) % 512)
            index = (vaddr >> 12) % 512
            entries = array("Q", range(phys | _LEAF, (phys + run * PAGE) | _LEAF, PAGE))
            view[pt + 8 * index : pt + 8 * (index + run)] = entries.tobytes()
            phys += run * PAGE
            page += run
        _HEADER.pack_into(view, self.state, _MAGIC, phys, table_next)
        struct.pack_into("<I", view, self._counts + 4 * window, pages)
        if table_next < lowest and self._on_reach is not None:  # never: the bound holds
            self._on_reach(None)
        return True

    def _table(self, vaddr: int, table_next: int) -> tuple[int, int]:
        """The page table mapping `vaddr`, creating the missing levels."""
        view = self.memory.view
        table = PML4
        for shift in (39, 30, 21):
            slot = table + 8 * ((vaddr >> shift) & 511)
            entry = struct.unpack_from("<Q", view, slot)[0]
            if entry & x86.PTE_PRESENT:
                table = entry & _ADDR_MASK
                continue
            table_next -= PAGE
            view[table_next : table_next + PAGE] = bytes(PAGE)
            struct.pack_into("<Q", view, slot, table_next | _TABLE)
            table = table_next
        return table, table_next

    def translate(self, window: int, addr: int) -> int:
        """The guest-physical address of byte `addr` of a window (mapped pages only)."""
        vaddr = WINDOW_BASE + window * WINDOW_STRIDE + addr
        view = self.memory.view
        table = PML4
        for shift in (39, 30, 21, 12):
            entry = struct.unpack_from("<Q", view, table + 8 * ((vaddr >> shift) & 511))[0]
            if not entry & x86.PTE_PRESENT:
                raise MemoryOutOfBounds(f"0x{addr:x} is not mapped")
            table = entry & _ADDR_MASK
        return table | (vaddr & (PAGE - 1))


class LinearMemory:
    """Host access to one Wasm memory (for WASI): reads and writes bounds-checked against
    its current size; out of bounds raises MemoryOutOfBounds."""

    def __init__(self, windows: Windows, window: int) -> None:
        self._windows = windows
        self._window = window

    @property
    def size(self) -> int:
        return self._windows.pages(self._window) * WASM_PAGE

    def _pieces(self, addr: int, size: int) -> list[tuple[int, int]]:
        if addr < 0 or size < 0 or addr + size > self.size:
            raise MemoryOutOfBounds(f"{size} bytes at 0x{addr:x} outside {self.size} bytes")
        pieces = []
        while size > 0:
            n = min(size, PAGE - (addr & (PAGE - 1)))
            pieces.append((self._windows.translate(self._window, addr), n))
            addr += n
            size -= n
        return pieces

    def read(self, addr: int, size: int) -> bytes:
        view = self._windows.memory.view
        return b"".join(bytes(view[p : p + n]) for p, n in self._pieces(addr, size))

    def write(self, addr: int, data: bytes) -> None:
        view = self._windows.memory.view
        offset = 0
        for p, n in self._pieces(addr, len(data)):
            view[p : p + n] = data[offset : offset + n]
            offset += n
