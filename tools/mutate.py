"""Mutation check: plant one small bug at a time in the code rlbench's numbers depend on, run the tests
that cover that module, and list every bug the tests did not notice.

    make mutate                                            # every module below
    .venv/bin/python tools/mutate.py rlbench/report/stats.py  # one module (several may be named)
    .venv/bin/python tools/mutate.py --list                # the mutants, nothing run
    .venv/bin/python tools/mutate.py --json mutate.json    # also one JSON document for machines

A mutant is a single edit of the source: an arithmetic operator swapped (+ -, * /, // /, ** *, % //,
| &), a term or a coefficient dropped (a + b -> a, c * x -> x), a comparison moved across its
boundary or negated (< <=, > >=, == !=, in / not in, is / is not), and/or swapped, a sign or a `not`
dropped, min/max swapped, True/False swapped, an index -1/0 swapped (last <-> first), a number
changed (an integer n -> n + 1, a float x -> x / 2, 0.0 -> 1.0). Not mutated: strings, `assert`
statements (internal invariants), annotations, and the numbers inside module-level data tables
(dict/list/tuple literals such as GPU datasheet figures), which are data, not math. Besides these,
NAMED lists bugs that once got past the tests; they are always tried.

Each mutant is written into the file, the module's covering test files (MODULES: the fastest that
cover it, in order) run in a forked child with `-x -p no:cacheprovider` and a timeout, and the file
is put back byte for byte (and its timestamp, so nothing recompiles for nothing). The child is
forked from a process that has already imported torch, transformers and pytest, so a mutant costs
its tests, not ten seconds of imports. A failing test (or a timeout) kills the mutant; tests that
all pass let it survive. A survivor that cannot change behaviour is listed in EQUIVALENT with the
reason, and does not count against the kill rate.

The source is always restored: on normal exit, on an exception, on Ctrl-C, SIGTERM or SIGHUP; a
copy of the original is kept outside the tree while a mutant is in place, and a run that was killed
outright (SIGKILL, power loss) leaves it there for the next run, which restores it first. The run is
deterministic: mutants in file order, a fixed hash seed, tests in file order. Exit code 0 when the
kill rate of every module is at least --fail-under percent (default 95) and every named mutant was
killed, else 1. Not part of `make test`: it takes minutes (numbers in the README).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import io
import json
import os
import select
import signal
import sys
import tempfile
import time
import tokenize
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Module -> the test files that cover it, fastest first (each entry: a path, optionally with "::test").
MODULES: dict[str, list[str]] = {
    "rlbench/algorithms/advantages.py": ["tests/test_advantages.py", "tests/test_ppo.py"],
    "rlbench/algorithms/losses.py": ["tests/test_losses.py", "tests/test_grpo.py", "tests/test_ppo.py"],
    "rlbench/algorithms/grpo.py": ["tests/test_grpo.py"],
    "rlbench/algorithms/ppo.py": ["tests/test_ppo.py"],
    "rlbench/algorithms/base.py": ["tests/test_algorithm_base.py"],
    "rlbench/algorithms/params.py": ["tests/test_algorithm_params.py"],
    "rlbench/algorithms/sft_more.py": ["tests/test_sft_more.py"],
    "rlbench/measure/static.py": ["tests/test_static_bytes.py"],
    "rlbench/measure/summary.py": ["tests/test_summary.py", "tests/test_reconciliation.py"],
    "rlbench/measure/flops.py": ["tests/test_flops.py", "tests/test_budget_flops.py"],
    "rlbench/report/stats.py": ["tests/test_stats.py"],
    "rlbench/report/check.py": ["tests/test_check.py", "tests/test_faults_check.py"],
    "rlbench/tasks/answers.py": ["tests/test_answers.py"],
}
# Modules tried for their named mutants only (no generated ones), with the tests that cover those.
NAMED_ONLY: dict[str, list[str]] = {
    "rlbench/train.py": ["tests/test_budget_flops.py::test_budget_fraction_is_the_tightest_limit"],
}


@dataclass(frozen=True)
class Named:
    """A bug that once got past the tests: `old` -> `new` inside function `function` of `path`."""

    name: str
    path: str
    function: str
    old: str
    new: str
    retired: str = ""  # why it cannot be planted any more (the code it mutated is gone)


NAMED: tuple[Named, ...] = (
    Named("grpo-kl-sign", "rlbench/algorithms/grpo.py", "policy_loss",
          "loss = loss + p.beta * kl", "loss = loss - p.beta * kl"),
    Named("grpo-kl-token-mean", "rlbench/algorithms/grpo.py", "policy_loss",
          "mb.mask, p.agg)", 'mb.mask, "token_mean")'),
    Named("summary-engine-bytes", "rlbench/measure/summary.py", "_memory",
          'call["static_bytes"] + engine_total', 'call["static_bytes"]'),
    Named("stats-t-coefficient-halved", "rlbench/report/stats.py", "t_quantile",
          "16 * z ** 3", "8 * z ** 3"),
    Named("stats-weak-rm-boundary", "rlbench/report/stats.py", "weak_reward_model",
          "accuracy - 0.5 <= z * se", "accuracy - 0.5 < z * se"),
    Named("check-absolute-threshold", "rlbench/report/check.py", "exceeds",
          "1 if worse > threshold.limit", "1 if worse >= threshold.limit"),
    Named("check-within-noise", "rlbench/report/check.py", "judge",
          "abs(new_value - base_value) <= _combined_stderr", "abs(new_value - base_value) < _combined_stderr"),
    Named("answers-first-hash-marks", "rlbench/tasks/answers.py", "_from_hash_marks",
          "canonical_number(found[-1])", "canonical_number(found[0])"),
    Named("answers-first-a-line", "rlbench/tasks/answers.py", "_from_a_line", "lines[-1]", "lines[0]",
          retired="the a_line filter was removed (wherever it matched, the last-number filter returned the "
                  "same answer); answers-last-number-first stands in for it"),
    Named("answers-last-number-first", "rlbench/tasks/answers.py", "_last_number",
          "canonical_number(numbers[-1])", "canonical_number(numbers[0])"),
    Named("budget-fraction-min", "rlbench/train.py", "fraction",
          "min(1.0, max(fractions))", "min(1.0, min(fractions))"),
)

# Survivors that cannot change behaviour: (path, function, text on the mutated line, edit as listed) -> why.
EQUIVALENT: dict[tuple[str, str, str, str], str] = {
    ("rlbench/report/stats.py", "<module>", "EXACT_T_MAX_DF = 1000", "`1000` -> `1001`"):
        "df 1001 then takes the exact series instead of the expansion; the two agree there to 5e-8 "
        "(the expansion's next term), far inside the promised 1e-6",
    ("rlbench/report/stats.py", "mcnemar_exact", "if n == 0:", "`0` -> `1`"):
        "n = 0 and n = 1 both give p = 1 through the formula as well (min(1, 2 x 1) and 2 x 1/2)",
    ("rlbench/report/stats.py", "t_quantile", "low, high = 0.0, 1.0", "`1.0` -> `0.5`"):
        "a bracket's upper end only has to lie above the root: the 60 halvings end within 2^-50 of it either way",
    ("rlbench/report/stats.py", "t_quantile", "while _t_two_sided_mass(high, df) < mass:",
     "`_t_two_sided_mass(high, df) < mass` -> `_t_two_sided_mass(high, df) <= mass`"):
        "differs only when the mass at a power of 2 equals 2q - 1 exactly; the bracket then doubles once more",
    ("rlbench/report/stats.py", "t_quantile", "high *= 2", "`2` -> `3`"):
        "any bracket that holds the root: 60 halvings end within 2^-50 of it",
    ("rlbench/report/stats.py", "t_quantile", "for _ in range(60):", "`60` -> `61`"):
        "one more halving of an interval already under 2^-50 of the root",
    ("rlbench/report/stats.py", "t_quantile", "if _t_two_sided_mass(mid, df) < mass else (low, mid)",
     "`_t_two_sided_mass(mid, df) < mass` -> `_t_two_sided_mass(mid, df) <= mass`"):
        "differs only when a midpoint's mass equals 2q - 1 exactly, and then either half holds the root",
    ("rlbench/report/stats.py", "seed_mean", '"ci95": None, "min": min(values), "max": max(values)}', "`min(values)` -> `max(values)`"):
        "the one-seed branch: min and max of a single value are that value",
    ("rlbench/report/stats.py", "seed_mean", '"ci95": None, "min": min(values), "max": max(values)}', "`max(values)` -> `min(values)`"):
        "the one-seed branch: min and max of a single value are that value",
}


@dataclass
class Mutant:
    path: str
    line: int
    start: int  # character offsets of the edited span in the source
    end: int
    new: str
    edit: str  # "`old` -> `new`"
    function: str
    name: str = ""  # a NAMED mutant's name
    equivalent: str = ""
    status: str = "pending"  # killed, survived, timeout, error, equivalent
    seconds: float = 0.0
    failed_test: str = ""


# ---- generating mutants ------------------------------------------------------------------------

ARITHMETIC = {ast.Add: ("+", "-"), ast.Sub: ("-", "+"), ast.Mult: ("*", "/"), ast.Div: ("/", "*"),
              ast.FloorDiv: ("//", "/"), ast.Pow: ("**", "*"), ast.Mod: ("%", "//"), ast.BitOr: ("|", "&"),
              ast.BitAnd: ("&", "|")}
COMPARISON = {ast.Lt: ("<", "<="), ast.LtE: ("<=", "<"), ast.Gt: (">", ">="), ast.GtE: (">=", ">"),
              ast.Eq: ("==", "!="), ast.NotEq: ("!=", "=="), ast.In: ("in", "not in"),
              ast.NotIn: ("not in", "in"), ast.Is: ("is", "is not"), ast.IsNot: ("is not", "is")}


class _Source:
    """A file's text with conversions from ast positions (line, UTF-8 byte column) to character offsets."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.lines = text.splitlines(keepends=True)
        self.starts = [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line))
        self.tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))

    def offset(self, line: int, byte_col: int) -> int:
        text = self.lines[line - 1]
        return self.starts[line - 1] + len(text.encode()[:byte_col].decode())

    def span(self, node: ast.AST) -> tuple[int, int]:
        return self.offset(node.lineno, node.col_offset), self.offset(node.end_lineno, node.end_col_offset)

    def token_offset(self, position: tuple[int, int]) -> int:  # tokenize columns are characters
        return self.starts[position[0] - 1] + position[1]

    def operator_between(self, start: int, end: int, symbol: str) -> tuple[int, int] | None:
        """The span of the operator `symbol` (one or two tokens, e.g. "not in") between two offsets."""
        words = symbol.split()
        toks = [t for t in self.tokens if start <= self.token_offset(t.start) and self.token_offset(t.end) <= end
                and t.type in (tokenize.OP, tokenize.NAME)]
        for i in range(len(toks) - len(words) + 1):
            if [t.string for t in toks[i:i + len(words)]] == words:
                return self.token_offset(toks[i].start), self.token_offset(toks[i + len(words) - 1].end)
        return None


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _is_text(node: ast.AST) -> bool:
    return isinstance(node, ast.JoinedStr) or isinstance(node, ast.Constant) and isinstance(node.value, str)


def _skipped(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """In an assert, an annotation, a decorator, an f-string, text building or a module-level data table."""
    child, node = node, parents.get(node)
    while node is not None:
        if isinstance(node, (ast.Assert, ast.JoinedStr)):
            return True
        if child is getattr(node, "annotation", None) or child is getattr(node, "returns", None) \
                or child in getattr(node, "decorator_list", ()):
            return True
        if isinstance(node, ast.BinOp) and (_is_text(node.left) or _is_text(node.right)):
            return True  # "text" + more text: messages, not math
        if isinstance(node, (ast.Dict, ast.List, ast.Tuple, ast.Set)) \
                and isinstance(parents.get(node), (ast.Assign, ast.AnnAssign)) \
                and isinstance(parents.get(parents[node]), ast.Module):
            return True
        child, node = node, parents.get(node)
    return False


def _function_of(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> str:
    while node is not None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return node.name
        node = parents.get(node)
    return "<module>"


def _number(value: int | float) -> str:
    if isinstance(value, int):
        return str(value + 1)
    return repr(value / 2) if value else "1.0"


def generate(path: str, text: str) -> list[Mutant]:
    """Every single-edit mutant of the file's text, in source order, each one compiling."""
    source, tree = _Source(text), ast.parse(text)
    parents = _parents(tree)
    found: list[Mutant] = []

    def add(node: ast.AST, start: int, end: int, new: str) -> None:
        """Replace text[start:end] by `new`; the edit is shown within `node`'s expression."""
        line = text.count("\n", 0, start) + 1
        context_start, context_end = source.span(node)
        if text.count("\n", context_start, context_end) or context_end - context_start > 70:
            context_start, context_end = start, end  # too long to show whole: the edited span alone
        before = text[context_start:context_end]
        after = text[context_start:start] + new + text[end:context_end]
        found.append(Mutant(path, line, start, end, new, f"`{before}` -> `{after}`", _function_of(node, parents)))

    for node in ast.walk(tree):
        if _skipped(node, parents):
            continue
        if isinstance(node, ast.BinOp) and type(node.op) in ARITHMETIC:
            symbol, swap = ARITHMETIC[type(node.op)]
            left_end, right_start = source.span(node.left)[1], source.span(node.right)[0]
            op = source.operator_between(left_end, right_start, symbol)
            if op:
                add(node, *op, swap)
            start, end = source.span(node)
            if isinstance(node.op, (ast.Add, ast.Sub)):  # drop the right-hand term
                add(node, start, end, text[slice(*source.span(node.left))])
            if isinstance(node.op, ast.Mult) and isinstance(node.left, (ast.Name, ast.Attribute)):
                add(node, start, end, text[slice(*source.span(node.right))])  # drop the coefficient
        elif isinstance(node, ast.AugAssign) and type(node.op) in ARITHMETIC:
            symbol, swap = ARITHMETIC[type(node.op)]
            op = source.operator_between(source.span(node.target)[1], source.span(node.value)[0], symbol + "=")
            if op:
                add(node, *op, swap + "=")
        elif isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for i, op_node in enumerate(node.ops):
                symbol, swap = COMPARISON[type(op_node)]
                op = source.operator_between(source.span(operands[i])[1], source.span(operands[i + 1])[0], symbol)
                if op:
                    add(node, *op, swap)
        elif isinstance(node, ast.BoolOp):
            symbol, swap = ("and", "or") if isinstance(node.op, ast.And) else ("or", "and")
            for left, right in zip(node.values, node.values[1:]):
                op = source.operator_between(source.span(left)[1], source.span(right)[0], symbol)
                if op:
                    add(node, *op, swap)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.Not)):
            parent = parents.get(node)
            if isinstance(parent, ast.Subscript) and parent.slice is node and isinstance(node.operand, ast.Constant):
                add(node, *source.span(node), "0")  # [-1] -> [0]: the first instead of the last
            else:
                add(node, *source.span(node), text[slice(*source.span(node.operand))])
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("min", "max"):
            add(node, *source.span(node.func), "max" if node.func.id == "min" else "min")
        elif isinstance(node, ast.Constant) and type(node.value) in (int, float, bool):
            parent = parents.get(node)
            if isinstance(parent, ast.UnaryOp) and isinstance(parents.get(parent), ast.Subscript):
                continue  # [-1]: mutated as a whole above
            if isinstance(parent, ast.Subscript) and parent.slice is node and node.value == 0:
                add(node, *source.span(node), "-1")  # [0] -> [-1]: the last instead of the first
            elif isinstance(node.value, bool):
                add(node, *source.span(node), str(not node.value))
            else:
                add(node, *source.span(node), _number(node.value))
    unique: dict[str, Mutant] = {}
    for mutant in sorted(found, key=lambda m: (m.start, m.end, m.new)):
        mutated = text[:mutant.start] + mutant.new + text[mutant.end:]
        if mutated == text or mutated in unique:
            continue
        try:
            compile(mutated, path, "exec")
        except SyntaxError:
            continue
        unique[mutated] = mutant
    return list(unique.values())


def named_mutant(named: Named, text: str) -> Mutant | str:
    """The named mutant planted in `text`, or why it cannot be."""
    tree = ast.parse(text)
    source = _Source(text)
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                 and n.name == named.function]
    if named.retired:
        return f"retired: {named.retired}"
    if len(functions) != 1:
        return f"function {named.function} not found once in {named.path} (the code changed: update NAMED)"
    start, end = source.span(functions[0])
    at = text.find(named.old, start, end)
    if at < 0 or text.find(named.old, at + 1, end) >= 0:
        return f"`{named.old}` not found once in {named.function} (the code changed: update NAMED)"
    line = text.count("\n", 0, at) + 1
    return Mutant(named.path, line, at, at + len(named.old), named.new, f"`{named.old}` -> `{named.new}`",
                  named.function, name=named.name)


def mutants_of(path: str, generated: bool) -> tuple[list[Mutant], list[str]]:
    """The generated (when `generated`) and named mutants of one file, and the named ones that cannot be planted."""
    text = (ROOT / path).read_text()
    mutants = generate(path, text) if generated else []
    problems = []
    for named in NAMED:
        if named.path != path:
            continue
        planted = named_mutant(named, text)
        if isinstance(planted, str):
            problems.append(f"{named.name}: {planted}")
            continue
        twin = next((m for m in mutants if (m.start, m.end, m.new) == (planted.start, planted.end, planted.new)), None)
        if twin:
            twin.name = named.name
        else:
            mutants.append(planted)
    for mutant in mutants:
        line_text = text.splitlines()[mutant.line - 1]
        for (where, function, snippet, edit), why in EQUIVALENT.items():
            if (where, function, edit) == (path, mutant.function, mutant.edit) and snippet in line_text:
                mutant.equivalent = why
    return mutants, problems


# ---- running them ------------------------------------------------------------------------------

BACKUP_DIR = Path(tempfile.gettempdir()) / f"rlbench-mutate-{hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]}"


class Interrupted(Exception):
    """SIGTERM or SIGHUP: unwind as Ctrl-C does, so the source is restored."""


def _on_signal(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def restore_leftovers() -> None:
    """Put back any file a killed run left mutated (its original waits in BACKUP_DIR)."""
    manifest = BACKUP_DIR / "manifest.json"
    if not manifest.exists():
        return
    for entry in json.loads(manifest.read_text()):
        original = (BACKUP_DIR / entry["backup"]).read_bytes()
        _write(ROOT / entry["path"], original, entry["mtime_ns"])
        print(f"restored {entry['path']} left mutated by an interrupted run", file=sys.stderr)
    _clear_backup()


def _clear_backup() -> None:
    for child in BACKUP_DIR.glob("*"):
        child.unlink()
    if BACKUP_DIR.exists():
        BACKUP_DIR.rmdir()


def _write(path: Path, data: bytes, mtime_ns: int | None = None) -> None:
    """Atomically: a crash never leaves half a file."""
    tmp = path.with_name(f".{path.name}.mutate-tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


class Planted:
    """A mutant in place for the duration of a `with` block; the original comes back whatever happens."""

    def __init__(self, mutant: Mutant) -> None:
        self.mutant, self.path = mutant, ROOT / mutant.path

    def __enter__(self) -> Planted:
        self.original = self.path.read_bytes()
        self.mtime_ns = self.path.stat().st_mtime_ns
        BACKUP_DIR.mkdir(exist_ok=True)
        (BACKUP_DIR / "original").write_bytes(self.original)
        (BACKUP_DIR / "manifest.json").write_text(json.dumps(
            [{"path": self.mutant.path, "backup": "original", "mtime_ns": self.mtime_ns}]))
        text = self.original.decode()
        mutated = text[:self.mutant.start] + self.mutant.new + text[self.mutant.end:]
        # A new timestamp, never the original's: Python must not take the original's cached bytecode.
        stamp = max(time.time_ns(), self.mtime_ns + 2_000_000_000)
        _write(self.path, mutated.encode(), stamp)
        return self

    def __exit__(self, *exc) -> None:
        _write(self.path, self.original, self.mtime_ns)
        _clear_backup()


def _run_tests(tests: list[str], timeout: float, log: Path) -> tuple[str, float, str]:
    """Run the tests in a forked child: ("killed" | "survived" | "timeout" | "error", seconds, first failure)."""
    read_fd, write_fd = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: its own process group, so a timeout kills whatever the tests started
        code = 3
        try:
            os.close(read_fd)
            os.setpgid(0, 0)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
            sys.dont_write_bytecode = True
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            import pytest

            class FirstFailure:
                def pytest_runtest_logreport(self, report):
                    if report.failed:
                        os.write(write_fd, report.nodeid.encode() + b"\n")

            code = int(pytest.main(["-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *tests],
                                   plugins=[FirstFailure()]))
        finally:
            os._exit(code)
    os.close(write_fd)
    failed = b""
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            ready, _, _ = select.select([read_fd], [], [], 0.05)
            if ready:
                failed += os.read(read_fd, 4096)
            if done:
                break
            if time.monotonic() - start > timeout:
                os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return "timeout", time.monotonic() - start, ""
        code = os.waitstatus_to_exitcode(status)
    except BaseException:
        try:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        raise
    finally:
        os.close(read_fd)
    seconds = time.monotonic() - start
    first = failed.decode().splitlines()[0] if failed else ""
    # pytest: 0 all passed, 1 some failed, 2 interrupted (a collection error: the mutant broke an import)
    return {0: "survived", 1: "killed", 2: "killed"}.get(code, "error"), seconds, first


def _warm_up(tests: list[str], log: Path) -> None:
    """Import in this process what the tests import, except rlbench and the tests themselves, so each
    forked child starts with torch and transformers loaded. Learned from one clean run of the tests."""
    listing = log.with_suffix(".modules")
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            import pytest

            pytest.main(["-q", "-p", "no:cacheprovider", "--collect-only", *tests])
            names = [n for n in list(sys.modules) if not n.startswith(("rlbench", "tests", "conftest", "test_",
                                                                          "transformers_modules", "__main__"))]
            listing.write_text("\n".join(names))
            code = 0
        finally:
            os._exit(code)
    os.waitpid(pid, 0)
    import importlib

    for name in listing.read_text().splitlines() if listing.exists() else []:
        try:
            importlib.import_module(name)
        except BaseException:  # noqa: BLE001 - a module that only imports in its own context is simply not warmed
            pass


def _fmt_rate(killed: int, counted: int) -> str:
    return f"{100.0 * killed / counted:5.1f}%" if counted else "  n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help="module paths (default: every module in MODULES)")
    parser.add_argument("--list", action="store_true", help="list the mutants and run nothing")
    parser.add_argument("--json", help="also write the results as one JSON document to this path")
    parser.add_argument("--fail-under", type=float, default=95.0, help="least kill rate of every module, percent")
    parser.add_argument("--timeout-factor", type=float, default=3.0,
                        help="a mutant's tests may take this many times the clean run, plus 30 s")
    args = parser.parse_args(argv)

    if os.environ.get("PYTHONHASHSEED") != "0":  # a fixed hash seed: the same order of sets every run
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    restore_leftovers()

    targets = {**MODULES, **NAMED_ONLY}
    chosen = args.modules or list(targets)
    unknown = [m for m in chosen if m not in targets]
    if unknown:
        print(f"unknown module(s) {', '.join(unknown)}; known: {', '.join(targets)}", file=sys.stderr)
        return 2
    plan: dict[str, list[Mutant]] = {}
    problems: list[str] = []
    for path in chosen:
        plan[path], issues = mutants_of(path, generated=path in MODULES)
        problems += [f"{path}: {issue}" for issue in issues]
    if args.list:
        for path, mutants in plan.items():
            for m in mutants:
                tag = f" [{m.name}]" if m.name else (" [equivalent]" if m.equivalent else "")
                print(f"{m.path}:{m.line} ({m.function}) {m.edit}{tag}")
        print(f"{sum(len(v) for v in plan.values())} mutants", *problems, sep="\n")
        return 0

    logs = Path(tempfile.mkdtemp(prefix="rlbench-mutate-logs-"))
    all_tests = sorted({t for path in chosen for t in targets[path]})
    print(f"warming up: importing what {len(all_tests)} test file(s) import ...", flush=True)
    _warm_up([t.split("::")[0] for t in all_tests], logs / "warm-up.log")
    results: dict[str, dict] = {}
    started = time.monotonic()
    try:
        for path in chosen:
            tests = targets[path]
            status, clean_seconds, failure = _run_tests(tests, 900, logs / "clean.log")
            if status != "survived":
                print(f"{path}: its tests fail without a mutant ({failure or status}); see {logs / 'clean.log'}")
                results[path] = {"error": f"tests fail without a mutant: {failure or status}"}
                continue
            timeout = args.timeout_factor * clean_seconds + 30
            mutants = plan[path]
            print(f"{path}: {len(mutants)} mutants, tests {' '.join(tests)} ({clean_seconds:.1f} s clean)", flush=True)
            for i, mutant in enumerate(mutants):
                with Planted(mutant):
                    mutant.status, mutant.seconds, mutant.failed_test = _run_tests(tests, timeout, logs / "mutant.log")
                if mutant.status == "survived" and mutant.equivalent:
                    mutant.status = "equivalent"
                if mutant.status in ("survived", "error") or mutant.name:
                    tag = f" [{mutant.name}]" if mutant.name else ""
                    print(f"  {i + 1}/{len(mutants)} {mutant.status:9s} {mutant.path}:{mutant.line} "
                          f"({mutant.function}) {mutant.edit}{tag}", flush=True)
            results[path] = {"mutants": [asdict(m) for m in mutants], "clean_seconds": clean_seconds}
    except (KeyboardInterrupt, Interrupted) as exc:
        print(f"\ninterrupted ({type(exc).__name__} {exc}); the source is restored", file=sys.stderr)
        return 130
    return _report(plan, results, problems, time.monotonic() - started, args)


def _report(plan: dict[str, list[Mutant]], results: dict[str, dict], problems: list[str], seconds: float,
            args: argparse.Namespace) -> int:
    ok = True
    print(f"\n{'module':40s} {'mutants':>7s} {'killed':>6s} {'timeout':>7s} {'equiv':>5s} {'survived':>8s} "
          f"{'rate':>6s}")
    summary = {}
    for path, mutants in plan.items():
        if "error" in results.get(path, {}):
            print(f"{path:40s} error: {results[path]['error']}")
            ok = False
            continue
        counts = {s: sum(m.status == s for m in mutants) for s in ("killed", "timeout", "equivalent", "survived",
                                                                   "error")}
        counted = len(mutants) - counts["equivalent"]
        killed = counts["killed"] + counts["timeout"]
        rate = 100.0 * killed / counted if counted else 100.0
        gated = path in MODULES
        ok &= not gated or rate >= args.fail_under
        ok &= all(m.status in ("killed", "timeout") for m in mutants if m.name)
        ok &= counts["error"] == 0
        summary[path] = dict(counts, mutants=len(mutants), kill_rate=round(rate, 1))
        print(f"{path:40s} {len(mutants):7d} {counts['killed']:6d} {counts['timeout']:7d} {counts['equivalent']:5d} "
              f"{counts['survived'] + counts['error']:8d} {_fmt_rate(killed, counted)}")
    survivors = [m for ms in plan.values() for m in ms if m.status in ("survived", "error")]
    print("\nsurvivors:" if survivors else "\nsurvivors: none")
    for m in survivors:
        print(f"  {m.path}:{m.line} ({m.function}) {m.edit}" + (f" [{m.name}]" if m.name else "")
              + (" (error)" if m.status == "error" else ""))
    named = [m for ms in plan.values() for m in ms if m.name]
    print("\nnamed mutants:")
    for m in named:
        print(f"  {m.name:30s} {m.status:9s} {m.path}:{m.line}")
    for problem in problems:
        print(f"  {problem}")
    equivalent = [m for ms in plan.values() for m in ms if m.status == "equivalent"]
    if equivalent:
        print("\nequivalent (cannot change behaviour; not counted):")
        for m in equivalent:
            print(f"  {m.path}:{m.line} {m.edit}: {m.equivalent}")
    problems_block = [p for p in problems if "retired" not in p]
    ok &= not problems_block
    print(f"\n{sum(len(v) for v in plan.values())} mutants in {seconds / 60:.1f} min; "
          + ("ok" if ok else f"FAILED (kill rate under {args.fail_under:g}%, a named mutant survived, or an error)"))
    if args.json:
        Path(args.json).write_text(json.dumps({"modules": summary, "results": results, "problems": problems,
                                               "seconds": round(seconds, 1), "ok": ok}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
