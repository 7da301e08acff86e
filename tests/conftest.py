"""Shared fixtures: KVM detection for the `requires_kvm` marker, the test guests (built
once per session with guests/build.py into a temporary directory), and sandboxes that are
always closed and torn down."""

from __future__ import annotations

import functools
import importlib.util
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from support import GUESTS, drain

import sandbox
from sandbox import KvmUnavailable, Sandbox
from sandbox.guests import BUNDLED_DIR

DEMO_ELF = BUNDLED_DIR / "demo.elf"

# A minimal guest of our own, to show that user guests work (and to probe the page
# permissions from ring 3: peek/poke/jump at any address).
PROBE_SOURCE = textwrap.dedent(
    """\
    #include "sbx.h"

    SBX_EXPORT(triple, SBX_TAG_I64, SBX_TAG_I64) { sbx_ret_i64(ret, 3 * sbx_arg_i64(args, 0)); }

    SBX_EXPORT(ask_host, SBX_TAG_I64, SBX_TAG_I64) {
        /* Printed before the host call: flushed with it, so it arrives first. */
        sbx_print("asking the host\\n");
        sbx_value a = sbx_val_i64(sbx_arg_i64(args, 0));
        sbx_value r = sbx_host_call("add_one", 1, &a);
        if (r.tag != SBX_TAG_I64) sbx_abort("add_one returned tag %u", r.tag);
        sbx_ret_i64(ret, (int64_t)r.bits);
    }

    SBX_EXPORT(abi_version, SBX_TAG_U32) { sbx_ret_u32(ret, sbx_boot_info()->abi_version); }

    SBX_EXPORT(peek, SBX_TAG_U64, SBX_TAG_U64) {
        sbx_ret_u64(ret, *(volatile uint64_t *)(uintptr_t)sbx_arg_u64(args, 0));
    }

    SBX_EXPORT(poke, SBX_TAG_VOID, SBX_TAG_U64) {
        *(volatile uint64_t *)(uintptr_t)sbx_arg_u64(args, 0) = 0x5a5a;
    }

    SBX_EXPORT(jump, SBX_TAG_VOID, SBX_TAG_U64) {
        ((void (*)(void))(uintptr_t)sbx_arg_u64(args, 0))();
    }

    SBX_EXPORT(entry_of_triple, SBX_TAG_U64) { sbx_ret_u64(ret, (uint64_t)(uintptr_t)&triple); }
    """
)


@functools.cache
def kvm_problem() -> str | None:
    """Why KVM cannot be used here (the KvmUnavailable message), or None if it can."""
    try:
        sandbox.kvm.Kvm.shared()
    except KvmUnavailable as exc:
        return str(exc)
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("requires_kvm") is not None:
            problem = kvm_problem()
            if problem is not None:
                item.add_marker(pytest.mark.skip(reason=f"KVM unavailable: {problem}"))


@pytest.fixture(scope="session", autouse=True)
def _teardown_everything() -> Iterator[None]:
    yield
    drain()


# -- guests -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def guest_build() -> ModuleType:
    """guests/build.py (standard library only; not part of the package)."""
    spec = importlib.util.spec_from_file_location("guest_build", GUESTS / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def guest_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("guests")


@pytest.fixture(scope="session")
def demo_elf() -> Path:
    if not DEMO_ELF.is_file():
        pytest.fail(f"{DEMO_ELF} is missing: run `python3 setup.py build_ext --inplace`")
    return DEMO_ELF


@pytest.fixture(scope="session")
def demo_bytes(demo_elf: Path) -> bytes:
    return demo_elf.read_bytes()


@pytest.fixture(scope="session")
def hostile_guest(guest_build: ModuleType, guest_dir: Path) -> Path:
    return guest_build.build_guest([GUESTS / "testing" / "hostile.c"], guest_dir / "hostile.elf")


@pytest.fixture(scope="session")
def pending_guest(guest_build: ModuleType, guest_dir: Path) -> Path:
    """guests/testing/pending_io.c: stops mid-instruction on purpose (reset tests)."""
    return guest_build.build_guest(
        [GUESTS / "testing" / "pending_io.c"], guest_dir / "pending_io.elf"
    )


@pytest.fixture(scope="session")
def flood_guest(guest_build: ModuleType, guest_dir: Path) -> Path:
    """guests/testing/flood.c: prints as much as it is asked to (output tests)."""
    return guest_build.build_guest([GUESTS / "testing" / "flood.c"], guest_dir / "flood.elf")


@pytest.fixture(scope="session")
def abi99_guest(guest_build: ModuleType, guest_dir: Path) -> Path:
    """The demo guest built as if for guest ABI version 99."""
    return guest_build.build_guest(
        [GUESTS / "demo" / "demo.c"],
        guest_dir / "abi99.elf",
        extra_cflags=["-DSBX_GUEST_ABI_VERSION=99"],
    )


@pytest.fixture(scope="session")
def probe_guest(guest_build: ModuleType, guest_dir: Path) -> Path:
    """A user guest written here, not shipped with the package."""
    source = guest_dir / "probe.c"
    source.write_text(PROBE_SOURCE)
    return guest_build.build_guest([source], guest_dir / "probe.elf")


BIG_SOURCE = textwrap.dedent(
    """\
    #include "sbx.h"

    /* 3 MiB of .bss: the image alone does not fit in a few MiB of guest memory. */
    static uint8_t big[3 << 20];

    SBX_EXPORT(touch, SBX_TAG_U64, SBX_TAG_U64) {
        uint64_t i = sbx_arg_u64(args, 0) % sizeof big;
        big[i] += 1;
        sbx_ret_u64(ret, big[i]);
    }
    """
)


@pytest.fixture(scope="session")
def big_guest(guest_build: ModuleType, guest_dir: Path) -> Path:
    """A guest whose image is over 3 MiB."""
    source = guest_dir / "big.c"
    source.write_text(BIG_SOURCE)
    return guest_build.build_guest([source], guest_dir / "big.elf")


# -- sandboxes ----------------------------------------------------------------------------


@pytest.fixture
def sb() -> Iterator[Sandbox]:
    """A fresh demo sandbox, closed after the test."""
    with Sandbox() as box:
        yield box


@pytest.fixture
def make_sandbox() -> Iterator[object]:
    """A factory of sandboxes that are all closed after the test."""
    made: list[Sandbox] = []

    def make(*args: object, **kwargs: object) -> Sandbox:
        box = Sandbox(*args, **kwargs)  # type: ignore[arg-type]
        made.append(box)
        return box

    yield make
    for box in made:
        box.close()
