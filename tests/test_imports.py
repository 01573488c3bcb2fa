"""No import cycles among the project's modules, counting every import a module can run.

The graph is read from the source with ``ast``, so nothing is imported: module-level imports, imports
inside functions and methods (a lazy import that closes a cycle is still a cycle: it only moves the
failure to the first call), imports under ``if TYPE_CHECKING:`` or ``try:``, relative imports, and
``importlib.import_module("literal")``. The implicit import of a module's parent packages is not an edge:
a package ``__init__`` re-exporting its submodules is a package's normal shape, not a dependency.

On a cycle the test names each import that closes it (file:line), so the fix starts from the message.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

#: The project's top-level import packages (those not importable, e.g. after a rename, are skipped).
TOP_LEVEL = ("gateload", "analysis", "targets", "locustfiles")

#: Pairs that once imported each other, and the one direction each keeps: (importer, imported).
ONCE_CYCLIC = (
    ("gateload.analysis.compare", "gateload.analysis.report"),
    ("gateload.locustfiles.lib.options", "gateload.locustfiles.lib.schedule"),
    ("gateload.targets.linkproc", "gateload.targets.link"),
    ("gateload.targets.reference.faults", "gateload.targets.reference.capacity"),
    ("gateload.analysis.runs", "gateload.analysis.steady"),
)


@dataclass(frozen=True)
class Edge:
    """``source`` imports ``target`` at ``path``:``line``."""

    source: str
    target: str
    path: Path
    line: int


def modules_under(top: str, folder: Path) -> dict[str, tuple[Path, bool]]:
    """Every module of the package ``top`` in ``folder``: dotted name -> (file, is a package)."""
    found: dict[str, tuple[Path, bool]] = {}
    for here, dirs, files in os.walk(folder, followlinks=True):
        rel = Path(here).relative_to(folder)
        if rel.parts and not (Path(here) / "__init__.py").is_file():
            dirs[:] = []  # not a regular package: nothing below it is importable as part of ours
            continue
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        prefix = ".".join((top, *rel.parts))
        for name in files:
            if name.endswith(".py"):
                is_pkg = name == "__init__.py"
                found[prefix if is_pkg else f"{prefix}.{name[:-3]}"] = (Path(here) / name, is_pkg)
    return found


def project_modules() -> dict[str, tuple[Path, bool]]:
    """The project's modules, found where Python would import them from (nothing is imported)."""
    found: dict[str, tuple[Path, bool]] = {}
    for top in TOP_LEVEL:
        spec = importlib.util.find_spec(top)
        if spec is None or not spec.submodule_search_locations:
            continue
        for folder in spec.submodule_search_locations:
            found.update(modules_under(top, Path(folder)))
    return found


def _resolve(name: str, modules: dict[str, tuple[Path, bool]]) -> str | None:
    """The deepest project module that importing ``name`` runs (None: not the project's)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imported(node: ast.AST, module: str, is_pkg: bool, modules: dict[str, tuple[Path, bool]]) -> list[str]:
    """The project modules one AST node imports."""
    if isinstance(node, ast.Import):
        return [t for a in node.names if (t := _resolve(a.name, modules))]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            package = module if is_pkg else module.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}" if base else package
        out = []
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            target = sub if sub in modules else _resolve(base, modules)
            if target:
                out.append(target)
        return out
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute | ast.Name)
        and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
        in ("import_module", "__import__")
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        target = _resolve(node.args[0].value, modules)
        return [target] if target else []
    return []


def import_graph(modules: dict[str, tuple[Path, bool]]) -> dict[str, list[Edge]]:
    """Every module's imports of other project modules, at any depth of its source."""
    graph: dict[str, list[Edge]] = {}
    for module, (path, is_pkg) in modules.items():
        edges = graph.setdefault(module, [])
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            for target in _imported(node, module, is_pkg, modules):
                if target != module:
                    edges.append(Edge(module, target, path, getattr(node, "lineno", 0)))
    return graph


def cycles(graph: dict[str, list[Edge]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted({e.target for e in graph[root]})))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, targets = work[-1]
            for target in targets:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted({e.target for e in graph.get(target, [])}))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return sorted(found)


def describe(component: list[str], graph: dict[str, list[Edge]], root: Path) -> str:
    """The imports inside one cycle, one per line: ``a -> b (a.py:12)``."""
    members = set(component)
    lines = [
        f"  {e.source} -> {e.target} ({os.path.relpath(e.path, root)}:{e.line})"
        for module in component
        for e in graph[module]
        if e.target in members
    ]
    return "\n".join(lines)


def _named(modules: dict[str, tuple[Path, bool]], dotted: str) -> str:
    """The project module whose name is ``dotted`` or ends with it (a rename may add a prefix)."""
    hits = [m for m in modules if m == dotted or m.endswith("." + dotted)]
    assert hits, f"no module named {dotted}: the walk missed it, or it moved (update ONCE_CYCLIC)"
    return min(hits, key=len)


# --- the project ------------------------------------------------------------------------------------


def test_the_project_has_no_import_cycle() -> None:
    modules = project_modules()
    graph = import_graph(modules)
    root = Path(__file__).resolve().parent.parent
    found = cycles(graph)
    message = "\n".join(f"import cycle among {', '.join(c)}:\n{describe(c, graph, root)}" for c in found)
    assert not found, (
        f"{message}\nmove the piece both need to the module it belongs to (a lazy import inside a "
        "function still counts)"
    )


def test_the_walk_covers_the_project_and_its_function_level_imports() -> None:
    modules = project_modules()
    assert {top for top in TOP_LEVEL if importlib.util.find_spec(top)} <= {m.split(".")[0] for m in modules}
    assert len(modules) >= 80, sorted(modules)  # 92 on 2026-12-03: a walk that stopped early shows here
    graph = import_graph(modules)
    for importer, imported in ONCE_CYCLIC:
        a, b = _named(modules, importer), _named(modules, imported)
        targets = {e.target for e in graph[a]}
        assert b in targets, f"{a} no longer imports {b}: the walk lost an edge"
        assert a not in {e.target for e in graph[b]}, f"{b} imports {a} again"
    # a function-level import is seen: gateload.analysis.cli imports its commands' modules inside functions
    cli = _named(modules, "gateload.analysis.cli")
    lazy = [e for e in graph[cli] if e.target == _named(modules, "gateload.analysis.compare")]
    assert lazy, "gateload.analysis.cli's function-level import of gateload.analysis.compare was not seen"


# --- the checker itself: each kind of import closes a cycle it reports ------------------------------


def _package(tmp_path: Path, files: dict[str, str]) -> dict[str, list[Edge]]:
    folder = tmp_path / "pkg"
    for name, text in {"__init__.py": "", **files}.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return import_graph(modules_under("pkg", folder))


@pytest.mark.parametrize(
    ("kind", "back"),
    [
        ("module level", "from pkg.a import A\n"),
        ("function level", "def f():\n    from pkg import a\n    return a\n"),
        ("method level", "class C:\n    def m(self):\n        import pkg.a\n"),
        ("relative", "from .a import A\n"),
        ("type checking", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import A\n"),
        ("importlib", "import importlib\ndef f():\n    return importlib.import_module('pkg.a')\n"),
        ("subpackage relative", None),
    ],
)
def test_each_kind_of_import_closes_a_reported_cycle(tmp_path: Path, kind: str, back: str | None) -> None:
    if back is None:  # pkg.sub.c -> pkg.a (two levels up) -> pkg.sub.c
        graph = _package(
            tmp_path,
            {
                "a.py": "from pkg.sub import c\nA = 1\n",
                "sub/__init__.py": "",
                "sub/c.py": "from ..a import A\n",
            },
        )
        assert cycles(graph) == [["pkg.a", "pkg.sub.c"]], kind
        return
    graph = _package(tmp_path, {"a.py": "from pkg import b\nA = 1\n", "b.py": back})
    assert cycles(graph) == [["pkg.a", "pkg.b"]], kind
    text = describe(["pkg.a", "pkg.b"], graph, tmp_path)
    assert "pkg.a -> pkg.b (pkg/a.py:1)" in text and "pkg.b -> pkg.a (pkg/b.py:" in text


def test_no_cycle_is_reported_without_one(tmp_path: Path) -> None:
    graph = _package(
        tmp_path,
        {
            "a.py": "from pkg import b, c\n",
            "b.py": "import os\nfrom pkg.c import C\ndef f():\n    import json\n",
            "c.py": "C = 1\n",
            "__main__.py": "from pkg import a\n",
        },
    )
    assert {e.target for e in graph["pkg.a"]} == {"pkg.b", "pkg.c"}
    assert cycles(graph) == []
    # a package importing its own submodule, and that submodule's implicit parent, is not a cycle
    graph = _package(tmp_path, {"__init__.py": "from pkg import a\n", "a.py": "X = 1\n"})
    assert cycles(graph) == []
