"""Building guests with the guest SDK from Python (`python -m sandbox build-guest`).

The SDK (headers, runtime sources and guests/build.py) ships inside the package as
_sdk/; in a source checkout it is the repository's guests/ directory.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from types import ModuleType

from .errors import GuestBuildError

_PACKAGE_DIR = Path(__file__).resolve().parent


def sdk_dir() -> Path:
    """The directory holding include/, sdk/ and build.py."""
    for candidate in (_PACKAGE_DIR / "_sdk", _PACKAGE_DIR.parent / "guests"):
        if (candidate / "build.py").is_file():
            return candidate
    raise GuestBuildError("the guest SDK is missing from this installation: reinstall the package")


@cache
def _builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sandbox_guest_build", sdk_dir() / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_guest(
    sources: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    extra_cflags: Sequence[str] = (),
) -> Path:
    """Compiles C `sources` with the guest SDK into the guest ELF `output`."""
    builder = _builder()
    try:
        path = builder.build_guest(list(sources), output, extra_cflags=list(extra_cflags))
    except builder.GuestBuildError as exc:
        raise GuestBuildError(str(exc)) from None
    return Path(path)
