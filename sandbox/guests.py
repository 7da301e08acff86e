"""The guests bundled with the package (built by the package build into _guests/)."""

from __future__ import annotations

import os
from pathlib import Path

BUNDLED_DIR = Path(__file__).resolve().parent / "_guests"
DEFAULT_GUEST = "demo"


def bundled_guests() -> list[str]:
    """Names of the bundled guests."""
    return sorted(p.stem for p in BUNDLED_DIR.glob("*.elf"))


def is_bundled_name(guest: str) -> bool:
    """Whether `guest` names a bundled guest (rather than a path)."""
    return "/" not in guest and (BUNDLED_DIR / f"{guest}.elf").is_file()


def resolve_guest(guest: str | os.PathLike[str] | None) -> Path:
    """The ELF path for `guest`: a bundled guest's name, a path, or None (the demo).
    Raises GuestNotFound if there is no such file."""
    from .errors import GuestNotFound

    if guest is None:
        guest = DEFAULT_GUEST
    if isinstance(guest, str) and "/" not in guest and not guest.endswith(".elf"):
        path = BUNDLED_DIR / f"{guest}.elf"
        if path.is_file():
            return path
        if not Path(guest).is_file():
            raise GuestNotFound(
                f"no bundled guest named {guest!r} (bundled: "
                f"{', '.join(bundled_guests()) or 'none; reinstall the package'})"
            )
    path = Path(guest)
    if not path.is_file():
        raise GuestNotFound(f"guest file {str(path)!r} does not exist")
    return path
