"""The Python payload and its checks (sandbox/deploy/payload.py, checks.py), without
building an image."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from sandbox.deploy import checks, flatcar, payload


def touch(path: Path, text: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_check_abi_accepts_what_fits(tmp_path: Path) -> None:
    touch(tmp_path / "pydantic_core/_pydantic_core.cpython-313-x86_64-linux-gnu.so")
    touch(tmp_path / "sandbox/_sbx_native.abi3.so")
    touch(tmp_path / "uvloop.libs/libuv-abc.so.1.0.0")
    touch(tmp_path / "a-1.dist-info/WHEEL", "Tag: cp313-cp313-manylinux_2_17_x86_64\n")
    touch(tmp_path / "b-1.dist-info/WHEEL", "Tag: py3-none-any\n")
    touch(tmp_path / "c-1.dist-info/WHEEL", "Tag: cp38-abi3-manylinux2014_x86_64\n")
    assert checks.check_abi(tmp_path, "3.13") == []


def test_check_abi_refuses_what_does_not(tmp_path: Path) -> None:
    touch(tmp_path / "pydantic_core/_pydantic_core.cpython-311-x86_64-linux-gnu.so")
    touch(tmp_path / "x/_x.cpython-313-aarch64-linux-gnu.so")
    touch(tmp_path / "a-1.dist-info/WHEEL", "Tag: cp311-cp311-manylinux_2_17_x86_64\n")
    touch(tmp_path / "b-1.dist-info/WHEEL", "Tag: cp313-cp313-macosx_11_0_arm64\n")
    problems = checks.check_abi(tmp_path, "3.13")
    assert len(problems) == 4, problems
    assert any("_pydantic_core" in p for p in problems)


@pytest.mark.parametrize(
    ("tag", "fits"),
    [
        ("py3-none-any", True),
        ("py2.py3-none-any", True),  # any pure-Python tag
        ("cp311-abi3-manylinux_2_28_x86_64", True),
        ("cp314-abi3-manylinux_2_28_x86_64", False),
        ("cp313-cp313-musllinux_1_2_x86_64", False),  # Flatcar's libc is glibc
        ("cp313-cp313-linux_x86_64", True),  # built here from an sdist
        ("cp313-cp313-manylinux_2_17_aarch64", False),
    ],
)
def test_wheel_tags(tag: str, fits: bool) -> None:
    assert checks._tag_fits(tag, 3, 13) is fits


def test_compiled_modules(tmp_path: Path) -> None:
    touch(tmp_path / "pydantic_core/_pydantic_core.cpython-311-x86_64-linux-gnu.so")
    touch(tmp_path / "sandbox/_sbx_native.abi3.so")
    touch(tmp_path / "uvloop.libs/libuv-abc.so")
    assert checks.compiled_modules(tmp_path) == [
        "pydantic_core._pydantic_core",
        "sandbox._sbx_native",
    ]


def test_requirements_for_another_python() -> None:
    reqs = payload.root_requirements("3.13", (), ['tomli; python_version < "3.11"', "anyio"])
    assert "anyio" in reqs and not any(r.startswith("tomli") for r in reqs)
    assert any(r.startswith("pydantic") for r in reqs)


def test_self_referencing_extras_are_expanded_not_handed_to_pip() -> None:
    """The `host` extra requires `kvm-sandbox[wasm]`: pip gets wasm's requirements, never
    kvm-sandbox itself (it is on no index; the package is copied from here)."""
    if "host" not in payload.chosen_extras(None):
        pytest.skip("this kvm-sandbox has no host extra")
    assert payload.expanded_extras(("host",)) == ("host", "wasm")
    reqs = payload.root_requirements("3.13", ("host",))
    names = {canonicalize_name(Requirement(r).name) for r in reqs}
    assert payload.DIST_NAME not in names
    assert {"wasmtime", "fastapi", "uvicorn", "pydantic", "cffi"} <= names
    assert len(reqs) == len(set(reqs))


def test_environment_closure_is_complete() -> None:
    names = {canonicalize_name(d.metadata["Name"]) for d in payload.environment_closure(())}
    assert {"pydantic", "pydantic-core", "cffi", "pycparser"} <= names
    assert payload.DIST_NAME not in names


def test_environment_copy_is_only_for_the_running_python(tmp_path: Path) -> None:
    with pytest.raises(payload.PayloadError, match="--deps-from pip"):
        payload.install_from_environment(tmp_path, "3.99", ())
    with pytest.raises(payload.PayloadError, match="not installed here"):
        payload.environment_closure((), ["surely-not-installed-package-xyz"])


def test_unknown_extra() -> None:
    with pytest.raises(payload.PayloadError, match="no extra"):
        payload.chosen_extras(["no-such-extra"])


def test_python_versions() -> None:
    assert flatcar.python_tag("3.13") == "cp313"
    for bad in ("3", "3.x", "2.7", "3.11.2"):
        with pytest.raises(ValueError):
            flatcar.parse_python_version(bad)
