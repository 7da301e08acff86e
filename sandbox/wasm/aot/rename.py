"""The module wasm2c compiles: the user's module with its import and export names
replaced by plain ones (import k: module "i", name "k"; export k: "ek"), the original
names staying data in the glue (glue.py). So no name of a module ever becomes C (wasm2c
mangles names into identifiers and copies them into comments), imports of one name with
two kinds or types (which wasm2c refuses) are distinct imports, and no import collides
with the module's own name in wasm2c's output. Only the import and export sections
change; code, tables and data keep their bytes and offsets within their sections.
"""

from __future__ import annotations


class RenameError(ValueError):
    """The bytes are not the module shape the validator accepted."""


IMPORT_MODULE = "i"


def import_name(index: int) -> str:
    return str(index)


def export_name(index: int) -> str:
    return f"e{index}"


def _leb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _name(text: str) -> bytes:
    raw = text.encode()
    return _leb(len(raw)) + raw


class _Reader:
    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self.data, self.pos, self.end = data, pos, end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise RenameError("unexpected end of a section")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def u32(self) -> int:
        result = 0
        for shift in range(0, 35, 7):
            b = self.byte()
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return result
        raise RenameError("integer representation too long")

    def skip_name(self) -> None:
        n = self.u32()
        if n > self.end - self.pos:
            raise RenameError("a name runs past its section")
        self.pos += n

    def skip_limits(self) -> None:
        flags = self.byte()
        self.u32()
        if flags & 1:
            self.u32()


def _imports(r: _Reader) -> bytes:
    count = r.u32()
    out = bytearray(_leb(count))
    for index in range(count):
        r.skip_name()
        r.skip_name()
        start = r.pos
        kind = r.byte()
        if kind == 0:  # a function: its type index
            r.u32()
        elif kind == 1:  # a table: element type, limits
            r.byte()
            r.skip_limits()
        elif kind == 2:
            r.skip_limits()
        elif kind == 3:  # a global: value type, mutability
            r.byte()
            r.byte()
        elif kind == 4:  # a tag: attribute, type index
            r.byte()
            r.u32()
        else:
            raise RenameError(f"import of unknown kind {kind}")
        out += _name(IMPORT_MODULE) + _name(import_name(index)) + r.data[start : r.pos]
    return bytes(out)


def _exports(r: _Reader) -> bytes:
    count = r.u32()
    out = bytearray(_leb(count))
    for index in range(count):
        r.skip_name()
        start = r.pos
        r.byte()
        r.u32()
        out += _name(export_name(index)) + r.data[start : r.pos]
    return bytes(out)


def renamed(data: bytes) -> bytes:
    """`data` (a validated module) with plain import and export names. Raises
    RenameError if the sections do not parse."""
    if data[:4] != b"\0asm" or len(data) < 8:
        raise RenameError("not a Wasm module")
    out = bytearray(data[:8])
    pos = 8
    while pos < len(data):
        header = _Reader(data, pos, len(data))
        section = header.byte()
        size = header.u32()
        body_start, body_end = header.pos, header.pos + size
        if body_end > len(data):
            raise RenameError("a section runs past the end of the module")
        if section in (2, 7):
            r = _Reader(data, body_start, body_end)
            body = _imports(r) if section == 2 else _exports(r)
            if r.pos != body_end:
                raise RenameError(f"section {section} has bytes after its entries")
            out += bytes([section]) + _leb(len(body)) + body
        else:
            out += data[pos:body_end]
        pos = body_end
    return bytes(out)
