"""The import graph of rlbench, read from the source with `ast`: no cycles, and config, report and
answer checking import no torch (a suite is validated and a report read without loading models).

Module-level and function-level imports both count; imports under `if TYPE_CHECKING:` do not
(they never run). `from pkg import name` counts as an import of `pkg.name` when that is a module.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rlbench"
NO_TORCH = ("rlbench.config", "rlbench.report", "rlbench.tasks.answers")


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _runtime_nodes(tree: ast.AST):
    """Every node except those under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    """{module: imported names} for every rlbench module (external names kept as written)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imported: set[str] = set()
        for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    imported.add(full if full in modules else base)
        graph[name] = imported
    return graph


def _internal(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    modules = set(graph)

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    return {m: {o for o in map(owner, targets) if o and o != m} for m, targets in graph.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_among_rlbench_modules() -> None:
    assert cycles(_internal(import_graph())) == []


def test_config_report_and_answers_import_no_torch() -> None:
    graph = import_graph()
    internal = _internal(graph)
    for root in [m for m in graph if m.startswith(NO_TORCH)]:
        seen, todo = set(), [root]
        while todo:  # everything reachable from `root`, inside rlbench
            module = todo.pop()
            if module in seen:
                continue
            seen.add(module)
            todo.extend(internal[module])
        heavy = sorted(f"{m} imports {t}" for m in seen for t in graph[m]
                       if t.split(".")[0] in ("torch", "transformers"))
        assert not heavy, f"{root} reaches torch: {heavy}"


def test_no_implementation_imports_the_catalog_or_registry() -> None:
    graph = _internal(import_graph())
    implementations = [m for m in graph if m.startswith(("rlbench.algorithms", "rlbench.tasks", "rlbench.rollout"))
                       or m in ("rlbench.rewards", "rlbench.measure.memory")]
    offenders = sorted(f"{m} -> {t}" for m in implementations for t in graph[m]
                       if t in ("rlbench.catalog", "rlbench.registry"))
    assert not offenders


def test_loading_a_suite_imports_no_torch() -> None:
    code = ("import sys, rlbench.config as c; c.load_suite('suites/quickstart.yaml'); "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
