"""Reading suite YAML with bounds: a suite file cannot exhaust memory, the stack or patience.

`yaml.safe_load` alone builds no objects it should not, but it accepts what a suite never needs
and a hostile or broken file can exploit:

- size: a suite is a few kilobytes; files over MAX_BYTES are refused before parsing;
- nesting: a suite is a handful of levels deep; over MAX_DEPTH levels is refused while parsing
  (events, not recursion), so 600 nested lists give one line instead of a RecursionError;
- aliases: `*anchor` shares a node, so a 400-byte file of nested aliases stands for billions of
  values once the loader un-shares them; the expanded size is counted on the composed node graph
  (each node once) and over MAX_VALUES values is refused;
- duplicate keys: `budget` written twice silently kept the last one; now an error naming both lines.

Every problem is a UserError of one line, `PATH:LINE: what is wrong`.

    data = read_yaml_text(text, "suites/my.yaml")
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from rlbench.errors import UserError

MAX_BYTES = 1 << 20  # 1 MiB; the largest suite in suites/ is under 4 KiB
MAX_DEPTH = 32  # levels of mappings and lists; a suite needs about 5
MAX_VALUES = 100_000  # values after aliases are expanded; a suite has a few hundred
MERGE_TAG = "tag:yaml.org,2002:merge"


class _BoundedLoader(yaml.SafeLoader):
    """The pure-Python SafeLoader with duplicate keys refused."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:
                continue  # `<<: *defaults` merges keys that the mapping may then override
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader reports it below
                continue
            if first is not None:
                raise _Problem(key_node, f"duplicate key {key!r} (first given on line {first}); "
                                         "give each key once")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


class _Problem(Exception):
    def __init__(self, node_or_line: Node | int, message: str) -> None:
        self.line = node_or_line if isinstance(node_or_line, int) else node_or_line.start_mark.line + 1
        self.message = message
        super().__init__(message)


def read_yaml_text(text: str, where: str) -> Any:
    """Parse one YAML document within the bounds above; `where` names it in error messages."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_BYTES:
        raise UserError(f"{where}: {size:,} bytes is too large for a suite file (at most {MAX_BYTES:,})")
    try:
        _check_depth(text)
        loader = _BoundedLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _check_expanded_size(node)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except _Problem as err:
        raise UserError(f"{where}:{err.line}: {err.message}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"{where}{line}: not valid YAML: {problem}") from None


def _check_depth(text: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH, reading the event stream (no recursion)."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise _Problem(event.start_mark.line + 1,
                               f"nested more than {MAX_DEPTH} levels deep; a suite needs a handful")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def _check_expanded_size(root: Node) -> None:
    """Refuse a document whose values, counted with every alias expanded, exceed MAX_VALUES.

    Each distinct node is visited once (an alias is the same node object), so this is linear in
    the file even when the expansion is exponential. Depth is already bounded by _check_depth."""
    sizes: dict[int, int] = {}

    def size(node: Node) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        if isinstance(node, ScalarNode):
            total = 1
        elif isinstance(node, SequenceNode):
            total = 1 + sum(size(item) for item in node.value)
        elif isinstance(node, MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in node.value)
        else:
            total = 1
        sizes[id(node)] = total = min(total, MAX_VALUES + 1)
        if total > MAX_VALUES:
            raise _Problem(node, f"expands to more than {MAX_VALUES:,} values through aliases (*name); "
                                 "write the values out instead")
        return total

    size(root)
