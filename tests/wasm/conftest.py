"""Fixtures of the Wasm tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """tmp/data (granted read-write), tmp/ro (granted read-only), tmp/outside (not granted)."""
    data = tmp_path / "data"
    (data / "sub" / "deep").mkdir(parents=True)
    (data / "a.txt").write_bytes(b"hello world")
    (data / "sub" / "b.txt").write_bytes(b"bee")
    (data / "link_in").symlink_to("sub/b.txt")
    (data / "link_dir").symlink_to("sub")
    (data / "chain1").symlink_to("chain2")
    (data / "chain2").symlink_to("sub/deep/../b.txt")
    (data / "link_abs").symlink_to("/")
    (data / "link_etc").symlink_to("/etc/passwd")
    (data / "link_out").symlink_to("../outside/secret.txt")
    (data / "sub" / "up").symlink_to("../../outside")
    (data / "chain_out1").symlink_to("chain_out2")
    (data / "chain_out2").symlink_to("sub/up/secret.txt")
    (data / "loop1").symlink_to("loop2")
    (data / "loop2").symlink_to("loop1")
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "r.txt").write_bytes(b"read only")
    (ro / "dir").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    return tmp_path
