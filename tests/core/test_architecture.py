"""The structure docs/architecture.md promises, checked on the source (ast): the
package's modules import each other without a cycle, no module reaches into another's
underscored names, and a module over ~500 lines says in its docstring why it is one
concept. A guard against regressions, not a proof: an underscored attribute that the
module also defines itself (on its own classes) is taken to be its own."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

from support import ROOT

PACKAGE = ROOT / "sandbox"
LINES_MAX = 500
# Underscored names that are public API where they live (collections.namedtuple's
# methods, os._exit in a child process).
PUBLIC_UNDERSCORED = {"_make", "_replace", "_asdict", "_fields", "_exit"}


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
    """The ids of the nodes under `if TYPE_CHECKING:` (imports made for the type checker
    only: they never run)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(sub) for sub in ast.walk(node))
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
    """The underscored names a module defines: its functions, classes, methods, names
    assigned, and attributes assigned on anything (self._x = ..., new._state = ...)."""
    own: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            own.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            own.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            own.add(node.attr)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Attribute):
            own.add(node.target.attr)
    return {name for name in own if name.startswith("_")}


def _reaches(module: str, path: Path) -> list[str]:
    """Where `module` uses another module's underscored names: `from x import _name` of
    a name that is not a module, or `something._name` for a `_name` it does not define."""
    tree = _tree(path)
    own = _own_underscored(tree)
    out: list[str] = []
    for line, target, name in _imports(module, path):
        if name.startswith("_") and not name.startswith("__") and target != module:
            out.append(f"{module}:{line}: from {target} import {name}")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        attr = node.attr
        if not attr.startswith("_") or attr.startswith("__") or attr in PUBLIC_UNDERSCORED:
            continue
        if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            continue
        if attr not in own:
            out.append(f"{module}:{node.lineno}: {ast.unparse(node)}")
    return out


def test_no_module_reaches_into_another_modules_underscored_names() -> None:
    offenders = [reach for module, path in _modules().items() for reach in _reaches(module, path)]
    assert offenders == []


def test_the_reach_check_sees_a_reach(tmp_path: Path) -> None:
    source = tmp_path / "reacher.py"
    source.write_text(
        "from sandbox.machines import _take\n"
        "import sandbox.machines as machines\n"
        "class Own:\n"
        "    def __init__(self):\n"
        "        self._mine = 1\n"
        "def f(other, mine):\n"
        "    return machines._idle, other._lock, mine._mine, other._replace()\n"
    )
    assert _reaches("sandbox.reacher", source) == [
        "sandbox.reacher:1: from sandbox.machines import _take",
        "sandbox.reacher:7: machines._idle",
        "sandbox.reacher:7: other._lock",
    ]


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
