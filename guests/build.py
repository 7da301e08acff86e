"""Build guest ELF files with the system C compiler.

A guest is a static, position-independent, freestanding x86-64 ELF: the guest's own C
sources linked with the SDK in guests/sdk/. Used by the package build (setup.py), by the
tests (to build guests with deliberate defects) and by `python -m sandbox build-guest`.
Standard library only: setup.py runs it before anything is installed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

GUESTS_DIR = Path(__file__).resolve().parent
INCLUDE_DIR = GUESTS_DIR / "include"
SDK_SOURCES = sorted((GUESTS_DIR / "sdk").glob("*.[cS]"))

# The guest runs in ring 3 with no kernel: no stack protector (no TLS canary), no CET
# landing pads, no unwind tables; SSE is available (the host enables it).
CFLAGS = [
    "-std=gnu11",
    "-O2",
    "-Wall",
    "-Wextra",
    "-ffreestanding",
    "-fPIE",
    "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables",
    "-fno-exceptions",
    "-fcf-protection=none",
    "-fno-plt",
    "-mno-red-zone",
]
# static-pie: one image the host relocates (R_X86_64_RELATIVE only) to where it loads it.
LDFLAGS = [
    "-static-pie",
    "-nostdlib",
    "-Wl,-z,max-page-size=4096",
    "-Wl,-z,noexecstack",
    "-Wl,--build-id=none",
    "-Wl,-z,norelro",
    "-Wl,--hash-style=gnu",
]

# The guests bundled with the package: name -> sources relative to GUESTS_DIR.
BUNDLED = {
    "demo": ["demo/demo.c"],
    "wasm": sorted(f"wasm/{p.name}" for p in (GUESTS_DIR / "wasm").glob("*.c")),
}


class GuestBuildError(RuntimeError):
    """The C compiler failed; the message carries its output."""


def compiler() -> str:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise GuestBuildError("no C compiler found: install gcc (apt-get install gcc)")
    return cc


def build_guest(
    sources: list[Path | str],
    output: Path | str,
    *,
    extra_cflags: list[str] | None = None,
) -> Path:
    """Compiles `sources` with the SDK into the guest ELF `output` and returns its path."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        compiler(),
        *CFLAGS,
        *(extra_cflags or []),
        f"-I{INCLUDE_DIR}",
        *LDFLAGS,
        "-o",
        str(output) + ".tmp",
        *[str(s) for s in SDK_SOURCES],
        *[str(s) for s in sources],
        "-lgcc",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise GuestBuildError(f"guest build failed:\n$ {' '.join(cmd)}\n{proc.stderr}")
    os.replace(str(output) + ".tmp", output)
    return output


def build_bundled(out_dir: Path | str) -> list[Path]:
    """Builds every bundled guest into `out_dir` as `<name>.elf`."""
    out_dir = Path(out_dir)
    return [
        build_guest([GUESTS_DIR / s for s in srcs], out_dir / f"{name}.elf")
        for name, srcs in BUNDLED.items()
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build a sandbox guest ELF.")
    parser.add_argument("sources", nargs="*", type=Path, help="guest C sources")
    parser.add_argument("-o", "--output", type=Path, help="output ELF path")
    parser.add_argument(
        "--bundled", type=Path, metavar="DIR", help="build the bundled guests into DIR"
    )
    args = parser.parse_args(argv)
    try:
        if args.bundled:
            for path in build_bundled(args.bundled):
                print(path)
        if args.sources:
            if not args.output:
                parser.error("-o/--output is required with sources")
            print(build_guest(args.sources, args.output))
    except GuestBuildError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
