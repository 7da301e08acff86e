"""The WebAssembly spec test suite, run inside the VM by the Wasm engine guest.

Each `.wast` file of ../shared/wasm-spec-testsuite (the Wasm 2.0 core suite) is converted
by `wast2json` (Debian's wabt) and every command is run against one engine sandbox per
file: modules are loaded and instantiated in the engine (validated by wasmtime on the
host first, as Sandbox.from_wasm does), `register` makes a module importable, and each
assertion is checked:

    assert_return        results equal (floats bit for bit; nan:canonical/arithmetic)
    assert_trap          a WasmTrap whose message starts with the expected text
    assert_exhaustion    a WasmTrap "call stack exhausted"
    assert_invalid       load() raises WasmModuleError (binary modules)
    assert_malformed     load() raises WasmModuleError (binary modules); the text-format
                         ones (`module quote`) test a .wat parser, which this runtime does
                         not have: they are counted as "text" and not run
    assert_unlinkable    instantiate() raises WasmLinkError
    assert_uninstantiable  instantiate() raises WasmTrap

The SIMD files (simd_*.wast, Wasm 2.0's fixed-width SIMD) run like the others; v128
values are (0x7b, 128-bit int) pairs, compared lane by lane (spec_common.matches).

    python tests/wasm/spec_runner.py [--table docs/wasm-spec.md] [FILE.wast ...]

prints (or writes) the per-file table; tests/wasm/test_wasm_spec.py runs the same in CI.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spec_common import ROOT, convert, matches, spec_files, value_bits

ASSERTIONS = (
    "assert_return",
    "assert_trap",
    "assert_exhaustion",
    "assert_invalid",
    "assert_malformed",
    "assert_unlinkable",
    "assert_uninstantiable",
)
CALL_TIMEOUT = 10.0  # seconds per command; the suite's slowest take milliseconds


@dataclass
class FileResult:
    name: str
    passed: int = 0
    failed: int = 0
    text_skipped: int = 0
    error: str = ""
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return self.passed + self.failed

    @property
    def rate(self) -> float:
        return self.passed / self.total if self.total else 1.0 if not self.error else 0.0


class _Runner:
    def __init__(self, json_dir: Path, guest: Path | None) -> None:
        self.dir = json_dir
        self.guest = guest
        self.engine = self.new_engine()
        self.current: int | None = None
        self.named: dict[str, int] = {}
        self.setup: list[dict[str, Any]] = []  # module/register commands, for a replay

    def close(self) -> None:
        self.engine.close()

    def new_engine(self) -> Any:
        from sandbox.wasm import WasmSandbox

        return WasmSandbox.engine(guest=self.guest)

    def restart(self) -> None:
        """A new engine with the modules and registrations so far (after a poisoning)."""
        self.engine.close()
        self.engine = self.new_engine()
        self.current, self.named = None, {}
        for cmd in self.setup:
            try:
                self.run_setup(cmd)
            except Exception:
                pass

    def instantiate(self, filename: str) -> int:
        handle, module = self.engine.load(self.dir / filename)
        return self.engine.instantiate(handle, module)

    def run_setup(self, cmd: dict[str, Any]) -> None:
        if cmd["type"] == "module":
            self.current = self.instantiate(cmd["filename"])
            if "name" in cmd:
                self.named[cmd["name"]] = self.current
        else:
            instance = self.named[cmd["name"]] if "name" in cmd else self.current
            assert instance is not None
            self.engine.register(instance, cmd["as"])

    def action(self, action: dict[str, Any]) -> list[tuple[int, int]]:
        instance = self.named[action["module"]] if "module" in action else self.current
        assert instance is not None, "no module instantiated"
        if action["type"] == "get":
            return [self.engine.get(instance, action["field"])]
        args = [value_bits(a) for a in action["args"]]
        return self.engine.invoke(instance, action["field"], args, timeout=CALL_TIMEOUT)  # type: ignore[arg-type]


def compiled_guest(spec: dict[str, Any], out: Path) -> Path | None:
    """The AOT tier's guest of every module the file instantiates (or tries to), compiled
    into one (sandbox.wasm.aot.compile_modules), so that they link as in the engine;
    None where the file has no such module (only invalid or malformed ones)."""
    from sandbox.wasm import WasmModuleError, aot
    from sandbox.wasm.module import load

    modules = []
    for cmd in spec["commands"]:
        if cmd["type"] in ("module", "assert_unlinkable", "assert_uninstantiable"):
            try:
                modules.append(load(out / cmd["filename"]))
            except WasmModuleError:
                pass  # fails as the assertion that loads it expects, or not (a failure)
    return aot.compile_modules(modules) if modules else None


def run_file(wast: Path, work: Path, tier: str = "interp") -> FileResult:
    """Runs a .wast file in the interpreter engine, or (tier "aot") in the guest of its
    modules compiled (compiled_guest). Invalid and malformed modules must be refused by
    the engine's `load` (the host's validator, then the engine's decoder); in the AOT
    tier by the host's loader, which is what refuses them before any compile."""
    from sandbox import CallTimeout, GuestTrap, SandboxError, SandboxPoisoned
    from sandbox.wasm import WasmLinkError, WasmModuleError, WasmTrap
    from sandbox.wasm.module import load

    result = FileResult(wast.name)
    t0 = time.perf_counter()
    out = work / wast.stem
    out.mkdir(parents=True, exist_ok=True)
    try:
        spec = convert(wast, out)
        guest = compiled_guest(spec, out) if tier == "aot" else None
    except (RuntimeError, SandboxError) as exc:
        result.error = str(exc)
        return result
    runner = _Runner(out, guest)
    # A module assertion: what is done with the module, the error it must raise, and
    # what happened when it did not.
    refuse: Callable[[str], object] = (
        (lambda f: load(out / f)) if tier == "aot" else (lambda f: runner.engine.load(out / f))
    )
    module_assertions: dict[str, tuple[Callable[[str], object], type[Exception], str]] = {
        "assert_invalid": (refuse, WasmModuleError, "loaded"),
        "assert_malformed": (refuse, WasmModuleError, "loaded"),
        "assert_unlinkable": (runner.instantiate, WasmLinkError, "linked"),
        "assert_uninstantiable": (runner.instantiate, WasmTrap, "instantiated"),
    }
    try:
        for cmd in spec["commands"]:
            kind = cmd["type"]
            line = cmd.get("line")
            ok, why = True, ""
            try:
                if kind in ("module", "register"):
                    runner.setup.append(cmd)
                    runner.run_setup(cmd)
                    continue
                if kind == "action":
                    runner.action(cmd["action"])
                    continue
                if kind not in ASSERTIONS:
                    continue
                if (
                    kind in ("assert_invalid", "assert_malformed")
                    and cmd["module_type"] != "binary"
                ):
                    result.text_skipped += 1
                    continue
                if kind in module_assertions:
                    step, error, done = module_assertions[kind]
                    try:
                        step(cmd["filename"])
                        ok, why = False, f"{done}, expected {cmd['text']!r}"
                    except error:
                        pass
                elif kind == "assert_return":
                    got = runner.action(cmd["action"])
                    expected = cmd["expected"]
                    if len(got) != len(expected) or not all(
                        matches(e, g) for e, g in zip(expected, got, strict=True)
                    ):
                        ok, why = False, f"got {got}, expected {expected}"
                else:  # assert_trap, assert_exhaustion
                    try:
                        got = runner.action(cmd["action"])
                        ok, why = False, f"returned {got}, expected trap {cmd['text']!r}"
                    except WasmTrap as trap:
                        message = str(trap).split("wasm trap: ", 1)[-1]
                        if not message.startswith(cmd["text"]):
                            ok, why = False, f"trap {message!r}, expected {cmd['text']!r}"
            except (GuestTrap, CallTimeout, SandboxPoisoned) as exc:
                ok, why = False, f"{type(exc).__name__}: {exc}"
                if runner.engine.poisoned or isinstance(exc, (CallTimeout, SandboxPoisoned)):
                    runner.restart()
            except (SandboxError, AssertionError, KeyError, ValueError) as exc:
                ok, why = False, f"{type(exc).__name__}: {exc}"
            if ok:
                result.passed += 1
            else:
                result.failed += 1
                result.failures.append(f"line {line}: {kind}: {why}"[:400])
    finally:
        runner.close()
        result.seconds = time.perf_counter() - t0
    return result


def run_suite(files: list[Path]) -> Iterator[FileResult]:
    with tempfile.TemporaryDirectory(prefix="wasm-spec-") as tmp:
        for wast in files:
            yield run_file(wast, Path(tmp))


def table(results: list[FileResult]) -> str:
    lines = [
        "| file | passed | failed | rate | text-format asserts (not run) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        rate = f"{100 * r.rate:.1f}%" if not r.error else f"error: {r.error[:60]}"
        lines.append(f"| {r.name} | {r.passed} | {r.failed} | {rate} | {r.text_skipped} |")
    passed = sum(r.passed for r in results)
    total = sum(r.total for r in results)
    lines.append(
        f"| **all {len(results)} files** | {passed} | {total - passed} | "
        f"{100 * passed / max(total, 1):.2f}% | {sum(r.text_skipped for r in results)} |"
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path, help=".wast files (default: the suite)")
    parser.add_argument("--table", type=Path, help="write the markdown table to this file")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each failure")
    args = parser.parse_args(argv)
    if shutil.which("wast2json") is None:
        print("wast2json not found: apt-get install wabt", file=sys.stderr)
        return 2
    files = args.files or spec_files()
    results = []
    for r in run_suite(files):
        results.append(r)
        print(f"{r.name:32} {r.passed:6} passed {r.failed:5} failed  {r.seconds:6.1f} s {r.error}")
        if args.verbose:
            for f in r.failures[:30]:
                print("    " + f)
    text = table(results)
    if args.table:
        header = args.table.read_text().split("<!-- table -->")[0] if args.table.exists() else ""
        args.table.write_text(header + "<!-- table -->\n\n" + text)
    else:
        print(text)
    return 0 if all(r.rate >= 0.99 and not r.error for r in results) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
