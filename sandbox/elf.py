"""The guest ELF loader: static-PIE x86-64 executables built with the guest SDK.

Accepted: PT_LOAD segments (never writable and executable at once), PT_DYNAMIC with
R_X86_64_RELATIVE relocations only, PT_NOTE with the SBX ABI-version note, and the
GNU stack/property/relro markers. Everything else is refused with a message that says
what is wrong. Parsing is from a bytes object with bounds checks on every offset.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._native import lib
from .abi import ABI_VERSION, FUNC_DESC, Signature, parse_function_table
from .errors import GuestAbiMismatch
from .layout import PAGE, Segment, page_align_up

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
PHDR = struct.Struct("<IIQQQQQQ")
SHDR = struct.Struct("<IIQQQQIIQQ")
DYN = struct.Struct("<qQ")
RELA = struct.Struct("<QQq")
NOTE = struct.Struct("<III")

ET_DYN = 3
EM_X86_64 = 62
PT_LOAD, PT_DYNAMIC, PT_INTERP, PT_NOTE, PT_TLS = 1, 2, 3, 4, 7
PT_GNU_EH_FRAME, PT_GNU_STACK, PT_GNU_RELRO, PT_GNU_PROPERTY = (
    0x6474E550,
    0x6474E551,
    0x6474E552,
    0x6474E553,
)
PF_X, PF_W, PF_R = 1, 2, 4
DT_NULL, DT_NEEDED, DT_PLTRELSZ, DT_RELA, DT_RELASZ, DT_RELAENT, DT_REL, DT_JMPREL = (
    0,
    1,
    2,
    7,
    8,
    9,
    17,
    23,
)
DT_TEXTREL = 22
R_X86_64_NONE, R_X86_64_RELATIVE = 0, 8
FUNCS_SECTION = b"sbx_funcs"
MAX_IMAGE_SIZE = 256 << 20
MAX_SECTIONS = 4096


@dataclass(frozen=True)
class GuestImage:
    """A parsed guest: its segments (addresses relative to the load base), entry point,
    relocations and exported function signatures."""

    path: str
    span: int
    entry: int
    segments: tuple[tuple[int, bytes, int, int], ...]  # (vaddr, file bytes, memsz, flags)
    relocations: tuple[tuple[int, int], ...]  # (vaddr, addend)
    functions: dict[str, Signature]
    functions_addr: int  # the function table (sbx_funcs section), relative to the base

    def load(self, base: int) -> list[Segment]:
        """The segments relocated to `base`, ready to be copied into guest memory."""
        image = bytearray(self.span)
        for vaddr, data, _, _ in self.segments:
            image[vaddr : vaddr + len(data)] = data
        for vaddr, addend in self.relocations:
            struct.pack_into("<Q", image, vaddr, (base + addend) & 0xFFFF_FFFF_FFFF_FFFF)
        out = []
        for vaddr, _, memsz, flags in self.segments:
            start = vaddr & ~(PAGE - 1)
            end = vaddr + memsz
            out.append(
                Segment(
                    addr=base + start,
                    data=bytes(image[start:end]),
                    mem_size=page_align_up(end) - start,
                    writable=bool(flags & PF_W),
                    executable=bool(flags & PF_X),
                )
            )
        return out


class _Reader:
    def __init__(self, data: bytes, path: str) -> None:
        self.data = data
        self.path = path

    def fail(self, why: str) -> GuestAbiMismatch:
        return GuestAbiMismatch(f"{self.path}: {why}")

    def unpack(self, fmt: struct.Struct, offset: int, what: str) -> tuple[Any, ...]:
        if offset < 0 or offset + fmt.size > len(self.data):
            raise self.fail(f"truncated ELF file ({what} at offset {offset} is past the end)")
        return fmt.unpack_from(self.data, offset)

    def slice(self, offset: int, size: int, what: str) -> bytes:
        if offset < 0 or size < 0 or offset + size > len(self.data):
            raise self.fail(f"truncated ELF file ({what} is past the end)")
        return self.data[offset : offset + size]


def load_guest(path: str | os.PathLike[str]) -> GuestImage:
    """Reads and checks the guest ELF at `path`. Raises FileNotFoundError if it does not
    exist and GuestAbiMismatch if it is not a usable guest of this ABI version."""
    path = str(path)
    data = Path(path).read_bytes()
    return parse_guest(data, path)


def parse_guest(data: bytes, path: str = "<guest>") -> GuestImage:
    r = _Reader(data, path)
    if data[:4] != b"\x7fELF":
        raise r.fail("not an ELF file")
    (
        ident,
        e_type,
        e_machine,
        _,
        e_entry,
        e_phoff,
        e_shoff,
        _,
        _,
        e_phentsize,
        e_phnum,
        e_shentsize,
        e_shnum,
        e_shstrndx,
    ) = r.unpack(EHDR, 0, "ELF header")
    if ident[4] != 2 or ident[5] != 1:
        raise r.fail("not a 64-bit little-endian ELF file")
    if e_machine != EM_X86_64:
        raise r.fail(f"built for machine {e_machine}, not x86-64")
    if e_type != ET_DYN:
        raise r.fail("not a static PIE (ET_DYN): build it with the guest SDK (-static-pie)")
    if e_phentsize != PHDR.size or not 0 < e_phnum <= 64:
        raise r.fail("malformed program header table")

    loads: list[tuple[int, bytes, int, int]] = []
    dynamic: tuple[int, int] | None = None
    abi_version: int | None = None
    for i in range(e_phnum):
        p_type, p_flags, p_offset, p_vaddr, _, p_filesz, p_memsz, _ = r.unpack(
            PHDR, e_phoff + i * PHDR.size, "program header"
        )
        if p_type == PT_LOAD:
            if p_filesz > p_memsz or p_memsz > MAX_IMAGE_SIZE or p_vaddr > MAX_IMAGE_SIZE:
                raise r.fail("malformed PT_LOAD segment sizes")
            if p_vaddr % PAGE != p_offset % PAGE:
                raise r.fail("PT_LOAD segment is not page-congruent with its file offset")
            if p_flags & PF_W and p_flags & PF_X:
                raise r.fail("a segment is both writable and executable (W^X is required)")
            loads.append(
                (p_vaddr, r.slice(p_offset, p_filesz, "PT_LOAD segment"), p_memsz, p_flags)
            )
        elif p_type == PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
        elif p_type == PT_NOTE:
            version = _find_abi_note(r, p_offset, p_filesz)
            if version is not None:
                abi_version = version
        elif p_type == PT_INTERP:
            raise r.fail("dynamically linked (PT_INTERP): guests must be static PIEs")
        elif p_type == PT_TLS:
            raise r.fail("uses thread-local storage (PT_TLS), which guests cannot have")
        elif p_type not in (PT_GNU_STACK, PT_GNU_RELRO, PT_GNU_PROPERTY, PT_GNU_EH_FRAME):
            raise r.fail(f"unsupported program header type 0x{p_type:x}")

    if abi_version is None:
        raise r.fail("not a sandbox guest: no SBX ABI note (build it with the guest SDK)")
    if abi_version != ABI_VERSION:
        raise r.fail(
            f"built for guest ABI version {abi_version}, this runtime speaks version "
            f"{ABI_VERSION}: rebuild the guest with this SDK"
        )
    if not loads:
        raise r.fail("no PT_LOAD segments")
    loads.sort()
    for (a, _, a_mem, _), (b, _, _, _) in zip(loads, loads[1:], strict=False):
        if page_align_up(a + a_mem) > (b & ~(PAGE - 1)):
            raise r.fail("PT_LOAD segments overlap or share a page")
    span = page_align_up(max(v + m for v, _, m, _ in loads))
    if not any(v <= e_entry < v + m and f & PF_X for v, _, m, f in loads):
        raise r.fail(f"entry point 0x{e_entry:x} is not in an executable segment")

    relocations = _relocations(r, dynamic, loads) if dynamic else ()
    functions, functions_addr = _functions(r, e_shoff, e_shentsize, e_shnum, e_shstrndx)
    if functions_addr + len(functions) * FUNC_DESC.size > span:
        raise r.fail("the sbx_funcs section lies outside the loaded image")
    return GuestImage(path, span, e_entry, tuple(loads), relocations, functions, functions_addr)


def _find_abi_note(r: _Reader, offset: int, size: int) -> int | None:
    end = offset + size
    while offset + NOTE.size <= end:
        namesz, descsz, n_type = r.unpack(NOTE, offset, "note")
        name_at = offset + NOTE.size
        desc_at = name_at + ((namesz + 3) & ~3)
        name = r.slice(name_at, namesz, "note name")
        if name == b"SBX\0" and n_type == lib.SBX_NOTE_TYPE and descsz == 4:
            return int(struct.unpack_from("<I", r.slice(desc_at, 4, "note"))[0])
        offset = desc_at + ((descsz + 3) & ~3)
    return None


def _check_in_segments(
    r: _Reader, loads: list[tuple[int, bytes, int, int]], vaddr: int, size: int
) -> int:
    """Returns vaddr after checking that [vaddr, vaddr+size) lies in one segment."""
    for v, _, memsz, _ in loads:
        if v <= vaddr and vaddr + size <= v + memsz:
            return vaddr
    raise r.fail(f"address 0x{vaddr:x} is outside the loaded segments")


def _relocations(
    r: _Reader, dynamic: tuple[int, int], loads: list[tuple[int, bytes, int, int]]
) -> tuple[tuple[int, int], ...]:
    offset, size = dynamic
    tags: dict[int, int] = {}
    for i in range(size // DYN.size):
        d_tag, d_val = r.unpack(DYN, offset + i * DYN.size, "dynamic entry")
        if d_tag == DT_NULL:
            break
        if d_tag == DT_NEEDED:
            raise r.fail("needs shared libraries (DT_NEEDED): guests must be static")
        if d_tag == DT_REL:
            raise r.fail("REL relocations are not supported (only RELA)")
        if d_tag == DT_TEXTREL:
            raise r.fail("has text relocations")
        tags[d_tag] = d_val
    if tags.get(DT_PLTRELSZ, 0) or tags.get(DT_JMPREL, 0):
        raise r.fail("has PLT relocations: guests must not import symbols")
    if DT_RELA not in tags:
        return ()
    relasz = tags.get(DT_RELASZ, 0)
    if tags.get(DT_RELAENT, RELA.size) != RELA.size or relasz % RELA.size:
        raise r.fail("malformed RELA table")
    # The table is in a loaded segment; find its bytes there.
    table_vaddr = tags[DT_RELA]
    table = None
    for v, data, _, _ in loads:
        if v <= table_vaddr and table_vaddr + relasz <= v + len(data):
            table = data[table_vaddr - v : table_vaddr - v + relasz]
    if table is None:
        raise r.fail("RELA table is outside the loaded segments")
    out = []
    for i in range(relasz // RELA.size):
        r_offset, r_info, r_addend = RELA.unpack_from(table, i * RELA.size)
        r_type = r_info & 0xFFFF_FFFF
        if r_type == R_X86_64_NONE:
            continue
        if r_type != R_X86_64_RELATIVE or r_info >> 32:
            raise r.fail(f"unsupported relocation type {r_type} (only R_X86_64_RELATIVE)")
        out.append((_check_in_segments(r, loads, r_offset, 8), r_addend))
    return tuple(out)


def _functions(
    r: _Reader, shoff: int, shentsize: int, shnum: int, shstrndx: int
) -> tuple[dict[str, Signature], int]:
    """The exported functions and the address of their table."""
    if shoff == 0 or shnum == 0 or shentsize != SHDR.size or shstrndx >= shnum:
        raise r.fail("no section headers: cannot find the exported functions (do not strip guests)")
    if shnum > MAX_SECTIONS:
        raise r.fail(f"{shnum} section headers (at most {MAX_SECTIONS})")
    headers = [r.unpack(SHDR, shoff + i * SHDR.size, "section header") for i in range(shnum)]
    names = headers[shstrndx]
    strtab = r.slice(names[4], names[5], "section names")
    for sh_name, _, _, sh_addr, sh_offset, sh_size, *_ in headers:
        end = strtab.find(b"\0", sh_name)
        if strtab[sh_name:end] == FUNCS_SECTION:
            table = r.slice(sh_offset, sh_size, "sbx_funcs section")
            try:
                return parse_function_table(table), sh_addr
            except ValueError as exc:
                raise r.fail(str(exc)) from None
    raise r.fail("exports no functions (no sbx_funcs section; use SBX_EXPORT)")
