"""The cache directory's bound (sandbox/cachedir.py): trim deletes the least recently
used files beyond the limit, never the one just written, and leaves directories; the
limit comes from $KVM_SANDBOX_CACHE_MAX_MIB. And its privacy: what it creates is the
user's alone (0700) whatever the umask."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
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


@pytest.fixture
def group_umask() -> Iterator[None]:
    """A umask that leaves new directories group-writable (002: user private groups)."""
    old = os.umask(0o002)
    try:
        yield
    finally:
        os.umask(old)


def test_every_directory_it_creates_is_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, group_umask: None
) -> None:
    """The root and its missing parents too, not only the subdirectory: under a
    group-writable root another user of the group could rename the subdirectory away
    and put one of theirs, with files that are then run, in its place."""
    tmp_path.chmod(0o755)
    root = tmp_path / "a" / "b" / "kvm-sandbox"
    monkeypatch.setenv(cachedir.CACHE_ENVIRONMENT, str(root))
    made = cachedir.cache_subdir("things", create=True)
    for path in (tmp_path / "a", tmp_path / "a" / "b", root, made):
        assert path.stat().st_mode & 0o777 == 0o700, path
    assert tmp_path.stat().st_mode & 0o777 == 0o755  # what existed is left as it was


def test_trim_leaves_work_directories_in_use(cache: Path) -> None:
    """A work directory is removed only once no process holds it (and it is older than
    the grace period): never one whose compile is running, however old."""
    old = time.time() - 3600
    with cachedir.work_dir("things", "job") as held:
        (held / "part.o").write_bytes(b"x")
        os.utime(held, (old, old))
        cachedir.trim("things", keep=cache / "none")
        assert (held / "part.o").exists()
    assert not held.exists()  # removed when the block ends
    with cachedir.work_dir("things", "fresh") as fresh:
        pass
    fresh.mkdir()  # as a killed process would leave it, but just now: left for now
    cachedir.trim("things", keep=cache / "none")
    assert fresh.is_dir()
    os.utime(fresh, (old, old))
    cachedir.trim("things", keep=cache / "none")
    assert not fresh.exists()


def test_an_open_cache_directory_is_made_private_or_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before a cache writes: a subdirectory, or a default-named root (kvm-sandbox), of
    ours that others may write to (made by an older version under umask 002) is made
    private; a root of the user's choosing that others may write to, or a directory of
    another user's, is refused (PermissionError), never changed or written to. A sticky
    root (a /tmp) is fine: others cannot move what is ours in it."""
    root = tmp_path / "kvm-sandbox"
    (root / "things").mkdir(parents=True)
    root.chmod(0o775)
    (root / "things").chmod(0o775)
    monkeypatch.setenv(cachedir.CACHE_ENVIRONMENT, str(root))
    made = cachedir.cache_subdir("things", create=True)
    assert root.stat().st_mode & 0o077 == 0 and made.stat().st_mode & 0o077 == 0
    chosen = tmp_path / "shared"
    chosen.mkdir(mode=0o700)
    chosen.chmod(0o777)
    monkeypatch.setenv(cachedir.CACHE_ENVIRONMENT, str(chosen))
    with pytest.raises(PermissionError, match="others"):
        cachedir.cache_subdir("things", create=True)
    assert chosen.stat().st_mode & 0o777 == 0o777 and not (chosen / "things").exists()
    chosen.chmod(0o1777)
    assert cachedir.cache_subdir("things", create=True).is_dir()
    if os.geteuid() == 0:  # (only root can give a directory away)
        theirs = chosen / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 65534, 65534)
        with pytest.raises(PermissionError, match="another user"):
            cachedir.cache_subdir("theirs", create=True)
