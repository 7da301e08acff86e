"""The guest memory map and the page tables the host builds, decoded from the template
bytes (no KVM): every page gets exactly the permissions the layout promises."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandbox import SandboxConfig
from sandbox import x86_64 as x86
from sandbox._native import ffi, lib
from sandbox.elf import load_guest
from sandbox.layout import (
    GDT,
    IDT,
    PAGE,
    PAGE_TABLES,
    PML4,
    PREFETCH_GROUP,
    RING0_STACK,
    STUBS,
    TSS,
    Layout,
    Segment,
)

KiB = 1024
MiB = 1024 * KiB

CONFIGS = {
    "default": SandboxConfig(),
    "2MiB": SandboxConfig(memory_size=2 * MiB, stack_size=64 * KiB),
    "64MiB-heap": SandboxConfig(memory_size=64 * MiB, heap_size=1 * MiB, stack_size=1 * MiB),
    "1GiB": SandboxConfig(memory_size=1024 * MiB),
}


@dataclass
class Template:
    layout: Layout
    segments: list[Segment]
    mem: bytearray  # guest memory [0, image_end) as the template fills it


@dataclass(frozen=True)
class Page:
    user: bool
    writable: bool
    executable: bool


def build(guest: Path, config: SandboxConfig) -> Template:
    image = load_guest(guest)
    layout = Layout.for_config(config, image.span)
    segments = image.load(layout.image_base)
    mem = bytearray(layout.image_end)
    for addr, data in layout.build_template(segments):
        mem[addr : addr + len(data)] = data
    return Template(layout, segments, mem)


def walk(mem: bytearray, va: int) -> Page | None:
    """The effective permissions of virtual page `va` by a 4-level walk (SDM 4.5), or
    None if it is not mapped. Also checks the mapping is the identity."""
    table = PML4
    user = writable = True
    nx = False
    for level, shift in enumerate((39, 30, 21, 12)):
        (entry,) = struct.unpack_from("<Q", mem, table + 8 * ((va >> shift) & 511))
        if not entry & x86.PTE_PRESENT:
            return None
        assert not (level < 3 and entry & (1 << 7)), "no large pages expected"
        user &= bool(entry & x86.PTE_USER)
        writable &= bool(entry & x86.PTE_WRITABLE)
        nx |= bool(entry & x86.PTE_NX)
        table = entry & x86.PTE_ADDR_MASK
    assert table == va & ~(PAGE - 1), f"page 0x{va:x} is not identity-mapped"
    return Page(user, writable, not nx)


def pages(start: int, end: int) -> range:
    return range(start & ~(PAGE - 1), end, PAGE)


@pytest.fixture(scope="module", params=list(CONFIGS))
def template(request: pytest.FixtureRequest, demo_elf: Path) -> Template:
    return build(demo_elf, CONFIGS[request.param])


def test_page_zero_and_stack_guard_are_not_mapped(template: Template) -> None:
    layout = template.layout
    assert walk(template.mem, 0) is None
    assert layout.stack_base - layout.guard_page >= PAGE
    for va in pages(layout.guard_page, layout.stack_base):
        assert walk(template.mem, va) is None, hex(va)
    assert walk(template.mem, layout.stack_base) is not None


def test_system_pages_are_supervisor_only(template: Template) -> None:
    for va in pages(PML4, template.layout.page_tables_end):
        page = walk(template.mem, va)
        assert page is not None and not page.user, hex(va)
        if STUBS <= va < RING0_STACK:  # the exception stubs: R-X
            assert page.executable and not page.writable
        else:  # tables and the ring-0 stack: RW-NX
            assert page.writable and not page.executable, hex(va)


def test_no_page_is_user_writable_and_executable(template: Template) -> None:
    mem, layout = template.mem, template.layout
    # All of a small memory; for large ones everything up to the heap and a sample of it.
    end = layout.mem_size if layout.mem_size <= 64 * MiB else layout.heap_base + 4 * MiB
    for va in pages(0, end):
        page = walk(mem, va)
        if page is not None and page.user:
            assert not (page.writable and page.executable), hex(va)


def test_guest_segments(template: Template) -> None:
    mem = template.mem
    code = [s for s in template.segments if s.executable]
    assert code, "the demo guest has a code segment"
    for seg in template.segments:
        for va in pages(seg.addr, seg.addr + seg.mem_size):
            page = walk(mem, va)
            assert page is not None and page.user, hex(va)
            if seg.executable:
                assert page.executable and not page.writable, hex(va)  # R-X
            else:
                assert not page.executable, hex(va)
                assert page.writable == seg.writable, hex(va)
    # The code really is there.
    seg = code[0]
    assert mem[seg.addr : seg.addr + len(seg.data)] == seg.data


def test_data_regions_are_read_write_no_execute(template: Template) -> None:
    layout = template.layout
    for name, start, end in [
        ("output buffer", layout.out_buf, layout.out_buf + layout.out_size),
        ("heap", layout.heap_base, layout.heap_base + min(layout.heap_size, 4 * MiB)),
        ("stack", layout.stack_base, layout.stack_top),
    ]:
        for va in pages(start, end):
            assert walk(template.mem, va) == Page(user=True, writable=True, executable=False), (
                name,
                hex(va),
            )


def test_host_to_guest_buffers_are_read_only_for_the_guest(template: Template) -> None:
    layout = template.layout
    for name, start, end in [
        ("boot info and input buffer", layout.boot_info, layout.in_buf + layout.in_size),
        ("reply buffer", layout.reply_buf, layout.reply_buf + layout.reply_size),
    ]:
        for va in pages(start, end):
            assert walk(template.mem, va) == Page(user=True, writable=False, executable=False), (
                name,
                hex(va),
            )


def test_nothing_beyond_memory_is_mapped(template: Template) -> None:
    layout = template.layout
    mem = template.mem
    for va in (layout.mem_size, layout.mem_size + 2 * MiB, 1 << 30, 1 << 39, (1 << 47) - PAGE):
        assert walk(mem, va) is None, hex(va)
    if layout.heap_base + layout.heap_size < layout.mem_size:  # an explicit heap_size
        assert walk(mem, layout.heap_base + layout.heap_size) is None
        assert walk(mem, layout.mem_size - PAGE) is None


def test_regions_are_ordered_and_inside_memory(template: Template) -> None:
    lay = template.layout
    bounds = [
        PAGE_TABLES,
        lay.page_tables_end,
        lay.guard_page,
        lay.stack_base,
        lay.stack_top,
        lay.boot_info,
        lay.in_buf,
        lay.image_base,
        lay.image_end,
        lay.out_buf,
        lay.reply_buf,
        lay.heap_base,
        lay.heap_base + lay.heap_size,
    ]
    assert bounds == sorted(bounds)
    assert lay.heap_base + lay.heap_size <= lay.mem_size
    assert lay.stack_top % 16 == 0
    assert lay.page_tables_end == PAGE_TABLES + (lay.mem_size // (2 * MiB)) * PAGE
    assert lay.in_buf + lay.in_size <= lay.image_base
    assert lay.region_of(0) == "null page"
    assert lay.region_of(PML4) == "page tables"
    assert lay.region_of(lay.stack_base - 1) == "stack guard page"
    assert lay.region_of(lay.image_base) == "guest image"
    assert lay.region_of(lay.heap_base) == "heap"
    assert lay.region_of(lay.mem_size) == "outside guest memory"


def test_boot_info(template: Template) -> None:
    lay = template.layout
    raw = lay.boot_info_bytes(0x1234_5678_9ABC_DEF0)
    fields = struct.unpack_from("<II12Q", raw)
    assert fields[0] == lib.SBX_ABI_VERSION
    assert fields[1] == ffi.sizeof("struct sbx_boot_info") <= len(raw)
    assert fields[2:] == (
        lay.mem_size,
        lay.in_buf,
        lay.in_size,
        lay.out_buf,
        lay.out_size,
        lay.reply_buf,
        lay.reply_size,
        lay.heap_base,
        lay.heap_size,
        lay.stack_top,
        lay.stack_top - lay.stack_base,
        0x1234_5678_9ABC_DEF0,
    )


def test_idt_gates_are_ring0_only(template: Template) -> None:
    """`int n` from ring 3 must be a #GP, not a way into the exception stubs."""
    for vector in range(x86.NUM_EXCEPTION_VECTORS):
        gate = template.mem[IDT + 16 * vector : IDT + 16 * vector + 16]
        low, selector, _, access, mid, high, _ = struct.unpack("<HHBBHII", gate)
        assert access & 0x80, "present"
        assert (access >> 5) & 3 == 0, f"vector {vector} has DPL {(access >> 5) & 3}"
        assert selector == x86.SEL_KERNEL_CODE
        assert low | mid << 16 | high << 32 == STUBS + 16 * vector


def test_tss_io_bitmap_opens_only_the_guest_ports(template: Template) -> None:
    mem = template.mem
    (iomap,) = struct.unpack_from("<H", mem, TSS + x86.TSS_IOMAP_BASE_OFFSET)
    bitmap = mem[TSS + iomap : TSS + iomap + 32]

    def open_to_ring3(port: int) -> bool:
        return not bitmap[port // 8] >> (port % 8) & 1

    for port in (lib.SBX_PORT_RETURN, lib.SBX_PORT_HOST_CALL, lib.SBX_PORT_PRINT):
        assert all(open_to_ring3(port + i) for i in range(4))
    assert not any(open_to_ring3(lib.SBX_PORT_TRAP + i) for i in range(4))
    for port in (0, 0x20, 0x60, 0x80, 0xCF, lib.SBX_PORT_FIRST - 1, lib.SBX_PORT_LAST + 1, 255):
        assert not open_to_ring3(port), port
    # The GDT's user segments are DPL 3, the kernel ones DPL 0.
    descriptors = struct.unpack_from("<5Q", mem, GDT)
    dpl = [(d >> 45) & 3 for d in descriptors[1:]]
    assert dpl == [0, 0, 3, 3]


def test_layout_that_does_not_fit() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        Layout.compute(
            mem_size=2 * MiB,
            image_size=1 * MiB,
            in_size=256 * KiB,
            out_size=256 * KiB,
            stack_size=256 * KiB,
            heap_size=None,
        )
    with pytest.raises(ValueError, match="does not fit"):
        Layout.compute(
            mem_size=4 * MiB,
            image_size=64 * KiB,
            in_size=64 * KiB,
            out_size=64 * KiB,
            stack_size=64 * KiB,
            heap_size=4 * MiB,
        )
    with pytest.raises(ValueError):
        Layout.compute(
            mem_size=2 * MiB * 513,
            image_size=PAGE,
            in_size=PAGE,
            out_size=16 * KiB,
            stack_size=PAGE,
            heap_size=None,
        )


def test_first_call_pages_cover_what_a_first_call_touches(template: Template) -> None:
    """Each range starts on a prefetch-group boundary (KVM prefetches a group's pages
    from its first page on, up to the first page not present and writable in the host)
    and ends at the last page a first call touches: populating more only costs copies."""
    lay = template.layout
    touched = [lay.stack_top - PAGE, lay.boot_info, lay.in_buf, lay.image_base, lay.out_buf]
    ranges = lay.first_call_pages
    for addr in touched:
        assert any(start <= addr < start + size for start, size, _ in ranges), hex(addr)
    for start, size, write in ranges:
        assert write
        assert start % PREFETCH_GROUP == 0
        assert size % PAGE == 0 and size <= lay.mem_size - start
    ends = {start + size for start, size, _ in ranges}
    last_touched = {
        min(lay.in_buf + PAGE, lay.mem_size),
        min(lay.out_buf + PAGE, lay.mem_size),
    }
    assert {(e + PAGE - 1) & ~(PAGE - 1) for e in last_touched} >= ends
