"""The import graph of rlbench, read from the source with `ast`: no cycles, the layers in the order
DESIGN.md gives them, config, report and answer checking free of torch (a suite is validated and a
report read without loading models), and an estimator that builds `Run` without patching it.

Module-level and function-level imports both count. Imports under `if TYPE_CHECKING:` count for
cycles and layers (a loop there is still a loop in the design) but not for torch (they never run).
`from pkg import name` counts as an import of `pkg.name` when that is a module.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rlbench"
NO_TORCH = ("rlbench.config", "rlbench.report", "rlbench.tasks.answers")
# Packages and the rlbench packages they must never import (directly or through TYPE_CHECKING).
LAYERS = {
    "rlbench.models": ("rlbench.rollout", "rlbench.stages", "rlbench.algorithms", "rlbench.train"),
    "rlbench.measure": ("rlbench.train", "rlbench.algorithms", "rlbench.stages"),
    "rlbench.rollout": ("rlbench.stages", "rlbench.algorithms", "rlbench.train"),
    "rlbench.algorithms": ("rlbench.stages", "rlbench.train", "rlbench.measure"),
}
# Above the training loop: the modules that may import rlbench.train. Everything else is below it.
ABOVE_TRAIN = ("rlbench.train", "rlbench.stages", "rlbench.estimate", "rlbench.runner", "rlbench.worker",
               "rlbench.cli", "rlbench.__main__")


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _nodes(tree: ast.AST, runtime: bool):
    """Every node; with `runtime`, except those under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if runtime and isinstance(node, ast.If) and \
                getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph(runtime: bool = False) -> dict[str, set[str]]:
    """{module: imported names} for every rlbench module (external names kept as written); with
    `runtime`, imports under `if TYPE_CHECKING:` left out."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imported: set[str] = set()
        for node in _nodes(ast.parse(path.read_text(), str(path)), runtime):
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
    assert cycles(_internal(import_graph())) == []  # TYPE_CHECKING imports included


def test_the_cycle_finder_sees_imports_under_type_checking(tmp_path) -> None:
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import rlbench.train\n")
    names = {a.name for n in _nodes(tree, runtime=False) if isinstance(n, ast.Import) for a in n.names}
    assert names == {"rlbench.train"}
    assert not [n for n in _nodes(tree, runtime=True) if isinstance(n, ast.Import)]


def _in(module: str, prefixes: tuple[str, ...] | str) -> bool:
    prefixes = (prefixes,) if isinstance(prefixes, str) else prefixes
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_layers_point_one_way() -> None:
    graph = _internal(import_graph())
    offenders = sorted(f"{m} imports {t}" for package, forbidden in LAYERS.items()
                       for m in graph if _in(m, package) for t in graph[m] if _in(t, forbidden))
    assert not offenders


def test_nothing_below_the_training_loop_imports_it() -> None:
    graph = _internal(import_graph())
    below = [m for m in graph if not _in(m, ABOVE_TRAIN)]
    assert "rlbench.models.loading" in below and "rlbench.distributed" in below
    offenders = sorted(f"{m} imports {t}" for m in below for t in graph[m] if _in(t, "rlbench.train"))
    assert not offenders


def test_config_report_and_answers_import_no_torch() -> None:
    graph = import_graph(runtime=True)
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


# ---- the estimator uses `Run` as the worker does: built from its parts, never patched -------------------


def _run_attributes() -> tuple[set[str], set[str]]:
    """(every attribute `Run` sets on itself, its private methods), read from rlbench/train/run.py."""
    tree = ast.parse((PACKAGE / "train" / "run.py").read_text())
    [run] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Run"]
    attributes = {t.attr for n in ast.walk(run) if isinstance(n, (ast.Assign, ast.AnnAssign, ast.AugAssign))
                  for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
                  for t in ast.walk(t) if isinstance(t, ast.Attribute) and getattr(t.value, "id", None) == "self"}
    private = {n.name for n in run.body if isinstance(n, ast.FunctionDef)
               and n.name.startswith("_") and not n.name.startswith("__")}
    return attributes, private


def run_patches(source: str) -> list[str]:
    """What a module does to `Run` beyond building and calling it: subclasses of `Run`, classes that
    define one of its private methods, assignments to an attribute of an object bound from `Run(...)`
    or `Run.build(...)` (or to any attribute `Run` sets on itself), `setattr` on such an object,
    and patches of rlbench's own modules (`mock.patch("rlbench...")`)."""
    attributes, private = _run_attributes()
    tree = ast.parse(source)
    found: list[str] = []
    classes = {"Run"} | {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)
                         and any(getattr(b, "id", getattr(b, "attr", None)) == "Run" for b in n.bases)}
    runs: set[str] = set()  # names bound to a run: from a call of Run (or a subclass), or a parameter typed so
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            func = node.value.func
            called = getattr(func, "id", None) or getattr(getattr(func, "value", None), "id", None)
            if called in classes:
                runs |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        if isinstance(node, ast.arg) and node.annotation is not None and ast.unparse(node.annotation) in classes:
            runs.add(node.arg)
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            if any(getattr(b, "id", getattr(b, "attr", None)) == "Run" for b in node.bases):
                found.append(f"line {node.lineno}: class {node.name} subclasses Run")
            found += [f"line {f.lineno}: {node.name}.{f.name} overrides a private method of Run"
                      for f in node.body if isinstance(f, ast.FunctionDef) and f.name in private]
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
        for target in targets:
            chain = target
            while isinstance(chain, ast.Attribute):
                chain = chain.value
            if isinstance(target, ast.Attribute) and (getattr(chain, "id", None) in runs or
                                                      (target.attr in attributes and getattr(chain, "id", "") != "self")):
                found.append(f"line {node.lineno}: assigns {ast.unparse(target)}")
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name == "setattr" and node.args and ast.unparse(node.args[0]).split(".")[0] in runs:
                found.append(f"line {node.lineno}: setattr on {ast.unparse(node.args[0])}")
            if name.endswith(("patch", "patch.object")) and node.args:
                target = ast.unparse(node.args[0])
                if "rlbench" in target or target in ("Run", "hf", "train"):
                    found.append(f"line {node.lineno}: patches {target}")
    return found


def test_the_patch_finder_finds_patches() -> None:
    assert run_patches("class TracedRun(Run):\n    def _score(self): pass\n") == [
        "line 1: class TracedRun subclasses Run", "line 2: TracedRun._score overrides a private method of Run"]
    assert run_patches("run = Run(a, b)\nrun.engine = x\nrun.probe.roles = ()\n") == [
        "line 2: assigns run.engine", "line 3: assigns run.probe.roles"]
    assert run_patches("r = make()\nr.schedule = s\n") == ["line 2: assigns r.schedule"]
    assert run_patches("def wrap(run: Run):\n    run.algorithm.compute_advantages = f\n") == [
        "line 2: assigns run.algorithm.compute_advantages"]
    assert run_patches("run = Run.build(a)\nsetattr(run, 'passes', 1)\n") == ["line 2: setattr on run"]
    assert run_patches("mock.patch('rlbench.device.default_device', f)\n") == [
        "line 1: patches 'rlbench.device.default_device'"]
    assert run_patches("run = Run.build(a)\nrun.step()\nparts = replace(parts, schedule=s)\n") == []


def test_the_estimator_builds_run_and_never_patches_it() -> None:
    found = {path.name: run_patches(path.read_text()) for path in (PACKAGE / "estimate").glob("*.py")}
    assert not {name: f for name, f in found.items() if f}


def test_importing_the_loop_imports_no_transformers() -> None:
    # A worker imports the loop, then reads its baseline memory, then loads the roles: transformers
    # (about 21 MB of anonymous memory) belongs to what loading adds, as it always has.
    code = "import sys, rlbench.worker, rlbench.train; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"]
