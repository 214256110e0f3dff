"""Single-edit mutants of a Python file, generated from its syntax tree (see tools/mutate.py).

Each mutant replaces one span of the source text, so the file keeps its layout and the edit can be
shown as it reads: "`accuracy - 0.5 <= z * se` -> `accuracy - 0.5 < z * se`".
"""

from __future__ import annotations

import ast
import io
import tokenize
from dataclasses import dataclass


@dataclass(frozen=True)
class Named:
    """A bug that once got past the tests: `old` -> `new` inside function `function` of `path`."""

    name: str
    path: str
    function: str
    old: str
    new: str
    retired: str = ""  # why it cannot be planted any more (the code it mutated is gone)



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
    if isinstance(node, ast.BinOp) and (_is_text(node.left) or _is_text(node.right)):
        return True
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
