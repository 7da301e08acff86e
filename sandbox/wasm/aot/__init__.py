"""The AOT tier: Wasm modules compiled ahead of time on the host (wasm2c and the system C
compiler) into guests that run the module as native ring-3 code. See docs/aot.md."""

from .compiler import AotCompileError, Limits, cache_dir, compile_module, compile_modules
from .tier import (
    TIERS,
    Listener,
    Tier,
    check_tier,
    compile_in_background,
    failure,
    guest_for,
    is_native,
)

__all__ = [
    "TIERS",
    "AotCompileError",
    "Limits",
    "Listener",
    "Tier",
    "cache_dir",
    "check_tier",
    "compile_in_background",
    "compile_module",
    "compile_modules",
    "failure",
    "guest_for",
    "is_native",
]
