"""`Template`: what every sandbox of one guest and config shares, built once and cached:
the loaded guest image, its memory layout, the initial memory (system tables, page
tables, the image and the boot info, in a sealed memfd that sandboxes map
copy-on-write) and the initial vCPU state; and the Snapshot of that state every new
sandbox of the template starts from (one object, so that what sandboxes share through
it, like their call encoders, is made once)."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from .config import SandboxConfig
from .cpu import CpuState, cpu_setup
from .elf import GuestImage, load_guest
from .errors import ConfigError
from .guests import is_bundled_name, resolve_guest
from .layout import Layout
from .memory import MemoryImage
from .snapshot import Snapshot

TEMPLATE_CACHE_SIZE = 32


@dataclass(frozen=True)
class Template:
    """A guest file prepared for one config."""

    image: GuestImage
    layout: Layout
    memory: MemoryImage  # the initial memory, boot info included (with a zero seed)
    cpu: CpuState
    initial: Snapshot  # the state above, as a new sandbox starts from it


def prepare(guest: str | os.PathLike[str] | None, config: SandboxConfig) -> Template:
    """The template of `guest` (a path or a bundled guest's name; None: the demo guest)
    with `config`. Raises GuestNotFound, GuestAbiMismatch, ConfigError."""
    if guest is None or (isinstance(guest, str) and is_bundled_name(guest)):
        return _bundled(guest, config)
    return _file(resolve_guest(guest), config)


@functools.lru_cache(maxsize=TEMPLATE_CACHE_SIZE)
def _bundled(guest: str | None, config: SandboxConfig) -> Template:
    """Bundled guests are package files that do not change while the process runs."""
    return _file(resolve_guest(guest), config)


def _file(path: Path, config: SandboxConfig) -> Template:
    st = os.stat(path)
    return _build(str(path.resolve()), st.st_mtime_ns, st.st_size, config)


@functools.lru_cache(maxsize=TEMPLATE_CACHE_SIZE)
def _build(path: str, mtime_ns: int, size: int, config: SandboxConfig) -> Template:
    """Keyed by the file's identity, so a rebuilt guest file is loaded again."""
    image = load_guest(path)
    try:
        layout = Layout.for_config(config, image.span)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    pieces = layout.build_template(image.load(layout.image_base))
    pieces.append((layout.boot_info, layout.boot_info_bytes(0)))
    memory = MemoryImage(layout.mem_size, pieces)
    cpu = cpu_setup().initial_state(layout, layout.image_base + image.entry)
    initial = Snapshot(
        image=memory,
        cpu=cpu,
        layout=layout,
        functions=image.functions,
        functions_table=layout.image_base + image.functions_addr,
        config=config,
        guest_path=image.path,
    )
    return Template(image, layout, memory, cpu, initial)
