"""Python functions in the micro-VM: CPython for WASI in the Wasm engine guest.

from sandbox import Sandbox

def add(a, b):
    return a + b

with Sandbox("python") as sb:
    assert sb.call(add, 1, 2) == 3

Importing this package is cheap (nothing is started or read): the interpreter starts,
once per process and settings, at the first `Sandbox("python")`.
"""

from .. import kinds
from ..errors import PythonCrash, PythonError, PythonExit, PythonStartError
from .decorator import sandboxed
from .sandbox import PythonSandbox, PythonSnapshot, load_snapshot

kinds.register("python", PythonSandbox, constructor=True, builtin=True)

__all__ = [
    "PythonCrash",
    "PythonError",
    "PythonExit",
    "PythonSandbox",
    "PythonSnapshot",
    "PythonStartError",
    "load_snapshot",
    "sandboxed",
]
