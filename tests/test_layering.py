"""The package's layering, read from the source with `ast` (imports inside functions count):

* `dmdnet/ops` imports nothing of dmdnet outside `ops`;
* `dmdnet/network` and `dmdnet/ops` import nothing from `dmdnet.training` or `dmdnet.demo`;
* `dmdnet/network` and `dmdnet/ops` read no files: they reach none of the loaders (`dmdnet.checkpoints`,
  `dmdnet.weights`) nor `dmdnet.files`, directly or through other modules;
* only `app.py` and `dmdnet/cli.py` reach `dmdnet.demo` from outside it;
* no module imports another that imports it back, directly or through others.
"""
from __future__ import annotations

import ast
from pathlib import Path

from support import REPO_ROOT

PACKAGE = REPO_ROOT / "dmdnet"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path, files: list[Path]) -> dict[str, set[str]]:
    """Module name -> the names of the modules (of those under `root`) it imports."""
    known = {module_name(path, root) for path in files}
    graph = {}
    for path in files:
        name = module_name(path, root)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(base + ([node.module] if node.module else []))
                else:
                    base = node.module
                targets.add(base)
                targets.update(f"{base}.{alias.name}" for alias in node.names)
        graph[name] = {target for target in targets if target in known and target != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def project_graph() -> dict[str, set[str]]:
    return import_graph(REPO_ROOT, sorted(PACKAGE.rglob("*.py")) + [REPO_ROOT / "app.py"])


def test_the_checker_finds_a_circle_what_is_reached_and_relative_imports(tmp_path):
    """On a made-up package: `a` imports `b` inside a function, `b` imports `a` back."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from .sub import b\n")
    (package / "sub" / "b.py").write_text("from .. import a\nimport pkg.c\n")
    (package / "c.py").write_text("")
    graph = import_graph(tmp_path, sorted(package.rglob("*.py")))
    assert graph["pkg.a"] == {"pkg.sub", "pkg.sub.b"}
    assert graph["pkg.sub.b"] == {"pkg", "pkg.a", "pkg.c"}
    assert cycles(graph) == [["pkg.a", "pkg.sub.b"]]
    assert reached(graph, "pkg.sub.b") == {"pkg", "pkg.a", "pkg.c", "pkg.sub", "pkg.sub.b"}


def test_no_module_imports_one_that_imports_it_back():
    assert cycles(project_graph()) == []


def test_ops_and_network_stay_below_training_and_demo():
    graph = project_graph()
    problems = []
    for name, targets in graph.items():
        if name.startswith("dmdnet.ops"):
            problems += [(name, t) for t in targets if not t.startswith("dmdnet.ops")]
        if name.startswith(("dmdnet.ops", "dmdnet.network")):
            problems += [(name, t) for t in targets if t.startswith(("dmdnet.training", "dmdnet.demo"))]
    assert problems == []


def reached(graph: dict[str, set[str]], start: str) -> set[str]:
    """The modules `start` imports, directly or through others."""
    found, pending = set(), [start]
    while pending:
        for target in graph.get(pending.pop(), ()):
            if target not in found:
                found.add(target)
                pending.append(target)
    return found


def test_the_network_and_ops_read_no_files():
    """Network modules take tensors and state dicts; finding and reading files is the loaders' job."""
    graph = project_graph()
    loaders = {"dmdnet.checkpoints", "dmdnet.weights", "dmdnet.files"}
    problems = {name: sorted(reached(graph, name) & loaders) for name in graph
                if name.startswith(("dmdnet.ops", "dmdnet.network"))}
    assert {name: found for name, found in problems.items() if found} == {}


def test_only_the_app_and_the_cli_reach_the_demo():
    graph = project_graph()
    outside = {name for name, targets in graph.items()
               if not name.startswith("dmdnet.demo") and any(t.startswith("dmdnet.demo") for t in targets)}
    assert "app" in outside and outside <= {"app", "dmdnet.cli"}
