"""The errors a Python sandbox adds to the runtime's (sandbox/errors.py)."""

from __future__ import annotations

from typing import ClassVar

from ..errors import SandboxError


class PythonError(SandboxError):
    """Guest code raised an exception that it did not catch. `type_name` is its class's
    qualified name ("ValueError", "MemoryError", "RecursionError", "json.JSONDecodeError"
    is "JSONDecodeError" with `module` "json.decoder"), `message` its str(),
    `guest_traceback` the formatted traceback (file names and line numbers of the host
    source the function came from). The sandbox stays usable: the interpreter caught
    it."""

    poisons: ClassVar[bool] = False

    def __init__(self, type_name: str, module: str, message: str, guest_traceback: str) -> None:
        text = f"{type_name}: {message}" if message else type_name
        if guest_traceback:
            text += "\n\nguest traceback:\n" + guest_traceback.rstrip()
        super().__init__(text)
        self.type_name = type_name
        self.module = module
        self.message = message
        self.guest_traceback = guest_traceback


class PythonExit(PythonError):
    """Guest code raised SystemExit (sys.exit(code): `code`, an int, None or a str), or
    called os._exit(code) (then the interpreter did not unwind: the sandbox is poisoned
    until restored)."""

    def __init__(
        self, code: int | str | None, guest_traceback: str = "", *, unwound: bool = True
    ) -> None:
        super().__init__(
            "SystemExit", "builtins", "" if code is None else str(code), guest_traceback
        )
        self.code = code
        self.unwound = unwound


class PythonCrash(SandboxError):
    """The interpreter itself stopped: a Wasm trap inside CPython (`kind`:
    "stack_exhausted" for a C stack overflow, "unreachable" for abort(), "memory_oob",
    ...), or it broke the runtime's protocol. Its state is lost: the sandbox is
    poisoned until restored (a pool, or reset="per_call", does that itself). The trap is
    chained as `__cause__`."""

    poisons: ClassVar[bool] = True

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class PythonStartError(SandboxError):
    """The interpreter did not start (a package failed to import, the build is not the
    one this runtime knows...). The message carries the end of its stderr."""
