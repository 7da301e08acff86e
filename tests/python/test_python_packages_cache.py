"""The package cache's directory (sandbox/python/packages.py): private to the user
(0700), like every cache directory (sandbox/cachedir.py), whatever the umask."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from python_support import make_wheel

from sandbox import cachedir
from sandbox.python import packages


def test_the_package_cache_directory_is_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(cachedir.CACHE_ENVIRONMENT, str(tmp_path / "cache"))
    wheel = make_wheel(tmp_path, "tiny", "1.0", {"tiny/__init__.py": "X = 1\n"})
    old = os.umask(0o002)  # new directories group-writable unless made private
    try:
        found = packages.resolve([wheel])
    finally:
        os.umask(old)
    assert found is not None and found.modules == ("tiny",)
    for path in (tmp_path / "cache", packages.cache_root(), found.directory):
        assert path.stat().st_mode & 0o777 == 0o700, path
