"""Build hooks: the cffi extension (cffi_modules), the bundled guest ELF files and the
guest SDK.

The guests are compiled by build_ext too, so that `pip install .` and the editable
install used by `make test` both produce them; they land in sandbox/_guests/. A wheel
also carries the SDK (guests/include, guests/sdk, guests/build.py) as sandbox/_sdk/ so
that `python -m sandbox build-guest` works after installation; an editable install uses
the repository's guests/ directly.
"""

import importlib.util
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class BuildExtWithGuests(build_ext):
    def run(self) -> None:
        super().run()
        # guests/build.py uses the standard library only.
        spec = importlib.util.spec_from_file_location("guest_build", ROOT / "guests" / "build.py")
        assert spec is not None and spec.loader is not None
        guest_build = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(guest_build)

        base = ROOT if self.inplace else Path(self.build_lib)
        guest_build.build_bundled(base / "sandbox" / "_guests")
        if not self.inplace:
            sdk = base / "sandbox" / "_sdk"
            for sub in ("include", "sdk", "aot"):
                shutil.copytree(ROOT / "guests" / sub, sdk / sub, dirs_exist_ok=True)
            shutil.copy2(ROOT / "guests" / "build.py", sdk / "build.py")
            # The AOT tier's runtime includes the engine ABI and its trap messages.
            (sdk / "wasm").mkdir(parents=True, exist_ok=True)
            for header in ("wasm_abi.h", "trap_messages.h"):
                shutil.copy2(ROOT / "guests" / "wasm" / header, sdk / "wasm" / header)


setup(
    cffi_modules=["native/build_native.py:ffibuilder"],
    cmdclass={"build_ext": BuildExtWithGuests},
)
