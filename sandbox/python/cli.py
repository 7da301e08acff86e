"""`python -m sandbox python`: run Python code in a micro-VM, in the spirit of `python`.

    python -m sandbox python -c CODE [ARGS...]
    python -m sandbox python FILE.py [ARGS...]          (options of FILE after --)
        [--timeout S] [--dir HOST[::GUEST]] [--dir-ro HOST[::GUEST]] [--package SPEC]
        [--tier interp|aot|auto] [--state FILE] [--save-state FILE]

The code runs as __main__ with sys.argv = ["-c" or FILE, *ARGS]; what it prints goes to
this process's stdout and stderr; the exit status is the code's (sys.exit), 1 after an
uncaught exception (its traceback on stderr) or another error, 2 for bad usage. No
directory is visible unless given; stdin is empty. `--tier aot` runs CPython compiled to
native code (docs/python.md "Tiers"): the first time on a machine it compiles it
(minutes), so `python -m sandbox python --tier aot -c pass` precompiles it.
`--save-state FILE` saves the interpreter's state after the code ran without an error
(imports, globals: PythonSnapshot.save), and `--state FILE` starts the code from such a
state instead of a fresh interpreter (its tier is the file's; `--package` and `--dir`
must give what it was saved with: docs/python.md "Saving a state").
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ..wasm.cli import add_dir_options, preopens


def add_python_parser(sub: Any) -> None:
    run = sub.add_parser(
        "python",
        help="run Python code (CPython 3.12 for WASI) in a micro-VM",
        description=__doc__.split("\n\n")[2].replace("\n", " "),
    )
    run.add_argument("-c", dest="code", metavar="CODE", help="program passed in as a string")
    run.add_argument("--timeout", type=float, help="time limit in seconds")
    add_dir_options(run)
    run.add_argument(
        "--package", action="append", default=[], metavar="SPEC", help="wheel or requirement"
    )
    run.add_argument(
        "--tier",
        choices=("interp", "aot", "auto"),
        help="interpret CPython's Wasm (default), or run it compiled to native code",
    )
    run.add_argument("--state", metavar="FILE", help="start from a state saved by --save-state")
    run.add_argument(
        "--save-state", metavar="FILE", help="save the state after the code ran without error"
    )
    run.add_argument("args", nargs="*", help="FILE.py (without -c) and its arguments")
    run.set_defaults(func=cmd_python)


def cmd_python(args: argparse.Namespace) -> int:
    from ..console import print_error
    from ..errors import SandboxError
    from . import PythonError, PythonExit, PythonSandbox, load_snapshot

    if args.state is not None and args.tier is not None:
        print("error: --tier is the saved state's (not given with --state)", file=sys.stderr)
        return 2
    try:
        if args.code is not None:
            code, filename, argv = args.code, "<string>", ["-c", *args.args]
        elif args.args:
            path = Path(args.args[0])
            code, filename, argv = path.read_text(), str(path), list(args.args)
        else:
            print("error: give -c CODE or FILE.py", file=sys.stderr)
            return 2
        packages = args.package or None
        if args.state is not None:
            snap = load_snapshot(args.state, packages=packages, preopens=preopens(args))
            sb = snap.spawn()
        else:
            sb = PythonSandbox(
                preopens=preopens(args), packages=packages, tier=args.tier or "interp"
            )
        with sb:
            sb.run(f"import sys\nsys.argv[:] = {argv!r}")
            try:
                sb.run(code, timeout=args.timeout, filename=filename)
                status = 0
            except PythonExit as exit:
                if isinstance(exit.code, str):
                    print(exit.code, file=sys.stderr)
                status = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
            except PythonError as exc:
                status = 1
                sb.last_stderr += exc.guest_traceback
            sys.stdout.write(sb.last_output)
            sys.stdout.flush()
            sys.stderr.write(sb.last_stderr)
            if args.save_state is not None:
                if status != 0:
                    print(f"state not saved: the code ended with status {status}", file=sys.stderr)
                else:  # (the output is written first: a failed save loses none of it)
                    sb.snapshot().save(args.save_state)
            return status
    except (SandboxError, ValueError, OSError) as exc:
        print_error(exc)
        return 1


def demo() -> None:
    """The demo's Python step: a host function, defined here, run in a micro-VM."""
    from .. import _reaper
    from . import PythonError, PythonSandbox

    def stats(values: list[int]) -> dict[str, float]:
        import statistics

        return {"mean": statistics.mean(values), "max": max(values)}

    def divide(a: float, b: float) -> float:
        return a / b

    t0 = time.perf_counter()
    with PythonSandbox() as sb:  # what Sandbox("python") returns
        first = (time.perf_counter() - t0) * 1e3
        print(
            f"Sandbox('python'): {first:.0f} ms (the first of a process: the interpreter "
            "starts once per machine, ~2 s, and is then read from the disk cache)"
        )
        print(f"sb.call(stats, [3, 1, 4, 1, 5]) = {sb.call(stats, [3, 1, 4, 1, 5])!r}")
        try:
            sb.call(divide, 1, 0)
        except PythonError as exc:
            print(f"sb.call(divide, 1, 0) -> PythonError({exc.type_name}: {exc.message})")
        t0 = time.perf_counter()
        for _ in range(50):
            sb.call(divide, 6, 3)
        warm = (time.perf_counter() - t0) / 50 * 1e6
        snap = sb.snapshot()
        t0 = time.perf_counter()
        with snap.spawn() as other:
            other.call(divide, 6, 3)
        spawn = (time.perf_counter() - t0) * 1e3
        _reaper.drain()  # the closed sandbox's VM is parked for the next one
        t0 = time.perf_counter()
        with snap.spawn() as other:
            other.call(divide, 6, 3)
        reused = (time.perf_counter() - t0) * 1e3
        print(f"warm call: {warm:.0f} us; a new sandbox from a snapshot to its first result: "
              f"{spawn:.1f} ms with a new VM, {reused:.2f} ms with a reused one")  # fmt: skip
