"""The guest memory map: every guest address the host uses is computed here.

Guest memory is one region at guest-physical 0, identity-mapped (guest virtual ==
guest physical), with 4 KiB pages so that every region gets its own permissions:

    0x0000_0000  +-------------------------------+
                 | null page           unmapped  |  NULL dereferences fault
    0x0000_1000  | PML4                S  RW NX  |  (S = supervisor only: ring 3
    0x0000_2000  | PDPT                S  RW NX  |   gets #PF on any access)
    0x0000_3000  | PD                  S  RW NX  |  memory <= 1 GiB: one PD
    0x0000_4000  | GDT + TSS + I/O map S  RW NX  |
    0x0000_5000  | IDT                 S  RW NX  |
    0x0000_6000  | exception stubs     S  R  X   |  report vector/RIP/CR2, one exit
    0x0000_7000  | ring-0 stack        S  RW NX  |  2 pages, RSP0 = 0x9000
    0x0000_9000  | page tables (PT)    S  RW NX  |  one page per 2 MiB of memory
                 | restore trampoline  U  R  X   |  host-written (trampoline.py)
                 | stack guard 64 KiB  unmapped  |  stack overflow faults here
                 | stack               U  RW NX  |  grows down towards the guard
                 | boot info           U  R  NX  |  struct sbx_boot_info, and in the
                 | input buffer        U  R  NX  |   same page: host -> guest calls
                 | guest image         U  ...       |  per ELF segment: R X, R NX, RW NX
                 | output buffer       U  RW NX  |  guest -> host records
                 | reply buffer        U  R  NX  |  host -> guest host-call replies
                 | heap                U  RW NX  |  up to mem_size (or heap_size)
                 | (rest)              unmapped  |  with heap_size: the Wasm engine's pool
    mem_size     +-------------------------------+     of linear-memory pages (wasm/windows.py)

Wasm linear memories are mapped by the host outside this identity map, at 1 TiB and up
(guests/wasm/wasm_abi.h), behind unmapped guard space.

The order is chosen for spawn cost: each page a guest touches for the first time costs
a fault in the hypervisor (~20 us under nested KVM), so everything a call touches (stack
top, boot info, the call record, the guest's code and data, the result record) sits in
as few pages as possible, all inside the first 2 MiB (one page-table page), and in two
groups of 8 pages that the host prefaults (see Layout.first_call_pages).

The system tables, the boot info and the guest image are the same for every sandbox of
one guest and config: the "template", written once into a sealed memfd that sandboxes map
copy-on-write. Each sandbox then writes its own random seed into the boot info.
"""

from __future__ import annotations

import functools
import struct
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import x86_64 as x86
from ._native import ffi, lib

if TYPE_CHECKING:
    from .config import SandboxConfig

PAGE = x86.PAGE_SIZE

NULL_PAGE = 0x0000
PML4 = 0x1000
PDPT = 0x2000
PD = 0x3000
GDT = 0x4000
IDT = 0x5000
STUBS = 0x6000
RING0_STACK = 0x7000
RING0_STACK_TOP = 0x9000
PAGE_TABLES = 0x9000

MAX_MEMORY = 1 << 30  # one page directory
STUB_SIZE = 16
STUB_COMMON = STUBS + x86.NUM_EXCEPTION_VECTORS * STUB_SIZE
TSS = GDT + 0x100
STACK_GUARD_SIZE = 16 * PAGE  # unmapped: a frame of up to 64 KiB cannot jump over it
PREFETCH_GROUP = 8 * PAGE  # KVM's shadow MMU maps up to 8 aligned neighbours per fault
BOOT_INFO_SIZE = 256  # room for struct sbx_boot_info; the input buffer follows it

# Ports ring 3 may use; the trap port is for the ring-0 stubs only.
GUEST_PORTS = frozenset(range(lib.SBX_PORT_FIRST, lib.SBX_PORT_LAST + 1)) - frozenset(
    range(lib.SBX_PORT_TRAP, lib.SBX_PORT_TRAP + 4)
)

# The tail shared by every stub (see x86_64 for the frame, SDM 6.14.1): pop the vector and
# error code the stub pushed, load the report into registers, exit through the trap port,
# and halt for good (the host never resumes a trapped vCPU).
STUB_COMMON_CODE = bytes.fromhex(
    "58"  # pop rax            ; vector
    "5b"  # pop rbx            ; error code
    "488b0c24"  # mov rcx, [rsp]     ; RIP of the faulting instruction
    "488b742418"  # mov rsi, [rsp+24]  ; RSP at the fault
    "0f20d2"  # mov rdx, cr2       ; fault address of a #PF
    "e7"
    + f"{lib.SBX_PORT_TRAP:02x}"  # out SBX_PORT_TRAP, eax
    + "f4"  # hlt
    + "ebfd"  # jmp back to hlt
)


def page_align_up(n: int) -> int:
    return (n + PAGE - 1) & ~(PAGE - 1)


def _stub(vector: int) -> bytes:
    code = b"" if vector in x86.VECTORS_WITH_ERROR_CODE else b"\x6a\x00"  # push 0
    code += b"\x6a" + bytes([vector])  # push vector
    here = STUBS + vector * STUB_SIZE + len(code) + 5
    code += b"\xe9" + struct.pack("<i", STUB_COMMON - here)  # jmp common
    return code.ljust(STUB_SIZE, b"\xcc")


@dataclass(frozen=True)
class Segment:
    """One loadable piece of the guest image, at its final guest address."""

    addr: int
    data: bytes
    mem_size: int
    readable: bool = True
    writable: bool = False
    executable: bool = False


@dataclass(frozen=True)
class Layout:
    """Addresses of one sandbox's regions (see the module docstring)."""

    mem_size: int
    page_tables_end: int
    trampoline: int
    boot_info: int
    image_base: int
    image_end: int
    in_buf: int
    in_size: int
    reply_buf: int
    reply_size: int
    out_buf: int
    out_size: int
    heap_base: int
    heap_size: int
    guard_page: int
    stack_base: int
    stack_top: int

    @classmethod
    def compute(
        cls,
        *,
        mem_size: int,
        image_size: int,
        in_size: int,
        out_size: int,
        stack_size: int,
        heap_size: int | None,
    ) -> Layout:
        """Places the regions; raises ValueError if they do not fit in `mem_size`."""
        if mem_size > MAX_MEMORY or mem_size % (2 << 20):
            raise ValueError("memory size must be a multiple of 2 MiB, at most 1 GiB")
        n_pt = mem_size // (2 << 20)
        page_tables_end = PAGE_TABLES + n_pt * PAGE
        trampoline = page_tables_end
        guard_page = trampoline + PAGE
        stack_base = guard_page + STACK_GUARD_SIZE
        stack_top = stack_base + stack_size
        boot_info = stack_top
        in_buf = boot_info + BOOT_INFO_SIZE
        # Group-aligned, so that a small image and the first page of the output buffer
        # share one prefetch group (see first_call_pages).
        image_base = (boot_info + in_size + PREFETCH_GROUP - 1) & ~(PREFETCH_GROUP - 1)
        image_end = image_base + page_align_up(image_size)
        out_buf = image_end
        reply_buf = out_buf + out_size
        heap_base = reply_buf + in_size
        room = mem_size - heap_base
        if heap_size is None:
            heap_size = room
        if room < heap_size or heap_size < 0:
            need = heap_base + heap_size
            raise ValueError(
                f"the guest does not fit: image {image_size} bytes + buffers + heap "
                f"{heap_size} + stack {stack_size} need {need} bytes of guest memory, "
                f"memory_size is {mem_size}; raise memory_size or lower the others"
            )
        return cls(
            mem_size=mem_size,
            page_tables_end=page_tables_end,
            trampoline=trampoline,
            boot_info=boot_info,
            image_base=image_base,
            image_end=image_end,
            in_buf=in_buf,
            in_size=in_size - BOOT_INFO_SIZE,
            reply_buf=reply_buf,
            reply_size=in_size,
            out_buf=out_buf,
            out_size=out_size,
            heap_base=heap_base,
            heap_size=heap_size,
            guard_page=guard_page,
            stack_base=stack_base,
            stack_top=stack_top,
        )

    @classmethod
    def for_config(cls, config: SandboxConfig, image_size: int) -> Layout:
        """The layout of a guest image of `image_size` bytes with `config`'s sizes (what
        a template builds and what a snapshot file must hold). Raises ValueError if it
        does not fit."""
        return cls.compute(
            mem_size=config.memory_size,
            image_size=image_size,
            in_size=config.input_buffer_size,
            out_size=config.output_buffer_size,
            stack_size=config.stack_size,
            heap_size=config.heap_size,
        )

    def region_of(self, addr: int) -> str:
        """Names the region holding guest address `addr` (for trap messages)."""
        regions = [
            (NULL_PAGE, PAGE, "null page"),
            (PML4, GDT, "page tables"),
            (GDT, STUBS, "descriptor tables"),
            (STUBS, RING0_STACK, "exception stubs"),
            (RING0_STACK, RING0_STACK_TOP, "ring-0 stack"),
            (PAGE_TABLES, self.page_tables_end, "page tables"),
            (self.trampoline, self.trampoline + PAGE, "restore trampoline"),
            (self.guard_page, self.stack_base, "stack guard page"),
            (self.stack_base, self.stack_top, "stack"),
            (self.boot_info, self.in_buf, "boot info"),
            (self.in_buf, self.boot_info + self.in_size + BOOT_INFO_SIZE, "input buffer"),
            (self.image_base, self.image_end, "guest image"),
            (self.out_buf, self.reply_buf, "output buffer"),
            (self.reply_buf, self.heap_base, "reply buffer"),
            (self.heap_base, self.heap_base + self.heap_size, "heap"),
        ]
        for start, end, name in regions:
            if start <= addr < end:
                return name
        return "unmapped memory" if addr < self.mem_size else "outside guest memory"

    def build_template(self, segments: list[Segment]) -> list[tuple[int, bytes]]:
        """The initial contents of guest memory shared by every sandbox of this layout,
        as (guest address, bytes) pieces: system and page tables, and the guest image;
        the rest starts zero. The boot info is written per sandbox (it carries the
        random seed)."""
        image = bytearray(self.image_end - self.image_base)
        for seg in segments:
            offset = seg.addr - self.image_base
            if offset < 0 or offset + len(seg.data) > len(image):
                raise ValueError(f"segment at 0x{seg.addr:x} outside the guest image")
            image[offset : offset + len(seg.data)] = seg.data
        return [(0, self.system_area(segments)), (self.image_base, bytes(image))]

    def system_area(self, segments: Sequence[Segment] = ()) -> bytes:
        """Guest memory below `page_tables_end`: page tables (the guest image's leaf
        entries from `segments`), descriptor tables, TSS, exception stubs."""
        mem = bytearray(self.page_tables_end)
        n_pages = self.mem_size // PAGE

        # Leaf page-table entries, one per 4 KiB page; zero = not present.
        leaf = x86.PTE_PRESENT | x86.PTE_ACCESSED | x86.PTE_DIRTY
        ptes = array("Q", bytes(8 * n_pages))

        def map_range(start: int, end: int, flags: int) -> None:
            first, last = start // PAGE, page_align_up(end) // PAGE
            ptes[first:last] = array("Q", range(first * PAGE | flags, last * PAGE | flags, PAGE))

        sup_data = leaf | x86.PTE_WRITABLE | x86.PTE_NX
        user_ro = leaf | x86.PTE_USER | x86.PTE_NX
        user_rw = user_ro | x86.PTE_WRITABLE
        map_range(PML4, STUBS, sup_data)
        map_range(STUBS, RING0_STACK, leaf)  # supervisor, read-only, executable
        map_range(RING0_STACK, self.page_tables_end, sup_data)
        map_range(self.trampoline, self.trampoline + PAGE, leaf | x86.PTE_USER)  # R-X
        map_range(self.stack_base, self.stack_top, user_rw)  # the guard page stays unmapped
        map_range(self.boot_info, self.image_end, user_ro)  # boot info, input, image gaps
        for seg in segments:
            flags = leaf | x86.PTE_USER
            if seg.writable:
                flags |= x86.PTE_WRITABLE
            if not seg.executable:
                flags |= x86.PTE_NX
            map_range(seg.addr, seg.addr + seg.mem_size, flags)
        map_range(self.out_buf, self.reply_buf, user_rw)
        map_range(self.reply_buf, self.heap_base, user_ro)
        map_range(self.heap_base, self.heap_base + self.heap_size, user_rw)
        pt_bytes = ptes.tobytes()
        mem[PAGE_TABLES : PAGE_TABLES + len(pt_bytes)] = pt_bytes

        # Upper levels: user-accessible and writable; the leaf entries decide.
        table = x86.PTE_PRESENT | x86.PTE_WRITABLE | x86.PTE_USER | x86.PTE_ACCESSED
        struct.pack_into("<Q", mem, PML4, PDPT | table)
        struct.pack_into("<Q", mem, PDPT, PD | table)
        pd = array("Q", range(PAGE_TABLES | table, self.page_tables_end | table, PAGE))
        mem[PD : PD + 8 * len(pd)] = pd.tobytes()

        # Descriptor tables, TSS and the ring-0 exception stubs.
        tss = x86.tss(RING0_STACK_TOP, GUEST_PORTS)
        mem[TSS : TSS + len(tss)] = tss
        gdt = x86.gdt(TSS, len(tss) - 1)
        mem[GDT : GDT + len(gdt)] = gdt
        for vector in range(x86.NUM_EXCEPTION_VECTORS):
            gate = x86.idt_gate(STUBS + vector * STUB_SIZE)
            mem[IDT + 16 * vector : IDT + 16 * (vector + 1)] = gate
            stub = _stub(vector)
            mem[STUBS + vector * STUB_SIZE : STUBS + (vector + 1) * STUB_SIZE] = stub
        mem[STUB_COMMON : STUB_COMMON + len(STUB_COMMON_CODE)] = STUB_COMMON_CODE
        return bytes(mem)

    def overlapping_regions(self) -> tuple[str, str] | None:
        """Two regions of this layout that overlap (None if none do): a layout read from
        a file is untrusted."""
        regions = sorted(
            (start, start + size, name)
            for start, size, name in (
                (PML4, self.page_tables_end - PML4, "system area"),
                (self.trampoline, PAGE, "restore trampoline"),
                (self.stack_base, self.stack_top - self.stack_base, "stack"),
                (self.boot_info, BOOT_INFO_SIZE + self.in_size, "boot info and input buffer"),
                (self.image_base, self.image_end - self.image_base, "guest image"),
                (self.out_buf, self.out_size, "output buffer"),
                (self.reply_buf, self.reply_size, "reply buffer"),
                (self.heap_base, self.heap_size, "heap"),
            )
        )
        for (_, end, first), (start, _, second) in zip(regions, regions[1:], strict=False):
            if start < end:
                return first, second
        return None

    def stable_ranges(self, read: Callable[[int, int], bytes]) -> list[tuple[int, int]]:
        """(address, length) of the pages nobody writes once the memory is mapped: the
        system tables but the PML4 (the Wasm windows' host code adds entries to it) and
        the ring-0 stack (a trap writes there), the identity page tables, and the guest
        image's pages its page-table entries make read-only (`read(address, length)`
        reads the memory's image)."""
        ranges = [(PDPT, RING0_STACK - PDPT), (PAGE_TABLES, self.page_tables_end - PAGE_TABLES)]
        first, last = self.image_base // PAGE, self.image_end // PAGE
        entries = array("Q", read(PAGE_TABLES + 8 * first, 8 * (last - first)))
        for page, entry in enumerate(entries, first):
            if entry & x86.PTE_PRESENT and not entry & x86.PTE_WRITABLE:
                if ranges and ranges[-1][0] + ranges[-1][1] == page * PAGE:
                    ranges[-1] = (ranges[-1][0], ranges[-1][1] + PAGE)
                else:
                    ranges.append((page * PAGE, PAGE))
        return ranges

    def check_system_memory(
        self, memory: bytes, roots: Callable[[dict[int, int]], str | None] | None = None
    ) -> str | None:
        """Why `memory`, the first `page_tables_end` bytes of a guest's memory, are not
        the system area this runtime builds for this layout (None if they are): the
        page tables, descriptor tables, TSS (with its I/O bitmap) and exception stubs
        are host-owned, so a state loaded from a file must hold exactly them. Only the
        guest image's leaf entries depend on the guest's ELF: each must map its own page
        for ring 3, never writable and executable at once. The ring-0 stack's contents
        are free (only a trap writes there). PML4 entries the runtime leaves empty are
        refused, unless `roots` is given: it is handed those entries (index -> entry)
        and says why they are wrong (the Wasm windows' check: wasm/windows.py)."""
        expected = self.system_area()
        if len(memory) != len(expected):
            return "the system area has the wrong size"
        root_page = slice(PML4, PML4 + PAGE)
        if (
            memory[:PML4] != expected[:PML4]
            or memory[PDPT:RING0_STACK] != expected[PDPT:RING0_STACK]
        ):
            return "the page-table roots, descriptor tables, TSS or exception stubs differ"
        if memory[root_page] != expected[root_page]:
            ours, theirs = array("Q", memory[root_page]), array("Q", expected[root_page])
            added = {
                i: e for i, (e, want) in enumerate(zip(ours, theirs, strict=True)) if e != want
            }
            if any(theirs[i] for i in added):
                return "the page-table roots, descriptor tables, TSS or exception stubs differ"
            if roots is None:
                return (
                    "it maps memory beyond the runtime's own page tables (a Wasm or Python "
                    "sandbox's snapshot? sandbox.wasm.load_snapshot or "
                    "sandbox.python.load_snapshot reads those)"
                )
            why = roots(added)
            if why is not None:
                return why
        ours = array("Q", memory[PAGE_TABLES:])
        theirs = array("Q", expected[PAGE_TABLES:])
        image = range(self.image_base // PAGE, self.image_end // PAGE)
        for page, (entry, want) in enumerate(zip(ours, theirs, strict=True)):
            if entry == want:
                continue
            if page not in image:
                return f"the page-table entry of page 0x{page * PAGE:x} is not the runtime's"
            leaf = x86.PTE_PRESENT | x86.PTE_ACCESSED | x86.PTE_DIRTY | x86.PTE_USER
            flags = entry & ~x86.PTE_ADDR_MASK
            writable_code = flags & x86.PTE_WRITABLE and not flags & x86.PTE_NX
            if (
                entry & x86.PTE_ADDR_MASK != page * PAGE
                or flags & ~(leaf | x86.PTE_WRITABLE | x86.PTE_NX) != 0
                or flags & leaf != leaf
                or writable_code
            ):
                return f"guest image page 0x{page * PAGE:x} is mapped as the runtime never maps"
        return None

    @functools.cached_property
    def first_call_pages(self) -> tuple[tuple[int, int, bool], ...]:
        """The (address, size, write) ranges the host prefaults before a first call.

        Each page a guest touches for the first time costs one fault in the hypervisor
        (~20 us nested), unless KVM's shadow MMU maps it with a neighbour's fault: on a
        fault it also maps the other pages of the same aligned group of PREFETCH_GROUP
        pages, from the group's first page up to the first page not present and writable
        in the host. So what a call touches (stack top, boot info and call record, the
        guest image, the result record) is populated writable in the host from the start
        of its group, and a first call costs one fault per group instead of one per page.
        A range ends at the last page a first call touches, not at the end of its group:
        each page populated writable is a private copy (~1 us to make, 4 KiB of RSS).
        """
        hot = [
            (self.stack_top - PAGE, self.in_buf + PAGE),  # stack top, boot info, call record
            (self.image_base, self.out_buf + PAGE),  # guest image, result record
        ]
        ranges: list[tuple[int, int, bool]] = []
        for start, end in hot:
            start &= ~(PREFETCH_GROUP - 1)
            end = page_align_up(end)
            if ranges and start <= ranges[-1][0] + ranges[-1][1]:
                first = ranges.pop()[0]
                start = first
            ranges.append((start, min(end, self.mem_size) - start, True))
        return tuple(ranges)

    def boot_info_bytes(self, random_seed: int) -> bytes:
        """The `struct sbx_boot_info` for this layout."""
        assert ffi.sizeof("struct sbx_boot_info") <= BOOT_INFO_SIZE
        info = ffi.new("struct sbx_boot_info *")
        info.abi_version = lib.SBX_ABI_VERSION
        info.size = ffi.sizeof("struct sbx_boot_info")
        info.mem_size = self.mem_size
        info.in_buf, info.in_size = self.in_buf, self.in_size
        info.out_buf, info.out_size = self.out_buf, self.out_size
        info.reply_buf, info.reply_size = self.reply_buf, self.reply_size
        info.heap_base, info.heap_size = self.heap_base, self.heap_size
        info.stack_top, info.stack_size = self.stack_top, self.stack_top - self.stack_base
        info.random_seed = random_seed
        return bytes(ffi.buffer(info))


GDT_LIMIT = 7 * 8 - 1  # five descriptors + a 16-byte TSS descriptor
IDT_LIMIT = x86.NUM_EXCEPTION_VECTORS * 16 - 1
