"""Fixtures of the function-host tests: the guests they deploy, a host per test module
(`host`, `client`) and hosts started per test (the machinery is in host_support.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from host_support import ADD_K_SOURCE, HTTP_EXAMPLE, Guests, Host, start_host

from sandbox.guests import BUNDLED_DIR
from sandbox.sdk import build_guest


@pytest.fixture(scope="session", name="guests")
def guests_fixture(tmp_path_factory: pytest.TempPathFactory) -> Guests:
    """The bundled demo guest, the HTTP-mode example and two builds of add_k."""
    out = tmp_path_factory.mktemp("host-guests")
    source = out / "add_k.c"
    source.write_text(ADD_K_SOURCE)
    return Guests(
        demo=BUNDLED_DIR / "demo.elf",
        http=build_guest([HTTP_EXAMPLE], out / "http_echo.elf"),
        add_k0=build_guest([source], out / "add_k0.elf", extra_cflags=["-DK=0"]),
        add_k1=build_guest([source], out / "add_k1.elf", extra_cflags=["-DK=1"]),
    )


@pytest.fixture(scope="module")
def host(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Host]:
    """One host shared by the tests of a module, started with the module's
    HOST_SETTINGS (SANDBOX_HOST_* settings; none if it has none)."""
    settings: dict[str, object] = getattr(request.module, "HOST_SETTINGS", {})
    root = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])
    server = start_host(root / "data", root / "host.log", **settings)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(host: Host) -> httpx.Client:
    """A client of the module's host."""
    return host.client()


@pytest.fixture(name="host_factory")
def host_factory_fixture(tmp_path: Path) -> Iterator[Any]:
    """Starts hosts for one test (same data dir unless given) and stops them after."""
    started: list[Host] = []

    def start(
        data_dir: Path | None = None, *, cpus: set[int] | None = None, **settings: object
    ) -> Host:
        host = start_host(
            data_dir or tmp_path / "data", tmp_path / "host.log", cpus=cpus, **settings
        )
        started.append(host)
        return host

    yield start
    for host in started:
        host.stop()
