"""The runtime's cache directory on disk, shared by every cache that lives there (the
Wasm AOT tier's compiled guests, the Wasm module cache's engine snapshots, the Python
guest's packages): `$KVM_SANDBOX_CACHE`, else `$XDG_CACHE_HOME/kvm-sandbox`, else
`~/.cache/kvm-sandbox`, one subdirectory per cache. Subdirectories are created private
to the user (0700): what is cached there is run.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENVIRONMENT = "KVM_SANDBOX_CACHE"


def cache_root() -> Path:
    base = os.environ.get(CACHE_ENVIRONMENT) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "kvm-sandbox"
    )
    return Path(base)


def cache_subdir(name: str, *, create: bool = False) -> Path:
    """`<cache root>/<name>`, made (with its parents, mode 0700) if `create`."""
    path = cache_root() / name
    if create:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path
