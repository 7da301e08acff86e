"""The structure docs/architecture.md promises, checked on the source (ast): the
package's modules import each other without a cycle, no module reaches into another's
underscored names, and a module over ~500 lines says in its docstring why it is one
concept. A guard against regressions, not a proof: an underscored attribute that the
module also defines itself (on `self` or `cls`, in a class body or at module level) is
taken to be its own; imports by `importlib.import_module` (the lazy attributes of a
package, the built-in guest kinds) name their modules in tables, so they are not
edges of the graph: `DYNAMIC_IMPORTERS` lists the modules allowed to make them."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

from support import ROOT

PACKAGE = ROOT / "sandbox"
LINES_MAX = 500
# Underscored names that are public API where they live (collections.namedtuple's
# methods, on objects of any name).
PUBLIC_UNDERSCORED = {"_make", "_replace", "_asdict", "_fields"}
# The modules that import by name at run time, and why: a package's lazy attributes
# (PEP 562), the built-in guest kinds on first use, the bench report from a checkout.
DYNAMIC_IMPORTERS = {"sandbox", "sandbox.kinds", "sandbox.ray", "sandbox.host", "sandbox.cli"}


@cache
def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out: dict[str, Path] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    """The ids of the nodes in the body of `if TYPE_CHECKING:` (imports made for the type
    checker only: they never run; its `else:` does)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        test = node.test if isinstance(node, ast.If) else None
        if isinstance(test, (ast.Name, ast.Attribute)) and ast.unparse(test).endswith(
            "TYPE_CHECKING"
        ):
            for statement in node.body:  # type: ignore[union-attr]
                skipped.update(id(sub) for sub in ast.walk(statement))
    return skipped


def _absolute(module: str, is_package: bool, level: int, name: str | None) -> str:
    if level == 0:
        return name or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _imports(module: str, path: Path) -> list[tuple[int, str, str]]:
    """(line, imported module, imported name or '') of every import of the package's own
    modules that runs (at module level or in a function; not under TYPE_CHECKING)."""
    tree = _tree(path)
    skipped = _type_checking_nodes(tree)
    modules = _modules()
    out: list[tuple[int, str, str]] = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            out.extend(
                (node.lineno, a.name, "") for a in node.names if a.name.split(".")[0] == "sandbox"
            )
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(module, path.name == "__init__.py", node.level, node.module)
            if target.split(".")[0] != "sandbox":
                continue
            for alias in node.names:
                full = f"{target}.{alias.name}"
                if full in modules:  # `from . import machines`: a module
                    out.append((node.lineno, full, ""))
                else:
                    out.append((node.lineno, target, alias.name))
    return out


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _import_graph() -> dict[str, set[str]]:
    return {
        module: {target for _, target, _ in _imports(module, path)}
        for module, path in _modules().items()
    }


def test_the_package_has_no_import_cycle() -> None:
    graph = _import_graph()
    assert sum(len(targets) for targets in graph.values()) > 200  # the walk sees imports
    assert "sandbox.machine" in graph["sandbox.machines"]
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _own_underscored(tree: ast.Module) -> set[str]:
    """The underscored names a module defines: its functions, classes and methods, the
    names assigned at module level and in class bodies, and the attributes it assigns on
    `self` or `cls` (a store on any other object is a reach like a read)."""
    own: set[str] = set()
    scopes: list[list[ast.stmt]] = [tree.body]
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            own.add(node.name)
        if isinstance(node, ast.ClassDef):
            scopes.append(node.body)
        target = node.target if isinstance(node, ast.AnnAssign) else node
        if (
            isinstance(target, ast.Attribute)
            and isinstance(target.ctx, ast.Store)
            and isinstance(target.value, ast.Name)
            and target.value.id in ("self", "cls")
        ):
            own.add(target.attr)

    def names_stored(node: ast.AST) -> None:  # in this scope, not in nested ones
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            own.add(node.id)
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, _SCOPES):
                names_stored(child)

    for body in scopes:
        for statement in body:
            names_stored(statement)
    return {name for name in own if name.startswith("_")}


_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)
_REFLECTION = {"getattr", "setattr", "hasattr", "delattr"}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name not in PUBLIC_UNDERSCORED


def _is_self(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id in ("self", "cls")


def _reaches(module: str, path: Path) -> list[str]:
    """Where `module` uses another module's underscored names: `from x import _name` of
    a name that is not a module, or `something._name` for a `_name` it does not define."""
    tree = _tree(path)
    own = _own_underscored(tree)
    # Names bound to other packages' modules and objects (sys, os...): their underscored
    # API is theirs to document (sys._getframe), not a reach into ours.
    foreign = {
        (alias.asname or alias.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        and not (isinstance(node, ast.ImportFrom) and node.level)
        for alias in node.names
        if (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        != "sandbox"
    }
    out: list[str] = []
    for line, target, name in _imports(module, path):
        if _is_private(name) and target != module:
            out.append(f"{module}:{line}: from {target} import {name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            obj, attr = node.value, node.attr
        elif (  # getattr(obj, "_name"), setattr(...)
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _REFLECTION
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            obj, attr = node.args[0], node.args[1].value
        else:
            continue
        if isinstance(obj, ast.Name) and obj.id in foreign:
            continue
        if _is_private(attr) and not _is_self(obj) and attr not in own:
            out.append(f"{module}:{node.lineno}: {ast.unparse(node)}")
    return out


def test_no_module_reaches_into_another_modules_underscored_names() -> None:
    offenders = [reach for module, path in _modules().items() for reach in _reaches(module, path)]
    assert offenders == []


def test_the_reach_check_sees_a_reach(tmp_path: Path) -> None:
    source = tmp_path / "reacher.py"
    source.write_text(
        "import sys; from typing import TYPE_CHECKING\n"
        "from sandbox.machines import _take\n"
        "import sandbox.machines as machines\n"
        "if TYPE_CHECKING:\n"
        "    from sandbox.machines import _spare\n"
        "else:\n"
        "    from sandbox.machines import _order_spare\n"
        "class Own:\n"
        "    _kept = 0\n"
        "    def __init__(self):\n"
        "        self._mine = 1\n"
        "def f(other, mine):\n"
        "    _local = other._replace()\n"
        "    other._state = mine._mine + mine._kept\n"
        "    return machines._idle, other._lock, getattr(other, '_secret'), sys._getframe\n"
    )
    assert _reaches("sandbox.reacher", source) == [
        "sandbox.reacher:2: from sandbox.machines import _take",
        "sandbox.reacher:7: from sandbox.machines import _order_spare",
        "sandbox.reacher:14: other._state",
        "sandbox.reacher:15: machines._idle",
        "sandbox.reacher:15: other._lock",
        "sandbox.reacher:15: getattr(other, '_secret')",
    ]


def test_only_the_known_modules_import_by_name_at_run_time() -> None:
    """`importlib.import_module` hides an import from the graph: each module that uses it
    is listed (DYNAMIC_IMPORTERS) with its reason."""
    found = set()
    for module, path in _modules().items():
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Attribute) and node.attr == "import_module":
                found.add(module)
    assert found == DYNAMIC_IMPORTERS


def test_a_module_over_500_lines_says_why() -> None:
    long = {}
    for module, path in _modules().items():
        lines = len(path.read_text().splitlines())
        if lines > LINES_MAX:
            long[module] = ast.get_docstring(_tree(path)) or ""
    unexplained = [
        module
        for module, doc in long.items()
        if not re.search(r"(Over|Close to) ~?500 lines", doc.replace("\n", " "))
    ]
    assert unexplained == []
