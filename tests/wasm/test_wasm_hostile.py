"""Never trust the guest, Wasm edition: an engine guest that lies (addresses outside its
heap, malformed replies, unknown statuses and value types, out-of-range window and
import requests) gets a clear error from the host for each lie, and the host goes on."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
from support import GUESTS

from sandbox import GuestAbiMismatch, GuestProtocolError, HostFunctionError
from sandbox.wasm import WasmSandbox
from sandbox.wasm.module import load

wasmtime = pytest.importorskip("wasmtime")
pytestmark = pytest.mark.requires_kvm

ADD = '(module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))'


@pytest.fixture(scope="module")
def liar(guest_build: ModuleType, guest_dir: Path) -> Path:
    return guest_build.build_guest(
        [GUESTS / "testing" / "hostile_engine.c"], guest_dir / "hostile_engine.elf"
    )


@pytest.mark.parametrize(
    ("mode", "error", "text"),
    [
        (0, GuestProtocolError, "outside the engine heap"),
        (1, GuestProtocolError, "outside the engine heap"),
        (2, GuestProtocolError, "outside the engine heap"),
        (4, GuestProtocolError, "not a reply"),
        (5, GuestProtocolError, "unknown reply status"),
        (6, GuestProtocolError, "payload of 2 bytes"),
    ],
)
def test_lying_loads_are_refused(liar: Path, mode: int, error: type, text: str) -> None:
    module = load(wasmtime.wat2wasm(ADD))
    with WasmSandbox(engine=liar) as sb:
        sb.engine_sandbox.call("set_mode", mode)
        with pytest.raises(error, match=text):
            sb.load(module)


@pytest.mark.parametrize(
    ("mode", "text"),
    [(7, "memory window 5000 out of range"), (8, "host import 3 of instance 77")],
)
def test_lying_host_calls_are_refused(liar: Path, mode: int, text: str) -> None:
    module = load(wasmtime.wat2wasm(ADD))
    with WasmSandbox(engine=liar) as sb:
        sb.engine_sandbox.call("set_mode", 3)
        handle, _ = sb.load(module)
        sb.engine_sandbox.call("set_mode", mode)
        with pytest.raises(HostFunctionError, match=text):
            sb.instantiate(handle, module)


@pytest.mark.parametrize(
    ("mode", "text"), [(9, "value list of 200 values"), (10, "unknown value type")]
)
def test_lying_results_are_refused(liar: Path, mode: int, text: str) -> None:
    module = load(wasmtime.wat2wasm(ADD))
    with WasmSandbox(engine=liar) as sb:
        sb.engine_sandbox.call("set_mode", 3)
        handle, _ = sb.load(module)
        instance = sb.instantiate(handle, module)
        assert sb.invoke(instance, "add", []) == [(0x7F, 0)]
        sb.engine_sandbox.call("set_mode", mode)
        with pytest.raises(GuestProtocolError, match=text):
            sb.invoke(instance, "add", [])
        sb.engine_sandbox.call("set_mode", 3)  # the host goes on
        assert sb.invoke(instance, "add", []) == [(0x7F, 0)]


def test_an_engine_of_another_abi_is_refused(guest_build: ModuleType, guest_dir: Path) -> None:
    other = guest_build.build_guest(
        [GUESTS / "testing" / "hostile_engine.c"],
        guest_dir / "engine_abi99.elf",
        extra_cflags=["-DLIE_ABI_VERSION=99"],
    )
    with pytest.raises(GuestAbiMismatch, match="ABI version"):
        WasmSandbox(engine=other)
    with pytest.raises(GuestAbiMismatch, match="ABI version"):
        WasmSandbox(engine=GUESTS.parent / "sandbox" / "_guests" / "demo.elf")  # not an engine
