"""The Wasm call path (docs/wasm.md, "The call path"): the precomputed wasm_invoke record
per export (InvokeEncoder) must write exactly the record the general encoder writes, take
every argument the general path takes and refuse the same ones, read results exactly as
the general decoder does, and fall back to it for any reply it does not expect (the
engine is untrusted). Results are checked against wasmtime, in both tiers where the AOT
tier is available."""

from __future__ import annotations

import math
import shutil
import struct
from collections.abc import Iterator
from typing import Any

import pytest

from sandbox import ArgumentError, FunctionNotFound, GuestProtocolError, Sandbox
from sandbox.abi import encode_call
from sandbox.wasm import WasmSandbox, WasmTrap
from sandbox.wasm.abi import (
    MISS,
    InvokeEncoder,
    ValType,
    decode_results,
    encode_values,
    to_python,
)

wasmtime = pytest.importorskip("wasmtime")
pytestmark = pytest.mark.requires_kvm

MODULE = """
(module
  (func (export "i32") (param i32) (result i32) (local.get 0))
  (func (export "i64") (param i64) (result i64) (local.get 0))
  (func (export "f32") (param f32) (result f32) (local.get 0))
  (func (export "f64") (param f64) (result f64) (local.get 0))
  (func (export "mix") (param i32 i64 f32 f64) (result f64 f32 i64 i32)
    (local.get 3) (local.get 2) (local.get 1) (local.get 0))
  (func (export "none"))
  (func (export "ref") (param externref) (result externref) (local.get 0))
)
"""
TIERS = ["interp"] + (["aot"] if shutil.which("wasm2c") else [])

# Arguments of each export, every edge the fast path's checks decide on.
ARGS: list[tuple[str, tuple[Any, ...]]] = [
    ("i32", (0,)),
    ("i32", (-(2**31),)),
    ("i32", (2**31 - 1,)),
    ("i32", (2**31,)),  # unsigned inputs are accepted
    ("i32", (2**32 - 1,)),
    ("i64", (-(2**63),)),
    ("i64", (2**63 - 1,)),
    ("i64", (2**63,)),  # beyond 'q': the general path takes it
    ("i64", (2**64 - 1,)),
    ("f32", (1.5,)),
    ("f32", (0.1,)),  # rounded to f32
    ("f32", (3,)),  # an int for a float: the general path converts it
    ("f32", (math.inf,)),
    ("f32", (-0.0,)),
    ("f64", (math.pi,)),
    ("f64", (-(2**80),)),
    ("f64", (1e308,)),
    ("mix", (-1, -(2**40), 2.5, -0.125)),
    ("none", ()),
]
BAD: list[tuple[str, tuple[Any, ...]]] = [
    ("i32", (2**32,)),
    ("i32", (-(2**31) - 1,)),
    ("i32", (True,)),
    ("i32", (1.0,)),
    ("i64", (2**64,)),
    ("i64", (-(2**63) - 1,)),
    ("f32", (1e39,)),  # overflows f32
    ("f64", ("1",)),
    ("f64", (None,)),
    ("mix", (1, 2, 3.0)),
    ("none", (1,)),
]


@pytest.fixture(scope="module", params=TIERS)
def sb(request: pytest.FixtureRequest) -> Iterator[WasmSandbox]:
    with Sandbox.from_wasm(bytes(wasmtime.wat2wasm(MODULE)), tier=request.param) as box:
        yield box


@pytest.fixture(scope="module")
def theirs() -> tuple[Any, Any]:
    store = wasmtime.Store()
    module = wasmtime.Module(store.engine, MODULE)
    return store, wasmtime.Instance(store, module, []).exports(store)


def _encoder(sb: WasmSandbox, name: str) -> InvokeEncoder:
    sb.call("none")  # an instance is there
    handle = 0
    ft = sb.exports[name].type
    functions = sb.engine_sandbox.functions
    index = list(functions).index("wasm_invoke")
    return InvokeEncoder(
        functions["wasm_invoke"],
        index,
        handle,
        name,
        ft.params,  # type: ignore[union-attr]
        ft.results,  # type: ignore[union-attr]
    )


@pytest.mark.parametrize(("name", "args"), ARGS, ids=[f"{n}{a}" for n, a in ARGS])
def test_results_are_wasmtimes(
    sb: WasmSandbox, theirs: tuple[Any, Any], name: str, args: tuple[Any, ...]
) -> None:
    store, exports = theirs
    params = exports[name].type(store).params
    floats = [str(p) in ("f32", "f64") for p in params]
    expected = exports[name](
        store, *[_as_wasmtime(a, f) for a, f in zip(args, floats, strict=True)]
    )
    got = sb.call(name, *args)
    if isinstance(expected, list):
        expected = tuple(expected)
    assert _same(got, expected), f"{name}{args}: {got!r} != wasmtime's {expected!r}"
    sb.restore()
    assert _same(sb.call(name, *args), expected)  # and after a restore


def _as_wasmtime(value: Any, float_param: bool) -> Any:
    # wasmtime takes i32/i64 as signed, and only floats for floats
    if float_param and isinstance(value, int):
        return float(value)
    if isinstance(value, int) and value >= 2**63:
        return value - 2**64
    if isinstance(value, int) and 2**31 <= value < 2**32:
        return value - 2**32
    return value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return struct.pack("<d", a) == struct.pack("<d", b) or (math.isnan(a) and math.isnan(b))
    return type(a) is type(b) and a == b


@pytest.mark.parametrize(("name", "args"), BAD, ids=[f"{n}{a}" for n, a in BAD])
def test_bad_arguments_are_refused_as_before(
    sb: WasmSandbox, name: str, args: tuple[Any, ...]
) -> None:
    with pytest.raises(ArgumentError):
        sb.call(name, *args)
    assert sb.call("i32", 7) == 7


@pytest.mark.parametrize(("name", "args"), ARGS, ids=[f"{n}{a}" for n, a in ARGS])
def test_the_precomputed_record_is_the_general_one(
    sb: WasmSandbox, name: str, args: tuple[Any, ...]
) -> None:
    encoder = _encoder(sb, name)
    size = 1 << 16
    fast, general = bytearray(size), bytearray(size)
    encoder.encode(memoryview(fast), args)
    values = encode_values(encoder.params, args, name)
    encode_call(memoryview(general), encoder.sig, (0, name, values), encoder.hint)
    assert fast == general


def test_result_falls_back_for_any_reply_it_does_not_expect(sb: WasmSandbox) -> None:
    """A hostile engine's reply never goes through the one-unpack read: wrong status,
    count, type or length all leave it to the general decoder."""
    enc = _encoder(sb, "i32")
    i32 = ValType.I32.value
    assert enc.result(bytes([0, 1, i32]) + (5).to_bytes(8, "little")) == 5
    assert enc.result(bytes([0, 1, i32]) + (2**32 - 1).to_bytes(8, "little")) == -1
    for reply in [
        bytes([1, 1, i32]) + bytes(8),  # a trap's status
        bytes([0, 2, i32]) + bytes(8),  # a count not the export's
        bytes([0, 1, ValType.I64.value]) + bytes(8),  # a type not the export's
        bytes([0, 1, i32]) + bytes(7),  # short
        bytes([0, 1, i32]) + bytes(9),  # long
        b"",
    ]:
        assert enc.result(reply) is MISS
    assert _encoder(sb, "ref").result(bytes([0, 1, 0x6F]) + bytes(8)) is MISS  # no fast path


def test_the_full_decoding_refuses_values_the_export_does_not_return(sb: WasmSandbox) -> None:
    """What the one-unpack read leaves goes through decode_results, which holds a reply
    to the export's result types too: a hostile engine's i64 for an i32 export, an extra
    value or none at all is a protocol error, not a value handed to the caller."""
    i32, i64 = ValType.I32.value, ValType.I64.value
    enc = _encoder(sb, "i32")
    assert decode_results(enc, bytes([0, 1, i32]) + (7).to_bytes(8, "little"), "i32") == 7
    for reply in [
        bytes([0, 1, i64]) + (7).to_bytes(8, "little"),
        bytes([0, 2, i32]) + bytes(8) + bytes([i32]) + bytes(8),
        bytes([0, 0]),
    ]:
        with pytest.raises(GuestProtocolError, match="the export returns"):
            decode_results(enc, reply, "i32")
    ref = _encoder(sb, "ref")  # no one-unpack read: every reply is decoded in full
    externref = ValType(0x6F)
    got = decode_results(ref, bytes([0, 1, externref.value]) + bytes(8), "ref")
    assert got == to_python(externref, 0)
    with pytest.raises(GuestProtocolError, match="the export returns"):
        decode_results(ref, bytes([0, 1, i32]) + bytes(8), "ref")


def test_an_encoder_of_another_guest_is_refused(sb: WasmSandbox) -> None:
    """Sandbox.call takes a CallEncoder only for one of its guest's own functions."""
    enc = _encoder(sb, "i32")
    with Sandbox() as native, pytest.raises(FunctionNotFound):
        native.call(enc, 1)


def test_spawns_share_the_encoders_and_start_from_the_snapshot(sb: WasmSandbox) -> None:
    sb.call("i32", 1)
    snap = sb.snapshot()
    with Sandbox.from_snapshot(snap) as a, Sandbox.from_snapshot(snap) as b:
        assert isinstance(a, WasmSandbox) and isinstance(b, WasmSandbox)
        assert a.call("mix", 1, 2, 3.0, 4.0) == b.call("mix", 1, 2, 3.0, 4.0) == (4.0, 3.0, 2, 1)
        main_a, main_b = a._wasm.main, b._wasm.main
        assert main_a is not None and main_b is not None
        inst_a, inst_b = a._wasm.instances[main_a], b._wasm.instances[main_b]
        assert inst_a.invokers["mix"] is inst_b.invokers["mix"]


GROWER = """
(module
  (memory 1)
  (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))
  (func (export "size") (result i32) (memory.size))
  (func (export "load") (param i32) (result i32) (i32.load (local.get 0)))
  (func (export "store") (param i32 i32) (i32.store (local.get 0) (local.get 1)))
)
"""


@pytest.mark.parametrize("tier", TIERS)
def test_every_reset_after_a_grow_unmaps_the_grown_pages(tier: str) -> None:
    """The windows' page tables are watched only from a grow on (the restore after it
    compares and flushes KVM's mappings, then stops watching): a module that grows,
    touches the new pages (KVM maps them) and is reset, again and again, and a sandbox
    that takes its parked machine, must fault on those pages every time."""
    from sandbox import _reaper

    far = 2 * 65536
    with Sandbox.from_wasm(bytes(wasmtime.wat2wasm(GROWER)), tier=tier) as sb:
        for _ in range(3):
            assert sb.call("grow", 2) == 1
            sb.call("store", far, 7)
            assert sb.call("load", far) == 7
            sb.restore()
            assert sb.call("size") == 1
            with pytest.raises(WasmTrap):
                sb.call("load", far)
            assert sb.call("load", 8) == 0
        snap = sb.snapshot()
    for _ in range(3):
        with Sandbox.from_snapshot(snap) as a:
            assert a.call("grow", 2) == 1
            a.call("store", far, 9)
        _reaper.drain()  # parked: the next sandbox may take its machine
        with Sandbox.from_snapshot(snap) as b:
            assert b.call("size") == 1
            with pytest.raises(WasmTrap):
                b.call("load", far)


FILLER = """
(module
  (memory 1)
  (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))
  (func (export "size") (result i32) (memory.size))
  (func (export "fill") (param i32 i32)  ;; every byte of [arg0, end of memory) = arg1
    (memory.fill (local.get 0) (local.get 1)
      (i32.sub (i32.mul (memory.size) (i32.const 65536)) (local.get 0))))
  (func (export "sum") (param i32) (result i64)  ;; the bytes of [arg0, end) added up
    (local $sum i64)
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get 0) (i32.mul (memory.size) (i32.const 65536))))
      (local.set $sum (i64.add (local.get $sum) (i64.load8_u (local.get 0))))
      (local.set 0 (i32.add (local.get 0) (i32.const 1)))
      (br $next)))
    (local.get $sum))
)
"""


def _pool_writes_outside_the_reach(sb: WasmSandbox) -> list[int]:
    """Pages outside what the resets search that differ from the image (a page written
    once stays the sandbox's own copy, equal to the image again after a reset: only a
    page written since the last reset can differ)."""
    from sandbox.wasm.windows import pool_reach

    memory = sb.engine_sandbox.memory
    reach = pool_reach(sb.layout, lambda a, n: bytes(memory.view[a : a + n])) or []
    return [
        page
        for addr, length in memory.written_ranges()
        for page in range(addr, addr + length, 4096)
        if not any(a <= page < a + n for a, n in reach)
        and bytes(memory.view[page : page + 4096]) != memory.image.read(page, 4096)
    ]


@pytest.mark.parametrize("tier", TIERS)
def test_resets_search_where_pages_can_be_written(tier: str) -> None:
    """A reset searches only the pool's pages in use (windows.pool_reach), not the gap
    between linear memory and the page tables. A module that grows, fills every new page
    and is reset, again and again, and sandboxes that take its parked machine, find every
    page zero again; and no page in the gap is ever written (a scan of all of memory)."""
    from sandbox import _reaper

    with Sandbox.from_wasm(bytes(wasmtime.wat2wasm(FILLER)), tier=tier) as sb:
        for grow in (1, 5, 40, 3):
            assert sb.call("grow", grow) == 1
            sb.call("fill", 0, 0xA5)
            assert sb.call("sum", 0) == 0xA5 * 65536 * (1 + grow)
            assert _pool_writes_outside_the_reach(sb) == []
            sb.restore()
            assert sb.call("size") == 1 and sb.call("sum", 0) == 0
            assert sb.call("grow", grow + 2) == 1
            assert sb.call("sum", 0) == 0  # the pages filled before are zero again
            sb.restore()
        snap = sb.snapshot()
    for _ in range(3):
        with Sandbox.from_snapshot(snap) as a:
            assert a.call("grow", 9) == 1
            a.call("fill", 0, 0x5A)
        _reaper.drain()  # parked: the next sandbox may take its machine
        with Sandbox.from_snapshot(snap) as b:
            assert b.call("grow", 9) == 1
            assert b.call("sum", 0) == 0
            assert isinstance(b, WasmSandbox)
            assert _pool_writes_outside_the_reach(b) == []


def test_a_snapshots_engine_state_never_changes() -> None:
    """A restored or spawned sandbox shares its snapshot's engine state (instances,
    registered names, the main instance) until it changes it: what it instantiates or
    registers afterwards must never show in the snapshot, in a restore to it, or in
    another spawn of it."""
    one = bytes(wasmtime.wat2wasm('(module (func (export "one") (result i32) i32.const 1))'))
    two = bytes(wasmtime.wat2wasm('(module (func (export "two") (result i32) i32.const 2))'))
    with WasmSandbox.engine() as sb:
        first = sb.instantiate(*sb.load(one))
        snap = sb.snapshot()
        sb.restore(snap)
        second = sb.instantiate(*sb.load(two))
        sb.register(second, "late")
        assert sb.invoke(second, "two", []) == [(ValType.I32, 2)]
        assert second not in snap.wasm_state.instances
        assert "late" not in snap.wasm_state.registered
        sb.restore(snap)
        assert set(sb._wasm.instances) == {first}
        assert sb.invoke(first, "one", []) == [(ValType.I32, 1)]
        spawned = Sandbox.from_snapshot(snap)
        assert isinstance(spawned, WasmSandbox)
        with spawned:
            third = spawned.instantiate(*spawned.load(two))
            assert third not in snap.wasm_state.instances
            with Sandbox.from_snapshot(snap) as other:
                assert isinstance(other, WasmSandbox)
                assert set(other._wasm.instances) == {first}


def test_hot_heap_pages_stop_below_the_pool_state() -> None:
    """A snapshot's hot heap pages (populated writable on every spawn) never reach into
    the heap's last 2 MiB, where the windows pool keeps its state: a page populated there
    is a private copy every reset walks to. Here an image whose data runs from below that
    line into it: the hot pages stop at the line."""
    from sandbox.memory import MemoryImage
    from sandbox.snapshot import Snapshot
    from sandbox.wasm.state import WasmSnapshot

    with Sandbox.from_wasm(wasmtime.wat2wasm(MODULE)) as sb:
        real = sb.snapshot()
        base = real.base
        layout = base.layout
        end = layout.heap_base + layout.heap_size
        line = (end - 1) & ~((2 << 20) - 1)
        assert layout.heap_base < line - 2 * 4096
        image = MemoryImage(layout.mem_size, [(line - 2 * 4096, b"\x01" * (4 * 4096))])
        try:
            crossing = Snapshot(
                image=image,
                cpu=base.cpu,
                layout=layout,
                functions=base.functions,
                functions_table=base.functions_table,
                config=base.config,
                guest_path=base.guest_path,
            )
            hot = WasmSnapshot(crossing, real.wasm_state, type(sb)).heap_pages
        finally:
            image.close()
    assert hot == [(line - 2 * 4096, 2 * 4096, True)]
