"""`python -m sandbox wasm run`: run a Wasm module in a micro-VM, in the spirit of
`wasmtime run`.

    python -m sandbox wasm run prog.wasm [--dir HOST[::GUEST]] [--env K=V]
                                         [--invoke NAME] [-- ARGS...]

Without --invoke the module is a WASI command: its `_start` runs with ARGS (argv[0] is
the file's name), the environment given by --env only, the directories given by --dir
(read-write, like wasmtime; --dir-ro for read-only), stdin read from this process, and
stdout/stderr passed through; the exit status is the program's exit code. With --invoke
the export NAME is called with ARGS converted by its signature and each result printed
on its own line. A trap prints "error: wasm trap: <message> (<kind>)" and exits 134;
other errors print one line and exit 1 (2 for bad usage).

    python -m sandbox wasm compile prog.wasm [--seconds S] [--memory GIB] [--jobs N]

compiles the module for the AOT tier into the cache (docs/aot.md) under the limits given
(per compiler process: wall-clock seconds, GiB of address space; N compilers at once),
so that every later `tier="aot"` or `"auto"` run of it is native at once; it prints the
compiled guest's path.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .wasi import Preopen


def add_wasm_parser(sub: Any) -> None:
    wasm = sub.add_parser("wasm", help="run Wasm modules in micro-VMs (WASI preview1)")
    wasm_sub = wasm.add_subparsers(dest="wasm_command", required=True, metavar="COMMAND")
    run = wasm_sub.add_parser(
        "run",
        help="run a WASI command or invoke an export",
        description=__doc__.split("\n\n")[2].replace("\n", " "),
    )
    run.add_argument("module", type=Path, help="the .wasm file")
    add_dir_options(run)
    run.add_argument("--env", action="append", default=[], metavar="K=V", help="set a variable")
    run.add_argument("--invoke", metavar="NAME", help="call this export instead of _start")
    run.add_argument("--timeout", type=float, help="time limit in seconds")
    run.add_argument(
        "--tier",
        choices=("interp", "aot", "auto"),
        default="interp",
        help="interpret (default), or run the module compiled to native code (docs/aot.md)",
    )
    run.add_argument("args", nargs="*", help="program arguments (after --)")
    run.set_defaults(func=cmd_wasm_run)
    compile_ = wasm_sub.add_parser(
        "compile",
        help="compile a module for the AOT tier into the cache",
        description=__doc__.split("\n\n")[4].replace("\n", " "),
    )
    compile_.add_argument("module", type=Path, help="the .wasm file")
    compile_.add_argument("--seconds", type=float, default=900.0, help="per compiler (900)")
    compile_.add_argument("--memory", type=float, default=8.0, help="GiB per compiler (8)")
    compile_.add_argument("--jobs", type=int, help="compilers at once (default: min(4, CPUs))")
    compile_.set_defaults(func=cmd_wasm_compile)


def add_dir_options(parser: Any) -> None:
    """--dir and --dir-ro, read by `preopens` (the python command has them too)."""
    parser.add_argument(
        "--dir",
        action="append",
        default=[],
        metavar="HOST[::GUEST]",
        help="preopen HOST as GUEST (default: the same path), read-write",
    )
    parser.add_argument(
        "--dir-ro", action="append", default=[], metavar="HOST[::GUEST]", help="read-only"
    )


def preopens(args: argparse.Namespace) -> list[Preopen]:
    """The directories of --dir (read-write) and --dir-ro (read-only); ValueError for a
    HOST that is not a directory."""
    from .wasi import Preopen

    def preopen(spec: str, read_only: bool) -> Preopen:
        host, _, guest = spec.partition("::")
        if not Path(host).is_dir():
            raise ValueError(f"--dir {spec}: {host!r} is not a directory")
        return Preopen(host_path=host, guest_path=guest or host, read_only=read_only)

    return [preopen(d, False) for d in args.dir] + [preopen(d, True) for d in args.dir_ro]


def _parse_arg(t: Any, text: str) -> object:
    from .abi import ValType

    if t in (ValType.I32, ValType.I64):
        return int(text, 0)
    if t in (ValType.F32, ValType.F64):
        return float(text)
    return None if text == "null" else int(text, 0)


def cmd_wasm_run(args: argparse.Namespace) -> int:
    from ..console import print_error
    from ..errors import SandboxError
    from . import WasiConfig, WasmTrap, from_wasm
    from .module import FuncType

    try:
        env = {}
        for item in args.env:
            key, eq, value = item.partition("=")
            if not eq or not key:
                raise ValueError(f"--env {item!r}: expected K=V")
            env[key] = value
        wasi = WasiConfig(
            args=[args.module.name, *args.args] if not args.invoke else [args.module.name],
            env=env,
            stdin="inherit",
            stdout="inherit",
            stderr="inherit",
            preopens=preopens(args),
        )
        with from_wasm(args.module, wasi=wasi, tier=args.tier) as sb:
            if args.invoke:
                export = sb.exports.get(args.invoke)
                if export is None or export.kind != "func" or not isinstance(export.type, FuncType):
                    raise ValueError(f"the module exports no function {args.invoke!r}")
                params = export.type.params
                if len(args.args) != len(params):
                    raise ValueError(
                        f"{args.invoke} takes {len(params)} arguments, got {len(args.args)}"
                    )
                values = [_parse_arg(t, a) for t, a in zip(params, args.args, strict=True)]
                result = sb.call(args.invoke, *values, timeout=args.timeout)
                if result is not None:
                    for value in result if isinstance(result, tuple) else [result]:
                        print(value)
                return 0
            if "_start" not in sb.exports:
                funcs = ", ".join(n for n, e in sb.exports.items() if e.kind == "func")
                raise ValueError(
                    "the module is not a WASI command (it exports no _start); call an "
                    f"export with --invoke NAME (exports: {funcs or 'none'})"
                )
            return sb.run(timeout=args.timeout)
    except WasmTrap as trap:
        print(f"error: {trap} ({trap.kind})", file=sys.stderr)
        return 134
    except (SandboxError, ValueError, OSError) as exc:
        print_error(exc)
        return 1


def cmd_wasm_compile(args: argparse.Namespace) -> int:
    import dataclasses
    import time

    from ..console import print_error
    from ..errors import SandboxError
    from . import aot
    from .module import load

    try:
        if args.seconds <= 0 or args.memory <= 0 or (args.jobs is not None and args.jobs < 1):
            raise ValueError("--seconds, --memory and --jobs must be positive")
        limits = aot.Limits(seconds=args.seconds, memory=int(args.memory * (1 << 30)))
        if args.jobs is not None:
            limits = dataclasses.replace(limits, jobs=args.jobs)
        started = time.perf_counter()
        path = aot.compile_module(load(args.module), limits)
        elapsed = time.perf_counter() - started
        print(f"{path} ({path.stat().st_size} bytes, {elapsed:.1f} s)")
        return 0
    except (SandboxError, ValueError, OSError) as exc:
        print_error(exc)
        return 1
