"""Helpers of the WASI unit tests (tests/wasm/test_wasi_*.py): a linear memory made of a
bytearray, a `Guest` that plays the program (allocates in that memory and calls WASI
functions), the WASI context over the `tree` fixture's directories, and the two ways of
running a compiled wasm32-wasi program under wasmtime: with this package's WASI
(`run_with_this_wasi`) and with wasmtime's own (`run_with_wasmtime_wasi`)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from sandbox.wasm.wasi import (
    I32,
    I64,
    MemoryOutOfBounds,
    Preopen,
    WasiConfig,
    WasiContext,
    WasiExit,
)

WASI_HEADER = Path("/usr/include/wasm32-wasi/wasi/api.h")
ALL_RIGHTS = (1 << 30) - 1
# Every right but FD_WRITE: what opening a directory may ask (FD_WRITE there is EISDIR).
DIR_RIGHTS = ALL_RIGHTS & ~(1 << 6)
O_CREAT, O_DIRECTORY, O_EXCL, O_TRUNC = 1, 2, 4, 8
FOLLOW = 1
FILESTAT = struct.Struct("<QQBxxxxxxxQQQQQ")
FDSTAT = struct.Struct("<BxHxxxxQQ")
DIRENT = struct.Struct("<QQIBxxx")


class Memory:
    """A linear memory: a bytearray with the LinearMemory contract (out of bounds raises
    MemoryOutOfBounds)."""

    def __init__(self, size: int = 1 << 20) -> None:
        self.data = bytearray(size)

    def read(self, addr: int, size: int) -> bytes:
        if addr < 0 or size < 0 or addr + size > len(self.data):
            raise MemoryOutOfBounds(f"{size} bytes at {addr:#x}")
        return bytes(self.data[addr : addr + size])

    def write(self, addr: int, data: bytes) -> None:
        if addr < 0 or addr + len(data) > len(self.data):
            raise MemoryOutOfBounds(f"{len(data)} bytes at {addr:#x}")
        self.data[addr : addr + len(data)] = data


class Guest:
    """Plays the program: allocates in its memory and calls WASI functions."""

    def __init__(self, ctx: WasiContext, size: int = 1 << 20) -> None:
        self.ctx = ctx
        self.mem = Memory(size)
        self.top = 1024

    def alloc(self, size: int) -> int:
        addr = self.top
        self.top += (size + 7) & ~7
        assert self.top <= len(self.mem.data)
        return addr

    def put(self, data: bytes) -> tuple[int, int]:
        addr = self.alloc(len(data))
        self.mem.write(addr, data)
        return addr, len(data)

    def u32(self, addr: int) -> int:
        return int(struct.unpack_from("<I", self.mem.data, addr)[0])

    def u64(self, addr: int) -> int:
        return int(struct.unpack_from("<Q", self.mem.data, addr)[0])

    def call(self, name: str, *args: int) -> int:
        result = self.ctx.functions[name].call(self.mem, *args)
        assert isinstance(result, int)
        return result

    def open(
        self,
        path: str,
        dirfd: int = 3,
        oflags: int = 0,
        rights: int = ALL_RIGHTS,
        fdflags: int = 0,
        lookup: int = FOLLOW,
        inheriting: int | None = None,
    ) -> tuple[int, int]:
        p, n = self.put(path.encode())
        out = self.alloc(4)
        inherit = rights if inheriting is None else inheriting
        err = self.call("path_open", dirfd, lookup, p, n, oflags, rights, inherit, fdflags, out)
        return err, self.u32(out) if err == 0 else -1

    def write(self, fd: int, *chunks: bytes) -> tuple[int, int]:
        iovs = self.alloc(8 * len(chunks))
        for i, chunk in enumerate(chunks):
            addr, n = self.put(chunk)
            struct.pack_into("<II", self.mem.data, iovs + 8 * i, addr, n)
        out = self.alloc(4)
        err = self.call("fd_write", fd, iovs, len(chunks), out)
        return err, self.u32(out)

    def read(self, fd: int, *sizes: int) -> tuple[int, list[bytes]]:
        iovs = self.alloc(8 * len(sizes))
        bufs = []
        for i, size in enumerate(sizes):
            addr = self.alloc(size)
            bufs.append((addr, size))
            struct.pack_into("<II", self.mem.data, iovs + 8 * i, addr, size)
        out = self.alloc(4)
        err = self.call("fd_read", fd, iovs, len(sizes), out)
        if err:
            return err, []
        left = self.u32(out)
        pieces = []
        for addr, size in bufs:
            take = min(size, left)
            pieces.append(bytes(self.mem.data[addr : addr + take]))
            left -= take
        return 0, pieces

    def path_call(self, name: str, path: str, dirfd: int = 3) -> int:
        p, n = self.put(path.encode())
        return self.call(name, dirfd, p, n)

    def filestat(self, path: str, dirfd: int = 3, lookup: int = FOLLOW) -> tuple[int, tuple]:
        p, n = self.put(path.encode())
        buf = self.alloc(64)
        err = self.call("path_filestat_get", dirfd, lookup, p, n, buf)
        return err, FILESTAT.unpack_from(self.mem.data, buf) if err == 0 else ()

    def readdir(self, fd: int, size: int = 4096, cookie: int = 0) -> tuple[int, bytes]:
        buf = self.alloc(size)
        used = self.alloc(4)
        err = self.call("fd_readdir", fd, buf, size, cookie, used)
        return err, bytes(self.mem.data[buf : buf + self.u32(used)])


def parse_dirents(data: bytes) -> list[tuple[int, int, int, bytes]]:
    entries = []
    offset = 0
    while offset + DIRENT.size <= len(data):
        cookie, ino, namlen, kind = DIRENT.unpack_from(data, offset)
        name = data[offset + DIRENT.size : offset + DIRENT.size + namlen]
        if len(name) < namlen:
            break
        entries.append((cookie, ino, kind, name))
        offset += DIRENT.size + namlen
    return entries


# -- compiled programs: wasmtime executes, this package handles WASI ----------------------


class WasmtimeMemory:
    def __init__(self, store: object, memory: object) -> None:
        self.store = store
        self.memory = memory

    def read(self, addr: int, size: int) -> bytes:
        if addr < 0 or size < 0 or addr + size > self.memory.data_len(self.store):  # type: ignore[attr-defined]
            raise MemoryOutOfBounds("out of bounds")
        return bytes(self.memory.read(self.store, addr, addr + size))  # type: ignore[attr-defined]

    def write(self, addr: int, data: bytes) -> None:
        if addr < 0 or addr + len(data) > self.memory.data_len(self.store):  # type: ignore[attr-defined]
            raise MemoryOutOfBounds("out of bounds")
        self.memory.write(self.store, data, addr)  # type: ignore[attr-defined]


def run_with_this_wasi(wasm: Path, config: WasiConfig) -> tuple[int, bytes, bytes]:
    wasmtime = pytest.importorskip("wasmtime")
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    module = wasmtime.Module.from_file(engine, str(wasm))
    ctx = WasiContext(config)
    linker = wasmtime.Linker(engine)
    types = {I32: wasmtime.ValType.i32(), I64: wasmtime.ValType.i64()}
    for imp in module.imports:
        fn = ctx.functions[imp.name]
        ty = wasmtime.FuncType([types[p] for p in fn.params], [types[r] for r in fn.results])

        def host(caller: object, *args: int, _fn: object = fn) -> int:
            memory = caller.get("memory")  # type: ignore[attr-defined]
            return _fn.call(WasmtimeMemory(caller, memory) if memory else None, *args)  # type: ignore[attr-defined]

        linker.define_func(imp.module, imp.name, ty, host, access_caller=True)
    instance = linker.instantiate(store, module)
    code = 0
    try:
        instance.exports(store)["_start"](store)
    except WasiExit as exit:
        code = exit.code
    except wasmtime.Trap as trap:
        if not isinstance(trap.__cause__, WasiExit):
            raise
        code = trap.__cause__.code
    with ctx:
        return code, ctx.stdout, ctx.stderr


def run_with_wasmtime_wasi(
    wasm: Path,
    args: list[str],
    env: dict[str, str],
    preopens: list[tuple[Path, str, bool]],
    tmp_path: Path,
) -> tuple[int, bytes, bytes]:
    wasmtime = pytest.importorskip("wasmtime")
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    module = wasmtime.Module.from_file(engine, str(wasm))
    config = wasmtime.WasiConfig()
    config.argv = args
    config.env = list(env.items())
    config.stdout_file = str(tmp_path / "ref-stdout")
    config.stderr_file = str(tmp_path / "ref-stderr")
    for host, guest, mutable in preopens:
        config.preopen_dir(str(host), guest, mutable)
    store.set_wasi(config)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    instance = linker.instantiate(store, module)
    code = 0
    try:
        instance.exports(store)["_start"](store)
    except wasmtime.ExitTrap as exit:
        code = exit.code
    return code, (tmp_path / "ref-stdout").read_bytes(), (tmp_path / "ref-stderr").read_bytes()


def make(tree: Path, **kwargs: object) -> Guest:
    config = WasiConfig(
        preopens=[
            Preopen(host_path=tree / "data", guest_path="/data", read_only=False),
            Preopen(host_path=tree / "ro", guest_path="/ro"),
        ],
        **kwargs,  # type: ignore[arg-type]
    )
    return Guest(WasiContext(config))


def snapshot(root: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_file():
                out[rel] = p.read_bytes()
            else:
                out[rel] = "dir"
    return out


WASI_FUNCTIONS = [
    "args_get",
    "args_sizes_get",
    "environ_get",
    "environ_sizes_get",
    "clock_res_get",
    "clock_time_get",
    "fd_advise",
    "fd_allocate",
    "fd_close",
    "fd_datasync",
    "fd_fdstat_get",
    "fd_fdstat_set_flags",
    "fd_fdstat_set_rights",
    "fd_filestat_get",
    "fd_filestat_set_size",
    "fd_filestat_set_times",
    "fd_pread",
    "fd_prestat_get",
    "fd_prestat_dir_name",
    "fd_pwrite",
    "fd_read",
    "fd_readdir",
    "fd_renumber",
    "fd_seek",
    "fd_sync",
    "fd_tell",
    "fd_write",
    "path_create_directory",
    "path_filestat_get",
    "path_filestat_set_times",
    "path_link",
    "path_open",
    "path_readlink",
    "path_remove_directory",
    "path_rename",
    "path_symlink",
    "path_unlink_file",
    "poll_oneoff",
    "proc_exit",
    "proc_raise",
    "sched_yield",
    "random_get",
    "sock_accept",
    "sock_recv",
    "sock_send",
    "sock_shutdown",
]
