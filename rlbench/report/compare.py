"""`rlbench compare A.json B.json [...]`: reports side by side, runs matched by label and seed.

    rlbench compare results/ci/A/report.json results/ci/B/report.json
    rlbench compare base.json new.json --format md > comparison.md

The first report is the base. For every run the base shares with a later report (same label and
same seed), one table per area (memory by role, throughput, accuracy) lists each metric's value
in every report, and for each later report the absolute and relative change with an arrow:
green when the change is an improvement, red when it is worse (direction from the metric's
`higher_is_better`), plain when the metric has no better direction. `--format md` prints the same
tables in Markdown.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from rlbench.errors import UserError
from rlbench.report.check import format_value
from rlbench.report.metrics import area

AREA_TITLES = {"memory": "memory by role", "throughput": "throughput", "accuracy": "accuracy"}


@dataclass(frozen=True)
class Cell:
    """A table cell: its text and, for Rich, a style ('' for none)."""

    text: str
    style: str = ""


@dataclass(frozen=True)
class Section:
    """One table. Rows start with the run id (empty on the run's later rows); when `grouped`, a Rich
    table prints the run id as a heading row instead of a column, to stay narrow."""

    title: str
    columns: list[str]
    rows: list[list[Cell]]
    grouped: bool = True


def change_cells(base: dict[str, Any] | None, new: dict[str, Any] | None) -> list[Cell]:
    """[absolute change, relative change, arrow] of one metric between two reports."""
    if base is None or new is None or base.get("value") is None or new.get("value") is None:
        return [Cell("-"), Cell("-"), Cell("")]
    delta = new["value"] - base["value"]
    absolute = format_value(delta, base.get("unit", ""), signed=True)
    relative = f"{delta / abs(base['value']):+.1%}" if base["value"] else "-"
    if delta == 0:
        return [Cell(absolute), Cell(relative), Cell("=")]
    arrow = "↑" if delta > 0 else "↓"
    higher = base.get("higher_is_better")
    if higher is None:
        return [Cell(absolute), Cell(relative), Cell(arrow)]
    better = (delta > 0) == higher
    return [Cell(absolute), Cell(relative), Cell(f"{arrow} {'better' if better else 'worse'}",
                                                 "green" if better else "red")]


def value_text(metric: dict[str, Any] | None) -> str:
    if metric is None:
        return "-"
    text = format_value(metric.get("value"), metric.get("unit", ""))
    stderr = metric.get("stderr")
    if stderr and metric.get("unit") == "fraction":
        text += f" ± {stderr:.1%}"
    return text


def metric_label(name: str) -> str:
    """memory/policy/peak_bytes -> 'policy peak'; other names are shown as they are."""
    parts = name.split("/")
    if len(parts) == 3 and parts[0] == "memory":
        return f"{parts[1]} {parts[2].removesuffix('_bytes')}"
    if len(parts) == 2 and parts[0] == "memory":
        return parts[1].removesuffix("_bytes")
    return name


def compare_sections(reports: list[dict[str, Any]], names: list[str]) -> tuple[list[Section], list[str]]:
    """Tables per area, plus notes on runs that could not be matched. Raises UserError when the
    base shares no run with any other report."""
    base = reports[0]
    keyed = [{(r["label"], r["seed"]): r for r in report["runs"]} for report in reports]
    shared = [r for r in base["runs"] if any((r["label"], r["seed"]) in k for k in keyed[1:])]
    if not shared:
        raise UserError("no runs in common: runs are matched by label and seed, and "
                        f"{names[0]} has {', '.join(r['id'] for r in base['runs']) or 'none'}")
    notes = []
    for name, keys in zip(names[1:], keyed[1:]):
        missing = [r["id"] for r in base["runs"] if (r["label"], r["seed"]) not in keys]
        extra = [r["id"] for k, r in keys.items() if k not in keyed[0]]
        if missing:
            notes.append(f"{name}: has no {', '.join(missing)}")
        if extra:
            notes.append(f"{name}: {', '.join(extra)} not in the base report, not compared")
    short = [f"[{i}]" for i in range(len(reports))]
    columns = ["run", "metric", f"{short[0]} base"]
    for s in short[1:]:
        columns += [s, f"Δ {s}", f"Δ% {s}", ""]
    sections = [Section("runs", ["run", *[f"status {s}" for s in short]], [], grouped=False)]
    for run in shared:
        key = (run["label"], run["seed"])
        sections[0].rows.append([Cell(run["id"])] + [
            _status_cell(keys.get(key)) for keys in keyed])
    for area_name, title in AREA_TITLES.items():
        rows = []
        for run in shared:
            key = (run["label"], run["seed"])
            metric_sets = [(keys.get(key) or {}).get("metrics") or {} for keys in keyed]
            names_here = [n for n in _ordered_names(metric_sets) if area(n) == area_name]
            for i, name in enumerate(names_here):
                base_metric = metric_sets[0].get(name)
                row = [Cell(run["id"] if i == 0 else ""), Cell(metric_label(name)), Cell(value_text(base_metric))]
                for metrics in metric_sets[1:]:
                    row += [Cell(value_text(metrics.get(name))), *change_cells(base_metric, metrics.get(name))]
                rows.append(row)
        if rows:
            sections.append(Section(title, columns, rows))
    return sections, notes


def _status_cell(run: dict[str, Any] | None) -> Cell:
    if run is None:
        return Cell("absent", "dim")
    status = run.get("status", "?")
    return Cell(status, "green" if status == "ok" else "red")


def _ordered_names(metric_sets: list[dict[str, Any]]) -> list[str]:
    """Metric names in the order they first appear across the reports (memory roles stay together)."""
    seen: dict[str, None] = {}
    for metrics in metric_sets:
        for name in metrics:
            seen.setdefault(name, None)
    return list(seen)


def rich_table(section: Section) -> Table:
    table = Table(title=section.title, title_justify="left")
    columns = section.columns[1:] if section.grouped else section.columns
    for i, col in enumerate(columns):
        numeric = section.grouped and 0 < i < len(columns) - 1
        table.add_column(col, justify="right" if numeric else "left")
    for row in section.rows:
        cells = [f"[{c.style}]{c.text}[/]" if c.style else c.text for c in row]
        if not section.grouped:
            table.add_row(*cells)
            continue
        if row[0].text:
            if table.row_count:
                table.add_section()
            table.add_row(f"[bold]{row[0].text}[/]", *[""] * (len(columns) - 1))
        table.add_row(f"  {cells[1]}", *cells[2:])
    return table


def markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table; columns of numbers right-aligned."""
    def esc(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    def numeric(i: int) -> bool:
        cells = [row[i] for row in rows if row[i] not in ("", "-")]
        return bool(cells) and all(c.lstrip("*")[:1] in "0123456789+-" for c in cells)

    align = ["---:" if numeric(i) else "---" for i in range(len(columns))]
    lines = ["| " + " | ".join(esc(c) for c in columns) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def compare_markdown(sections: list[Section], names: list[str], notes: list[str]) -> str:
    parts = ["# rlbench compare", "", *[f"- [{i}] `{name}`" + (" (base)" if i == 0 else "")
                                        for i, name in enumerate(names)]]
    for section in sections:
        parts += ["", f"## {section.title}", "", markdown_table(section.columns, [[c.text for c in row]
                                                                                for row in section.rows])]
    if notes:
        parts += ["", *[f"- note: {n}" for n in notes]]
    return "\n".join(parts) + "\n"


def compare_command(paths: list[str], fmt: str, console: Console) -> int:
    """Print the comparison of `paths` (the first is the base) as Rich tables or Markdown."""
    from rlbench.report.schema import load_report

    if len(paths) < 2:
        raise UserError("compare needs at least two reports: the base first, then the ones to set against it")
    reports = [load_report(p) for p in paths]
    names = [str(Path(p)) for p in paths]
    sections, notes = compare_sections(reports, names)
    if fmt == "md":
        console.print(compare_markdown(sections, names, notes), markup=False, highlight=False, soft_wrap=True)
        return 0
    for i, (name, report) in enumerate(zip(names, reports)):
        console.print(f"[{i}] {name}: suite {report['suite']['name']}, created {report['created']}"
                      + (" (base)" if i == 0 else ""), highlight=False)
    for section in sections:
        console.print(rich_table(section))
    for note in notes:
        console.print(f"[dim]note: {note}[/]", highlight=False)
    return 0
