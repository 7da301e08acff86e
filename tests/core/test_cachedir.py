"""The cache directory's bound (sandbox/cachedir.py): trim deletes the least recently
used files beyond the limit, never the one just written, and leaves directories; the
limit comes from $KVM_SANDBOX_CACHE_MAX_MIB."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandbox import cachedir


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(cachedir.CACHE_ENVIRONMENT, str(tmp_path))
    return cachedir.cache_subdir("things", create=True)


def _file(d: Path, name: str, size: int, age: int) -> Path:
    path = d / name
    path.write_bytes(b"x" * size)
    t = 1_700_000_000 + age
    os.utime(path, (t, t))
    return path


def test_trim_deletes_the_least_recently_used_beyond_the_limit(cache: Path) -> None:
    old, mid, new = (_file(cache, n, 1000, age) for n, age in (("old", 1), ("mid", 2), ("new", 3)))
    (cache / "runtime-key").mkdir()  # a directory: never deleted
    assert cachedir.trim("things", keep=new, limit=2500) == [old]
    assert not old.exists() and mid.exists() and new.exists()
    mtime = mid.stat().st_mtime_ns
    cachedir.touch(mid)  # used now: newer than `new`
    assert mid.stat().st_mtime_ns == mtime  # the caches key loaded guests by mtime
    assert cachedir.trim("things", keep=mid, limit=1000) == [new]
    assert mid.exists() and (cache / "runtime-key").is_dir()


def test_trim_never_deletes_the_file_just_written(cache: Path) -> None:
    big = _file(cache, "big", 5000, 1)
    other = _file(cache, "other", 10, 2)
    assert cachedir.trim("things", keep=big, limit=100) == [other]
    assert big.exists()


def test_the_limit_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cachedir.LIMIT_ENVIRONMENT, "12")
    assert cachedir.limit_bytes() == 12 << 20
    for bad in ("", "0", "-5", "lots", "1.5"):
        monkeypatch.setenv(cachedir.LIMIT_ENVIRONMENT, bad)
        assert cachedir.limit_bytes() == cachedir.DEFAULT_LIMIT_MIB << 20
