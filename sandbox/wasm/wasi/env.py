"""WASI functions: arguments and environment (the exact preview1 layout: an array of u32
pointers, then the NUL-terminated strings packed one after another), clocks and
randomness."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

from .memory import GuardedMemory
from .state import WasiState
from .types import RANDOM_CHUNK, U32


def _put_strings(mem: GuardedMemory, ptrs: int, buf: int, strings: list[bytes]) -> int:
    pointers = []
    offset = buf
    for s in strings:
        pointers.append(offset & U32)
        offset += len(s)
    mem.write(ptrs, struct.pack(f"<{len(pointers)}I", *pointers))
    mem.write(buf, b"".join(strings))
    return 0


def _put_sizes(mem: GuardedMemory, count_ptr: int, size_ptr: int, strings: list[bytes]) -> int:
    mem.put_u32(count_ptr, len(strings))
    mem.put_u32(size_ptr, sum(map(len, strings)))
    return 0


def args_get(s: WasiState, mem: GuardedMemory, argv: int, buf: int) -> int:
    return _put_strings(mem, argv, buf, s.args)


def args_sizes_get(s: WasiState, mem: GuardedMemory, count: int, size: int) -> int:
    return _put_sizes(mem, count, size, s.args)


def environ_get(s: WasiState, mem: GuardedMemory, environ: int, buf: int) -> int:
    return _put_strings(mem, environ, buf, s.environ)


def environ_sizes_get(s: WasiState, mem: GuardedMemory, count: int, size: int) -> int:
    return _put_sizes(mem, count, size, s.environ)


def clock_res_get(s: WasiState, mem: GuardedMemory, clock: int, res_ptr: int) -> int:
    mem.put_u64(res_ptr, s.clock.resolution(clock))
    return 0


def clock_time_get(
    s: WasiState, mem: GuardedMemory, clock: int, precision: int, time_ptr: int
) -> int:
    mem.put_u64(time_ptr, s.clock.now(clock))
    return 0


def random_get(s: WasiState, mem: GuardedMemory, buf: int, length: int) -> int:
    mem.probe_range(buf, length)  # fault before filling anything
    done = 0
    while done < length:
        n = min(RANDOM_CHUNK, length - done)
        data = s.rng.randbytes(n) if s.rng is not None else os.urandom(n)
        mem.write(buf + done, data)
        done += n
    return 0


FUNCTIONS: dict[str, Callable[..., int]] = {
    "args_get": args_get,
    "args_sizes_get": args_sizes_get,
    "environ_get": environ_get,
    "environ_sizes_get": environ_sizes_get,
    "clock_res_get": clock_res_get,
    "clock_time_get": clock_time_get,
    "random_get": random_get,
}
