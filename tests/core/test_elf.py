"""The guest ELF loader on real and crafted bytes (no KVM): every defect is a
GuestAbiMismatch with a message that says what is wrong, and nothing else escapes."""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from sandbox import GuestAbiMismatch, GuestNotFound, Sandbox, Signature, Tag
from sandbox.abi import ABI_VERSION
from sandbox.elf import EHDR, PF_W, PF_X, PHDR, PT_LOAD, SHDR, GuestImage, load_guest, parse_guest

# Offsets of ELF64 header fields (System V gABI).
E_TYPE, E_MACHINE, E_PHOFF, E_SHOFF = 16, 18, 32, 40
E_PHNUM, E_SHNUM, E_SHSTRNDX = 56, 60, 62

DEMO_FUNCTIONS = {
    "add",
    "echo",
    "echo_bytes",
    "fib",
    "spin",
    "counter",
    "call_host",
    "random_u64",
    "hello",
    "print_lines",
    "format_f64",
    "heap_check",
    "echo_i32",
    "echo_u32",
    "echo_i64",
    "echo_u64",
    "echo_f32",
    "echo_f64",
    "echo_bool",
    "noop",
    "sum_many",
    "fault",
}


def patched(data: bytes, offset: int, fmt: str, *values: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


def phdrs(data: bytes) -> list[tuple[int, tuple[int, ...]]]:
    """(file offset, fields) of each program header."""
    fields = EHDR.unpack_from(data)
    phoff, phnum = fields[5], fields[10]
    return [
        (phoff + i * PHDR.size, PHDR.unpack_from(data, phoff + i * PHDR.size)) for i in range(phnum)
    ]


def mismatch(data: bytes) -> str:
    with pytest.raises(GuestAbiMismatch) as info:
        parse_guest(data, "crafted.elf")
    assert str(info.value).startswith("crafted.elf: ")
    return str(info.value)


# -- the real guest -------------------------------------------------------------------------


def test_demo_parses(demo_bytes: bytes) -> None:
    image = parse_guest(demo_bytes)
    assert set(image.functions) >= DEMO_FUNCTIONS
    assert image.functions["add"] == Signature("add", (Tag.I32, Tag.I32), Tag.I32)
    assert image.functions["format_f64"] == Signature("format_f64", (Tag.STR, Tag.F64), Tag.STR)
    assert image.functions["sum_many"].params == (Tag.I64,) * 32
    assert image.functions["noop"].ret is Tag.VOID
    assert image.span % 4096 == 0
    assert any(v <= image.entry < v + m and f & PF_X for v, _, m, f in image.segments)
    for _, _, _, flags in image.segments:
        assert not (flags & PF_W and flags & PF_X)
    assert image.relocations, "a static PIE has R_X86_64_RELATIVE relocations"


def test_load_applies_relocations(demo_bytes: bytes) -> None:
    image = parse_guest(demo_bytes)
    for base in (0x10_0000, 0x40_0000):
        segments = image.load(base)
        memory = bytearray(image.span)
        for seg in segments:
            memory[seg.addr - base : seg.addr - base + len(seg.data)] = seg.data
        for vaddr, addend in image.relocations:
            assert struct.unpack_from("<Q", memory, vaddr)[0] == base + addend


def test_load_guest_from_file(demo_elf: Path) -> None:
    image = load_guest(demo_elf)
    assert isinstance(image, GuestImage) and image.path == str(demo_elf)
    with pytest.raises(FileNotFoundError):
        load_guest(demo_elf.parent / "does-not-exist.elf")


# -- not a guest ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data", [b"", b"\x7f", b"\x7fEL", b"MZ\x90\x00" + bytes(200), b"#!/bin/sh\n"]
)
def test_not_elf(data: bytes) -> None:
    assert "ELF" in mismatch(data)


def test_truncated_at_every_interesting_length(demo_bytes: bytes) -> None:
    """Any prefix of a real guest is refused as a mismatch, never with another error."""
    lengths = set(range(0, 600)) | set(range(0, len(demo_bytes), 37))
    fields = EHDR.unpack_from(demo_bytes)
    shoff, shnum = fields[6], fields[12]
    for k in range(shnum + 1):  # around every section header
        lengths.update(range(shoff + k * SHDR.size - 2, shoff + k * SHDR.size + 3))
    lengths.update(range(len(demo_bytes) - 64, len(demo_bytes)))
    for length in sorted(n for n in lengths if 0 <= n < len(demo_bytes)):
        with pytest.raises(GuestAbiMismatch):
            parse_guest(demo_bytes[:length])


def test_wrong_machine(demo_bytes: bytes) -> None:
    message = mismatch(patched(demo_bytes, E_MACHINE, "<H", 183))  # EM_AARCH64
    assert "machine 183" in message and "x86-64" in message


def test_32_bit_or_big_endian(demo_bytes: bytes) -> None:
    assert "64-bit" in mismatch(patched(demo_bytes, 4, "B", 1))
    assert "little-endian" in mismatch(patched(demo_bytes, 5, "B", 2))


def test_not_a_static_pie(demo_bytes: bytes) -> None:
    assert "static PIE" in mismatch(patched(demo_bytes, E_TYPE, "<H", 2))  # ET_EXEC
    assert "static PIE" in mismatch(patched(demo_bytes, E_TYPE, "<H", 1))  # ET_REL


def test_writable_and_executable_segment(demo_bytes: bytes) -> None:
    offset = next(off for off, p in phdrs(demo_bytes) if p[0] == PT_LOAD and p[1] & PF_X)
    assert "W^X" in mismatch(patched(demo_bytes, offset + 4, "<I", 7))


def test_dynamically_linked(demo_bytes: bytes) -> None:
    offset, _ = phdrs(demo_bytes)[-1]
    message = mismatch(patched(demo_bytes, offset, "<I", 3))  # PT_INTERP
    assert "static" in message


def test_thread_local_storage(demo_bytes: bytes) -> None:
    offset, _ = phdrs(demo_bytes)[-1]
    assert "PT_TLS" in mismatch(patched(demo_bytes, offset, "<I", 7))


def test_entry_outside_code(demo_bytes: bytes) -> None:
    assert "entry point" in mismatch(patched(demo_bytes, 24, "<Q", 0x7FFF_0000))


def test_other_abi_version(abi99_guest: Path) -> None:
    with pytest.raises(GuestAbiMismatch) as info:
        load_guest(abi99_guest)
    message = str(info.value)
    assert "99" in message and f"version {ABI_VERSION}" in message
    assert str(abi99_guest) in message
    # Sandbox refuses it the same way, before touching KVM.
    with pytest.raises(GuestAbiMismatch):
        Sandbox(abi99_guest)


def test_stripped_guest_still_works(demo_elf: Path, tmp_path: Path) -> None:
    """`strip` drops symbols but keeps the section headers and the sbx_funcs table,
    which is all the loader needs."""
    strip = shutil.which("strip")
    if strip is None:
        pytest.skip("no `strip` here (install binutils)")
    stripped = tmp_path / "stripped.elf"
    shutil.copy(demo_elf, stripped)
    subprocess.run([strip, str(stripped)], check=True)
    assert stripped.stat().st_size < demo_elf.stat().st_size
    assert load_guest(stripped).functions == load_guest(demo_elf).functions


def test_no_section_headers(demo_bytes: bytes) -> None:
    # What `llvm-objcopy --strip-sections` or `sstrip` produce.
    data = patched(demo_bytes, E_SHOFF, "<Q", 0)
    data = patched(data, E_SHNUM, "<HH", 0, 0)
    message = mismatch(data)
    assert "section headers" in message and "strip" in message


@pytest.mark.parametrize(
    ("section", "expected"), [("sbx_funcs", "exports no functions"), (".note.sbx", "ABI note")]
)
def test_sections_removed(demo_elf: Path, tmp_path: Path, section: str, expected: str) -> None:
    strip = shutil.which("strip")
    if strip is None:
        pytest.skip("no `strip` here (install binutils)")
    path = tmp_path / "cut.elf"
    shutil.copy(demo_elf, path)
    subprocess.run([strip, "-R", section, str(path)], check=True)
    with pytest.raises(GuestAbiMismatch, match=expected):
        load_guest(path)


def test_many_section_headers(demo_bytes: bytes) -> None:
    count = 5000
    data = bytearray(demo_bytes)
    table = len(data)
    data += bytes(count * SHDR.size)
    struct.pack_into("<Q", data, E_SHOFF, table)
    struct.pack_into("<HH", data, E_SHNUM, count, 4500)
    # Regression: this raised IndexError (only 4096 headers were read).
    assert "section headers" in mismatch(bytes(data))


def test_fuzzed_guests_only_raise_mismatch(demo_bytes: bytes) -> None:
    """Random corruption of the real guest: the loader accepts it or refuses it with
    GuestAbiMismatch; it never raises anything else and never loops."""
    rng = random.Random(20260525)
    fields = EHDR.unpack_from(demo_bytes)
    shoff, shnum = fields[6], fields[12]
    # Headers, notes, dynamic section and section headers: where the parser looks.
    hot = list(range(0, 0x400)) + list(range(shoff, shoff + shnum * SHDR.size))
    extremes = [0, 1, 0xFF, 0xFFFF, 0x7FFF_FFFF, 0xFFFF_FFFF, 2**63 - 1, 2**64 - 1, 0x1000, 64]
    outcomes = {"accepted": 0, "refused": 0}
    for i in range(600):
        data = bytearray(demo_bytes)
        for _ in range(rng.randint(1, 6)):
            if i % 3 == 0:  # a random byte anywhere
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif i % 3 == 1:  # a flipped bit where it matters
                data[rng.choice(hot)] ^= 1 << rng.randrange(8)
            else:  # an extreme value in a header field
                size = rng.choice([2, 4, 8])
                at = rng.choice(hot)
                data[at : at + size] = (rng.choice(extremes) & ((1 << (8 * size)) - 1)).to_bytes(
                    size, "little"
                )
        try:
            image = parse_guest(bytes(data[: len(demo_bytes)]))
        except GuestAbiMismatch:
            outcomes["refused"] += 1
            continue
        outcomes["accepted"] += 1
        if image.span <= 64 << 20:
            image.load(0x10_0000)  # what is accepted must also load
    assert outcomes["refused"] > 100 and outcomes["accepted"] > 50, outcomes


def test_guest_not_found_is_file_not_found() -> None:
    with pytest.raises(GuestNotFound) as info:
        Sandbox("no-such-guest")
    assert isinstance(info.value, FileNotFoundError)
    assert "no-such-guest" in str(info.value)
