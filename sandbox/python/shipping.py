"""Host functions shipped to the guest as source: `ship(fn)` gives the payload the guest
runtime defines the function from, and a key that identifies it.

What goes: the function's own source (inspect.getsource; decorators blanked out, line
numbers kept, so tracebacks point at the user's file and line), and for every global or
free variable its code reads (found in the bytecode, nested functions included):

- a module: imported by name in the guest (`import json as j` travels as ("j", "json"));
- a function, class or other object of an importable module (the standard library, a
  package given to the sandbox): imported from it (`from math import sqrt`);
- another plain function of the user's (not from such a module): shipped as source too;
- a value the codec carries (numbers, strings, bytes, lists, dicts, ...): sent as is.

Anything else (an open file, a lock, an instance of the user's class, a lambda, a
function that assigns to a closure variable...) is an ArgumentError that names it and
says what to do. Builtins are the guest's own.
"""

from __future__ import annotations

import ast
import builtins
import dis
import hashlib
import inspect
import sys
import textwrap
import types
import weakref
from dataclasses import dataclass
from typing import Any

from ..errors import ArgumentError
from .codec import CodecError, dumps, plain

_GLOBAL_OPS = frozenset({"LOAD_GLOBAL", "LOAD_NAME", "STORE_GLOBAL", "DELETE_GLOBAL"})
MAX_HELPERS = 64


@dataclass(frozen=True)
class Shipped:
    """A function ready to send: `key` (a digest of everything below) and `payload`
    (the guest runtime's [name, filename, first line, source, values, imports,
    helpers])."""

    key: str
    payload: list[Any]


_analysis: weakref.WeakKeyDictionary[types.CodeType, tuple[str, str, int, frozenset[str], bool]]
_analysis = weakref.WeakKeyDictionary()


def _analyse(fn: types.FunctionType) -> tuple[str, str, int, frozenset[str], bool]:
    """(source, filename, first line, global names, stores to a closure variable) of a
    function's code, computed once per code object."""
    found = _analysis.get(fn.__code__)
    if found is None:
        source, filename, first = _source(fn)
        names, stores_free = _code_names(fn.__code__)
        found = _analysis[fn.__code__] = (source, filename, first, frozenset(names), stores_free)
    return found


def _code_names(code: types.CodeType) -> tuple[set[str], bool]:
    """Global names `code` (and the code nested in it) uses; whether it stores to a
    closure variable of its own function."""
    names: set[str] = set()
    stores_free = False
    todo = [code]
    while todo:
        c = todo.pop()
        for ins in dis.get_instructions(c):
            if ins.opname in _GLOBAL_OPS:
                names.add(str(ins.argval))
            elif ins.opname == "STORE_DEREF" and c is code and ins.argval in code.co_freevars:
                stores_free = True
        todo.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
    return names, stores_free


def _source(fn: types.FunctionType) -> tuple[str, str, int]:
    """(source, filename, first line) of `fn`, decorators blanked (line count kept)."""
    what = f"{fn.__qualname__}"
    if fn.__name__ == "<lambda>":
        raise ArgumentError(
            f"{what} is a lambda, whose source cannot be sent on its own: define it with def"
        )
    try:
        lines, first = inspect.getsourcelines(fn)
        filename = inspect.getsourcefile(fn) or fn.__code__.co_filename
    except (OSError, TypeError) as exc:
        raise ArgumentError(
            f"the source of {what} is not available ({exc}); define it in a file, or "
            "send its text with sb.run(code) and call it by name"
        ) from None
    source = textwrap.dedent("".join(lines))
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ArgumentError(f"the source of {what} does not parse on its own: {exc}") from None
    node = tree.body[0] if tree.body else None
    if isinstance(node, ast.AsyncFunctionDef):
        raise ArgumentError(f"{what} is a coroutine function: the sandbox calls plain functions")
    if not isinstance(node, ast.FunctionDef):
        raise ArgumentError(f"the source of {what} is not a def statement")
    if node.decorator_list:
        out = source.splitlines(keepends=True)
        for i in range(node.decorator_list[0].lineno - 1, node.lineno - 1):
            out[i] = "\n"
        source = "".join(out)
    return source, filename, max(first, 1)


def _importable(obj: object, allowed: frozenset[str]) -> tuple[str, str] | None:
    """(module, attribute path) for an object the guest can import, else None."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname:
        return None
    top = module.partition(".")[0]
    if top not in sys.stdlib_module_names and top not in allowed:
        return None
    return module, qualname


def ship(fn: object, *, packages: frozenset[str] = frozenset()) -> Shipped:
    """The payload of `fn` (a plain function). Raises ArgumentError for what cannot be
    sent (see the module docstring). `packages`: top-level names importable in the
    guest besides the standard library."""
    if isinstance(fn, types.MethodType):
        raise ArgumentError(
            f"{fn.__qualname__} is a bound method: call a plain function (pass the object's "
            "data as arguments)"
        )
    if not isinstance(fn, types.FunctionType):
        raise ArgumentError(
            f"call() takes a function defined with def, or the name of a function defined "
            f"in the sandbox, not {type(fn).__name__}"
        )
    seen: dict[types.FunctionType, list[Any]] = {}
    payload = _payload(fn, packages, seen, fn.__qualname__)
    key = hashlib.sha256(dumps(payload)).hexdigest()[:32]
    return Shipped(key, payload)


def _payload(
    fn: types.FunctionType,
    packages: frozenset[str],
    seen: dict[types.FunctionType, list[Any]],
    root: str,
) -> list[Any]:
    source, filename, first, names, stores_free = _analyse(fn)
    if stores_free:
        raise ArgumentError(
            f"{fn.__qualname__} assigns to a variable of its enclosing function (nonlocal), "
            "which cannot live in the sandbox: return the new value instead"
        )
    values: dict[str, Any] = {}
    imports: list[list[Any]] = []
    helpers: list[list[Any]] = []
    seen[fn] = []
    scope: dict[str, object] = {}
    for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=True):
        try:
            scope[name] = cell.cell_contents
        except ValueError:
            raise ArgumentError(
                f"{fn.__qualname__} uses {name}, which is not assigned yet where it is defined"
            ) from None
    for name in sorted(names | set(scope)):
        if name in scope:
            obj = scope[name]
        elif name in fn.__globals__:
            obj = fn.__globals__[name]
        else:
            continue  # a builtin, or a name the function assigns before reading
        if name == fn.__name__ and obj is fn:
            continue  # recursion: the def binds it in the guest
        if isinstance(obj, types.ModuleType):
            imports.append([name, obj.__name__, None])
            continue
        where = _importable(obj, packages)
        if where is not None and (callable(obj) or isinstance(obj, type)):
            imports.append([name, where[0], where[1]])
            continue
        if isinstance(obj, types.FunctionType):
            if obj in seen:
                continue
            if len(seen) > MAX_HELPERS:
                raise ArgumentError(f"{root} needs more than {MAX_HELPERS} functions")
            helpers.append(_payload(obj, packages, seen, root))
            continue
        if name in vars(builtins) and obj is vars(builtins)[name]:
            continue
        try:
            values[name] = plain(obj)
        except CodecError as exc:
            raise ArgumentError(
                f"{root} uses {name!r}, a {type(obj).__module__}.{type(obj).__qualname__} "
                f"that cannot be sent to the sandbox ({exc}). Pass it as an argument "
                "(converted to plain values), create it inside the function, or define it "
                "in the sandbox first with sb.run(code)"
            ) from None
    return [fn.__name__, filename, first, source, values, imports, helpers]
