"""A disk cache of Python sandbox states made by setup code (the function host's Python
functions: the module run once in a fresh interpreter), so that a process that needs
the same state again (the host restarted, or a second host on the machine) reads it
(~0.3 s) instead of running the setup again (seconds for a module that imports much).

    <cache root>/python-states/<key>.snap   (sandbox.cachedir: 0700, LRU-trimmed)

`<key>` is the caller's hash of everything the setup's result depends on (for the host:
the module's source, its file name, the packages and the sandbox config); the files are
`PythonSnapshot.save` files, read with `load_snapshot`, which checks them as any saved
state (sandbox/python/saved.py: the runtime's version, the interpreter build, the
packages...): a file that fails is logged and the caller runs the setup again and
saves over it. Written by a thread of its own (cachedir.BackgroundWrites). Off, with
the interpreter cache, with KVM_SANDBOX_PYTHON_CACHE=0 (tcache.enabled).
"""

from __future__ import annotations

import logging

from ..cachedir import BackgroundWrites, cache_subdir, entry_key, touch
from ..errors import ArgumentError, SnapshotError
from . import tcache
from .sandbox import PythonSnapshot, load_snapshot

log = logging.getLogger("sandbox.python.cache")

FORMAT = "1"
SUBDIR = "python-states"
_writes = BackgroundWrites(SUBDIR, "Python state cache", log)


def key(*parts: str) -> str:
    """The cache key of a state made from these inputs."""
    return entry_key(FORMAT, *parts)


def find(cache_key: str, *, packages: list[str] | None) -> PythonSnapshot | None:
    """The state saved under `cache_key`, or None (none, the cache off, or not usable
    here: logged)."""
    if not tcache.enabled():
        return None
    path = cache_subdir(SUBDIR) / f"{cache_key}.snap"
    try:
        snap = load_snapshot(path, packages=packages)
    except FileNotFoundError:
        return None
    except (SnapshotError, ArgumentError, OSError) as exc:
        log.warning("ignoring the cached Python state %s: %s", path.name, exc)
        return None
    touch(path)
    log.debug("read the Python state from %s", path)
    return snap


def save_later(cache_key: str, snap: PythonSnapshot) -> None:
    """Saves a state in the background (unless the cache is off)."""
    if tcache.enabled():
        _writes.start(cache_subdir(SUBDIR) / f"{cache_key}.snap", snap.save)


def flush(timeout: float | None = None) -> None:
    """Waits for the files being written (tests, short programs)."""
    _writes.flush(timeout)
