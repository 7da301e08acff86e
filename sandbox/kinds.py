"""Guest kinds beyond native guests, and how the `Sandbox` API reaches them.

A native guest (an ELF built with the SDK) runs in a `Sandbox` directly. Other kinds run
a native engine guest of their own and add their semantics on the host by composition:
the Wasm kind (sandbox/wasm/) holds a Sandbox running the Wasm engine guest, the Python
kind (sandbox/python/) a Wasm sandbox running CPython. A kind registers a factory here
under its name when its package is imported (the kinds that ship with the runtime are
imported on first use: `_BUILTIN`), and `Sandbox.from_<kind>` calls it (or
`Sandbox(name)`, for a kind registered as a constructor); snapshots of a kind make their
own sandboxes (`SpawnsSandbox.spawn`). So sandbox.py never imports a kind's package,
and a new kind (an AOT-compiled Wasm tier) plugs in without touching it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from .errors import ArgumentError

Factory = Callable[..., Any]

_factories: dict[str, Factory] = {}
_constructors: set[str] = set()

# The kinds that ship with the runtime: name -> (the package that registers it, whether
# it registers as a constructor). Their packages are imported when a kind is first asked
# for, not with `sandbox` (the reasons: sandbox/__init__.py).
_BUILTIN: dict[str, tuple[str, bool]] = {
    "wasm": ("sandbox.wasm", False),
    "python": ("sandbox.python", True),
}


def register(
    name: str, factory: Factory, *, constructor: bool = False, builtin: bool = False
) -> None:
    """Makes `factory` the maker of sandboxes of guest kind `name`. With `constructor`,
    `Sandbox(name, **options)` calls it too (a kind whose sandbox takes no module, like
    a language runtime: `Sandbox("python")`). `builtin`: the registration of a kind that
    ships with the runtime, made when its package is first imported: it leaves a
    factory registered under that name before in place."""
    if builtin and name in _factories:
        return
    _factories[name] = factory
    if constructor:
        _constructors.add(name)
    else:
        _constructors.discard(name)


def is_kind(name: str) -> bool:
    """Whether `name` names a guest kind with its own sandbox class. (`Sandbox(name)`
    gives that class's sandbox: `kinds.register(name, factory, constructor=True)`.)"""
    if name in _factories:
        return name in _constructors
    return _BUILTIN.get(name, ("", False))[1]


def factory(name: str) -> Factory:
    """The factory registered for guest kind `name` (a built-in kind's package imported
    first if it was not). Raises ArgumentError if none is."""
    found = _factories.get(name)
    if found is None and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name][0])  # registers it
        found = _factories.get(name)
    if found is None:
        known = ", ".join(sorted(set(_factories) | set(_BUILTIN)))
        raise ArgumentError(f"no guest kind {name!r} is available (known: {known})")
    return found
