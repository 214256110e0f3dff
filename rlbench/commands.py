"""`rlbench validate` and `rlbench ls`: whether suite files are valid, and what a suite may name.

    rlbench validate suites/*.yaml [--json] [--quiet] [--explain]
    rlbench ls [--params] [--json]

Both print tables (or lines) for people, or with `--json` one JSON document on stdout for
machines. validate's warnings (what this machine lacks to run a suite) go to stderr, its errors
too, each with its field path; exit 0 when every suite is valid, 2 otherwise.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.markup import escape

from rlbench.errors import UserError


def validate_command(paths: list[str], overrides: list[str], console: Console, err: Console, explain: bool = False,
                     as_json: bool = False, quiet: bool = False) -> int:
    """Load every suite with `overrides`; print an 'ok' line per valid suite (or the JSON document),
    its warnings to `err`; raise UserError with every error of every suite (exit 2)."""
    from rlbench.config import Suite, field_help, load_suite
    from rlbench.requirements import missing_requirements

    errors: list[str] = []
    entries = []
    for path in paths:
        try:
            suite = load_suite(path, overrides)
        except UserError as exc:
            prefix = f"{path}: " if len(paths) > 1 else ""
            errors.extend(prefix + m for m in exc.messages)
            entries.append({"path": path, "valid": False, "errors": list(exc.messages)})
            continue
        labels = [a.label or a.name for a in suite.algorithms]
        warnings = list(missing_requirements(suite))
        entries.append({"path": path, "valid": True, "suite": suite.name, "runs": len(labels) * len(suite.seeds),
                        "algorithms": labels, "seeds": list(suite.seeds), "warnings": warnings})
        if not (as_json or quiet):
            console.print(f"[green]ok[/] {escape(path)}: suite '{escape(suite.name)}', "
                          f"{len(labels) * len(suite.seeds)} run(s): " + escape(", ".join(labels)), highlight=False)
        if not quiet:
            for warning in warnings:
                err.print(f"[yellow]warning:[/] this machine cannot run it yet: {escape(warning)}", soft_wrap=True)
    fields = [{"field": p, "type": t, "default": _plain(d), "help": h} for p, t, d, h in field_help(Suite)] \
        if explain else []
    if as_json:
        console.out(json.dumps({"valid": not errors, "suites": entries, **({"fields": fields} if explain else {})},
                               indent=2), highlight=False)
    elif explain and not quiet:
        for entry in fields:
            console.print(f"[cyan]{entry['field']}[/] ({entry['type']}, default {entry['default']!r}): "
                          f"{entry['help']}", highlight=False)
    if errors:
        raise UserError(*errors)
    if quiet:
        console.print(f"ok: {len(paths)} suite(s) valid", highlight=False)
    return 0


def _plain(value: Any) -> Any:
    """A default for JSON: as it is when JSON can hold it, else its repr."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


def listing(params: bool = False) -> dict[str, Any]:
    """What `ls --json` prints: every registry's entries, and with `params` every algorithm's parameters."""
    from rlbench.catalog import ALGORITHMS, REGISTRIES
    from rlbench.config import field_help

    out: dict[str, Any] = {f"{registry.kind}s": [{"name": e.name, "help": e.help} for e in registry.entries()]
                           for registry in REGISTRIES}
    if params:
        out["params"] = {}
        for entry in ALGORITHMS.entries():
            metadata = {fld.name: fld.metadata for fld in dataclasses.fields(entry.obj.params_cls)}
            out["params"][entry.name] = [
                {"param": path, "type": type_name, "default": _plain(default),
                 "allowed": allowed_values(metadata.get(path, {})), "help": help_text}
                for path, type_name, default, help_text in field_help(entry.obj.params_cls)]
    return out


def ls_command(console: Console, params: bool = False, as_json: bool = False) -> int:
    """Print the registries (and with `params` each algorithm's parameters) as tables or JSON; 0."""
    from rich.table import Table

    data = listing(params)
    if as_json:
        console.out(json.dumps(data, indent=2), highlight=False)
        return 0
    for kind, entries in data.items():
        if kind == "params":
            continue
        table = Table(title=kind, title_justify="left", show_header=False)
        table.add_column("name", style="cyan")
        table.add_column("what it is")
        for entry in entries:
            table.add_row(escape(entry["name"]), escape(entry["help"]))
        console.print(table)
    for name, rows in data.get("params", {}).items():
        table = Table(title=f"{escape(name)} params (algorithms[].params)", title_justify="left")
        for col in ("param", "type", "default", "allowed", "help"):
            table.add_column(col, overflow="fold")
        for row in rows:
            table.add_row(escape(row["param"]), escape(row["type"]), escape(repr(row["default"])),
                          escape(row["allowed"]), escape(row["help"]))
        console.print(table)
    return 0


def allowed_values(meta: Mapping[str, Any]) -> str:
    """A field's constraints from its `f(...)` metadata, as validation enforces them:
    'token_mean | batch', '0 < x < 1', 'x ≥ 1'; '' when any value of its type is accepted."""
    if meta.get("choices"):
        return " | ".join(str(c) for c in meta["choices"])
    low = next(((op, meta[k]) for k, op in (("gt", "<"), ("ge", "≤")) if meta.get(k) is not None), None)
    high = next(((op, meta[k]) for k, op in (("lt", "<"), ("le", "≤")) if meta.get(k) is not None), None)
    if low and high:
        return f"{low[1]:g} {low[0]} x {high[0]} {high[1]:g}"
    if low:
        return f"x {'>' if low[0] == '<' else '≥'} {low[1]:g}"
    if high:
        return f"x {high[0]} {high[1]:g}"
    return ""
