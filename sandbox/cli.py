"""The command-line interface: demo, call, info, build-guest, bench, wasm, serve, deploy.

Errors are one clear line on stderr and a non-zero exit status (1 for a sandbox error,
2 for bad usage); there are no tracebacks for expected failures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .abi import Signature, Tag, Value
from .console import print_error
from .deploy.cli import add_deploy_parser
from .host.cli import add_serve_parser
from .python.cli import add_python_parser
from .wasm.cli import add_wasm_parser

# -- call ------------------------------------------------------------------------------


def parse_arg(tag: Tag, text: str) -> object:
    """Converts a command-line argument to the Python value for parameter type `tag`."""
    if tag in (Tag.I32, Tag.U32, Tag.I64, Tag.U64):
        return int(text, 0)
    if tag in (Tag.F32, Tag.F64):
        return float(text)
    if tag is Tag.BOOL:
        lowered = text.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ValueError(f"not a bool: {text!r} (use true or false)")
    if tag is Tag.BYTES:
        return text.encode("utf-8")
    return text


def to_json(value: Value) -> object:
    if isinstance(value, bytes):
        try:
            return {"bytes": value.decode("utf-8")}
        except UnicodeDecodeError:
            return {"hex": value.hex()}
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return repr(value)
    return value


def _to_stderr(text: str) -> None:
    sys.stderr.write(text)


def cmd_call(args: argparse.Namespace) -> int:
    from . import Sandbox, SandboxConfig, SandboxError

    try:
        config = SandboxConfig(timeout=args.timeout) if args.timeout is not None else None
        with Sandbox(args.guest, config=config, output=_to_stderr) as sb:
            sig: Signature | None = sb.functions.get(args.function)
            if sig is not None and len(args.args) != len(sig.params):
                print(
                    f"error: {sig} takes {len(sig.params)} arguments, got {len(args.args)}",
                    file=sys.stderr,
                )
                return 2
            try:
                values = (
                    [parse_arg(t, a) for t, a in zip(sig.params, args.args, strict=True)]
                    if sig
                    else list(args.args)
                )
            except ValueError as exc:
                print(f"error: bad argument for {sig}: {exc}", file=sys.stderr)
                return 2
            result = sb.call(args.function, *values)
    except (SandboxError, ValueError, OSError) as exc:  # OSError: an unreadable guest file
        print_error(exc)
        return 1
    print(json.dumps(to_json(result)))
    return 0


# -- info ------------------------------------------------------------------------------


def cmd_info(args: argparse.Namespace) -> int:
    from . import KvmUnavailable, __version__
    from .guests import BUNDLED_DIR, bundled_guests
    from .kvm import REQUIRED_CAPABILITIES, Kvm, is_nested, kvm_module

    info: dict[str, object] = {
        "version": __version__,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "nested": is_nested(),
        "kvm_module": kvm_module() or None,
        "bundled_guests": bundled_guests(),
        "bundled_dir": str(BUNDLED_DIR),
    }
    try:
        kvm = Kvm.shared()
    except KvmUnavailable as exc:
        info["kvm"] = {"usable": False, "reason": str(exc)}
    else:
        caps = [
            "KVM_CAP_USER_MEMORY",
            "KVM_CAP_IMMEDIATE_EXIT",
            "KVM_CAP_EXT_CPUID",
            "KVM_CAP_XSAVE",
            "KVM_CAP_XCRS",
            "KVM_CAP_READONLY_MEM",
            "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2",
            "KVM_CAP_DIRTY_LOG_RING",
            "KVM_CAP_SYNC_REGS",
        ]
        info["kvm"] = {
            "usable": True,
            "path": kvm.path,
            "api_version": 12,
            "required_capabilities": sorted(REQUIRED_CAPABILITIES),
            "capabilities": {cap: kvm.check_extension(cap) for cap in caps},
            "max_vcpus": kvm.check_extension("KVM_CAP_MAX_VCPUS"),
            "memslots": kvm.check_extension("KVM_CAP_NR_MEMSLOTS"),
        }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    kvm_info = info["kvm"]
    assert isinstance(kvm_info, dict)
    print(
        f"sandbox {info['version']} on Python {info['python']}, "
        f"Linux {info['kernel']} ({info['machine']})"
    )
    nested = "yes (this Linux runs under a hypervisor)" if info["nested"] else "no"
    print(f"nested virtualization: {nested}; KVM module: {info['kvm_module'] or 'none found'}")
    if kvm_info["usable"]:
        print(f"KVM: usable at {kvm_info['path']}, API version {kvm_info['api_version']}")
        for cap, value in kvm_info["capabilities"].items():
            print(f"  {cap:36s} {value}")
    else:
        print(f"KVM: NOT usable: {kvm_info['reason']}")
    print(f"bundled guests: {', '.join(info['bundled_guests']) or 'none (reinstall the package)'}")  # type: ignore[arg-type]
    return 0 if kvm_info["usable"] else 1


# -- demo ------------------------------------------------------------------------------


def _median_us(fn: Callable[[], object], n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def cmd_demo(args: argparse.Namespace) -> int:
    from . import GuestAbort, GuestTrap, Sandbox, SandboxError, SandboxPool, _reaper, machines
    from .errors import CallTimeout

    def step(title: str) -> None:
        print(f"\n== {title}")

    try:
        step("Spawn a micro-VM and call a guest function")
        t0 = time.perf_counter()
        sb = Sandbox(host_functions={"shout": lambda s: s.upper() + "!"})
        result = sb.call("add", 1, 2)
        cold = (time.perf_counter() - t0) * 1e6
        print(
            f'Sandbox().call("add", 1, 2) = {result!r}   '
            f"({cold:.0f} us, the first in this process: "
            "it also opened /dev/kvm and loaded the guest)"
        )

        step("Values in and out")
        print(f'echo("héllo, wörld") = {sb.call("echo", "héllo, wörld")!r}')
        print(f"echo_bytes(bytes([0, 1, 255])) = {sb.call('echo_bytes', bytes([0, 1, 255]))!r}")
        print(f"fib(90) = {sb.call('fib', 90)!r}")
        print(f"echo_f64(3.14159) = {sb.call('echo_f64', 3.14159)!r}")
        print(f'hello("demo") = {sb.call("hello", "demo")!r}; the guest printed {sb.last_output!r}')

        step("State persists between calls in one sandbox, not across sandboxes")
        print(f"counter() x3 = {[sb.call('counter') for _ in range(3)]}")
        with Sandbox() as other:
            print(f"counter() in a new sandbox = {other.call('counter')!r}")

        step("The guest calls the host")
        print(f'call_host("shout", "hi") = {sb.call("call_host", "shout", "hi")!r}')

        step("Faults are contained: each raises a typed error, the host carries on")
        for kind in (
            "null",
            "wild_write",
            "exec_data",
            "ud2",
            "divzero",
            "stack_overflow",
            "bad_port",
            "abort",
        ):
            with Sandbox() as victim:
                try:
                    victim.call("fault", kind)
                except (GuestTrap, GuestAbort) as exc:
                    label = f"GuestTrap({exc.kind})" if isinstance(exc, GuestTrap) else "GuestAbort"
                    after = "poisoned" if victim.poisoned else "still usable"
                    print(f"fault({kind!r:17}) -> {label:30s} {after}: {exc}")
        with Sandbox() as victim:
            t0 = time.perf_counter()
            try:
                victim.call("fault", "spin_forever", timeout=0.1)
            except CallTimeout as exc:
                late = (time.perf_counter() - t0 - 0.1) * 1e3
                print(
                    f"fault('spin_forever') with timeout=0.1 -> CallTimeout "
                    f"{late:.1f} ms after the limit: {exc}"
                )

        step("Snapshots: freeze a sandbox, go back to it, start new ones from it")
        snap = sb.snapshot()
        print(f"snapshot taken; counter() = {sb.call('counter')!r}, {sb.call('counter')!r}")
        sb.restore(snap)
        print(f"restore(snapshot); counter() = {sb.call('counter')!r} again")
        with Sandbox.from_snapshot(snap) as twin:
            print(f"Sandbox.from_snapshot(snapshot).call('counter') = {twin.call('counter')!r}")
        with SandboxPool(size=2) as pool:
            fresh = [pool.call("counter") for _ in range(3)]
            print(f"SandboxPool: counter() x3 = {fresh} (every call in fresh state)")

        step("A Python function, sent as source, runs in CPython inside a micro-VM")
        from .python.cli import demo as python_demo

        python_demo()

        step("How long things take here (medians)")
        n = 20 if args.quick else 200
        warm = _median_us(lambda: sb.call("add", 1, 2), n * 5)
        host = _median_us(lambda: sb.call("call_host", "shout", "x"), n * 5)

        def restore_and_call() -> None:
            sb.restore(snap)
            sb.call("add", 1, 2)

        restore_us = _median_us(restore_and_call, n * 5)
        spawned: list[Sandbox] = []

        def spawn() -> None:
            s = Sandbox()
            spawned.append(s)
            s.call("add", 1, 2)

        def spawn_median() -> float:
            times = []
            for _ in range(n):  # teardown (close) is not part of a spawn: it runs between
                times.append(_median_us(spawn, 1))
                spawned.pop().close()
                _reaper.drain()
            return statistics.median(times)

        spawn_us = spawn_median()  # the closed sandbox's VM is reused (machines.py)
        idle, machines.MAX_IDLE = machines.MAX_IDLE, 0
        machines.release_idle()
        try:
            new_vm_us = spawn_median()
        finally:
            machines.MAX_IDLE = idle
        spin_n = 100_000_000
        t0 = time.perf_counter()
        sb.call("spin", spin_n)
        spin_ms = (time.perf_counter() - t0) * 1e3
        print(f"spawn (Sandbox() to first result):      {spawn_us:8.0f} us (its VM reused)")
        print(f"the same with a new VM:                 {new_vm_us:8.0f} us")
        print(f"warm call add(1, 2):                    {warm:8.1f} us")
        print(f"restore(snapshot) + add(1, 2):          {restore_us:8.1f} us")
        print(f"call with one host call:                {host:8.1f} us")
        print(f"spin({spin_n:,}) in the guest:        {spin_ms:8.1f} ms")
        sb.close()
    except SandboxError as exc:
        print_error(exc)
        return 1
    print("\nDone. Run `python -m sandbox call add 2 3` or see README.md for more.")
    return 0


# -- build-guest -----------------------------------------------------------------------


def cmd_build_guest(args: argparse.Namespace) -> int:
    from .errors import GuestBuildError
    from .sdk import build_guest

    try:
        print(build_guest(args.sources, args.output))
    except GuestBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


# -- bench -------------------------------------------------------------------------------


def cmd_bench(args: argparse.Namespace) -> int:
    # The suite and its report tooling are development tools: they live in the source
    # checkout's benches/ (benches/report/), not in the runtime package.
    benches = Path(__file__).resolve().parent.parent / "benches"
    if not (benches / "report" / "__init__.py").is_file():
        print(
            f"error: `python -m sandbox bench` runs the benchmark suite of a source checkout "
            f"and there is none at {benches}: run it from a clone of the repository with the "
            "package installed in place (pip install -e '.[dev]')",
            file=sys.stderr,
        )
        return 2
    import importlib

    sys.path.insert(0, str(benches))
    report = importlib.import_module("report")
    return int(report.run_bench(args.quick, args.out))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox",
        description="Run functions in hardware-isolated KVM micro-VMs.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo", help="spawn sandboxes, call functions, show what happens and how fast"
    )
    demo.add_argument("--quick", action="store_true", help="fewer timing rounds")
    demo.set_defaults(func=cmd_demo)

    call = sub.add_parser(
        "call",
        help="call one guest function and print its result as JSON",
        description="Call FUNCTION in a fresh sandbox; ARGS are converted by the function's "
        "declared parameter types (ints accept 0x.., bools true/false). The result is printed "
        'as JSON (bytes as {"bytes": text} or {"hex": ...}); guest output goes to stderr.',
    )
    call.add_argument("--guest", help="guest ELF path or bundled guest name (default: demo)")
    call.add_argument("--timeout", type=float, help="time limit in seconds")
    call.add_argument("function")
    call.add_argument("args", nargs="*")
    call.set_defaults(func=cmd_call)

    info = sub.add_parser("info", help="is KVM usable here? nested? which capabilities?")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=cmd_info)

    build = sub.add_parser(
        "build-guest", help="compile C sources with the guest SDK into a guest ELF"
    )
    build.add_argument("sources", nargs="+", type=Path)
    build.add_argument("-o", "--output", type=Path, required=True)
    build.set_defaults(func=cmd_build_guest)

    bench = sub.add_parser(
        "bench",
        help="run the benchmark suite (ours vs the KVM floor and peers) and write a report",
        description="Run benches/ (pytest-benchmark) from this source checkout: every "
        "scenario against the C KVM floor or a peer, measured in the same run. Writes "
        "results.json, rows.json, report.md and PNG plots into DIR.",
    )
    bench.add_argument("--quick", action="store_true", help="fewer rounds (a smoke test)")
    bench.add_argument(
        "--out",
        type=Path,
        default=Path("bench-out"),
        metavar="DIR",
        help="output directory (default: ./bench-out)",
    )
    bench.set_defaults(func=cmd_bench)

    add_wasm_parser(sub)
    add_python_parser(sub)
    add_serve_parser(sub)
    add_deploy_parser(sub)
    return parser


def _looks_like_option(arg: str) -> bool:
    return arg.startswith("-") and not arg[1:2].isdigit() and arg != "-"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # Everything after "--" is the command's positional ARGS (argparse's own handling of
    # "--" does not reach a nested subcommand's positionals).
    argv = list(sys.argv[1:] if argv is None else argv)
    rest: list[str] | None = None
    if "--" in argv:
        cut = argv.index("--")
        argv, rest = argv[:cut], argv[cut + 1 :]
    # Positional ARGS may also follow the options (`wasm run m.wasm --invoke f 1 2`).
    args, extra = parser.parse_known_args(argv)
    takes_args = isinstance(getattr(args, "args", None), list)
    if extra and (not takes_args or any(_looks_like_option(e) for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if rest is not None and not takes_args:
        parser.error("unrecognized arguments: --")
    if takes_args:
        args.args = [*args.args, *extra, *(rest or [])]
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
