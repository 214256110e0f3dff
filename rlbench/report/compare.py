"""`rlbench compare A.json B.json [...]`: reports side by side, runs matched by label and seed.

    rlbench compare base.json new.json                     headline metrics of every run (one screen)
    rlbench compare base.json new.json --changed           only what changed beyond noise or threshold
    rlbench compare base.json new.json --metrics 'memory/*' --metrics eval/accuracy
    rlbench compare base.json new.json --all --format md > comparison.md
    rlbench compare base.json new.json --changed --format json > comparison.json

The first report is the base. For every run the base shares with a later report (same label and
same seed), each selected metric's value in every report, and for each later report the absolute
and relative change with an arrow: green "better" when the change is an improvement, red "worse"
(direction from the metric's `higher_is_better`), plain when the metric has no better direction,
dim "within noise" or "within threshold" otherwise: the labels `rlbench check` gives the same
change (rlbench.report.check.judge). Each run's heading carries its status in every report.
Above the tables, every setting a later report was run with that differs from the base's (model,
task, budget, rollout, evaluation, seeds, algorithm params: rlbench/report/mismatch.py) is listed
as a warning, and environment differences (library versions, CPU, GPU) as information; the
comparison always proceeds. Each report's machine is named (its fingerprint and hardware class,
rlbench/report/machine.py); when a later report ran on other hardware than the base, a warning says
so, and its times, throughput, memory peaks and accuracy are labelled "not comparable" (the label
`rlbench check` gives them) rather than better or worse. A metric only one report has, because the
other's schema predates it, is new: shown, not counted as a change. Reports holding impossible
figures or units unlike the base's are refused (exit 2, rlbench/report/sanity.py).

What is shown:
- by default, the headline metrics (the process, training and evaluation peaks, total and anonymous; step time,
  generated tokens/s, MFU, held-out accuracy) in one table, and a count of the metrics that changed;
- `--all`: every metric, one table per area (memory by role, throughput, accuracy, learning);
- `--metrics GLOB` (repeatable, or comma-separated): the metrics whose name matches, by area;
- `--changed`: of those (of every metric when no `--metrics` is given), only the ones whose change
  exceeds the noise and the base suite's `check:` threshold (see `beyond_noise`).

Formats: Rich tables (warnings to stderr), Markdown, or JSON (`compare_document`: every shown row's
values and changes as numbers, with the labels above). `compare` is not a gate: it exits 0 whatever
changed, and 2 on unusable input (a missing or unreadable report, fewer than two, no run in common,
impossible figures or other units), as `check` does.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from rlbench.errors import UserError
from rlbench.report.changes import (
    Cell,
    Pairing,
    beyond_noise,
    change_cells,
    change_label,
    metric_label,
    value_text,
)
from rlbench.report.format import Markdown, markdown_table, md_text
from rlbench.report.gate import gated, problem_count, thresholds_for
from rlbench.report.io import json_document
from rlbench.report.machine import fingerprint_text, hardware_difference
from rlbench.report.metrics import area
from rlbench.report.mismatch import Difference, environment_differences, setting_differences
from rlbench.report.sanity import require_same_units, require_usable
from rlbench.report.seeds import print_seed_means

__all__ = ["Cell", "beyond_noise", "change_cells", "change_label", "markdown_table", "metric_label", "value_text"]
# re-exported: the change labels (rlbench/report/changes.py) and Markdown tables, shared with summary.md

AREA_TITLES = {"memory": "memory by role", "throughput": "throughput", "accuracy": "accuracy",
               "learning": "learning"}
HEADLINE = ("memory/process_peak_bytes", "memory/process_anon_peak_bytes", "memory/training_peak_bytes",
            "memory/training_anon_peak_bytes", "memory/eval_peak_bytes", "memory/eval_anon_peak_bytes", "time/step_s",
            "throughput/gen_tokens_per_s", "throughput/mfu", "eval/accuracy")


@dataclass
class RunBlock:
    """One run's rows in a table: its status in every report, then one row per metric:
    [metric, base value, then (value, Δ, Δ%, arrow) per later report]."""

    run: str
    statuses: list[Cell]
    rows: list[list[Cell]] = field(default_factory=list)
    data: list[dict[str, Any]] = field(default_factory=list)  # each row's numbers, for --format json


@dataclass
class Section:
    """One table: a title, the value columns (after the run and metric columns) and a block per run."""

    title: str
    value_columns: list[str]
    blocks: list[RunBlock] = field(default_factory=list)


@dataclass(frozen=True)
class Selection:
    """Which metric rows to show: every one (`all`), those matching `metrics` globs, or the headline
    metrics; then, with `changed`, only the rows that changed beyond noise or threshold."""

    all: bool = False
    metrics: tuple[str, ...] = ()
    changed: bool = False

    def wants(self, name: str) -> bool:
        if self.metrics:
            return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.metrics)
        return self.all or self.changed or name in HEADLINE

    @property
    def headline(self) -> bool:
        return not (self.all or self.metrics or self.changed)


@dataclass
class Comparison:
    sections: list[Section]
    notes: list[str]
    rows_total: int = 0  # metric rows of the shared runs, before selection
    rows_changed: int = 0  # of those, rows whose change exceeds noise or threshold
    settings: dict[str, list[Difference]] = field(default_factory=dict)  # report name -> settings unlike the base's
    environment: dict[str, list[Difference]] = field(default_factory=dict)  # report name -> environment differences
    hardware: dict[str, str | None] = field(default_factory=dict)  # report name -> hardware_difference from the base
    machines: list[str] = field(default_factory=list)  # each report's fingerprint_text, in order

    def mismatch_lines(self) -> list[tuple[str, str]]:
        """(line, 'warning' or 'information'): the settings each later report does not share with
        the base, then its environment differences; nothing when they all ran alike."""
        lines = []
        for name, why in self.hardware.items():
            if why:
                lines.append((f"warning: {name} ran on other hardware than the base ({why}): its times, throughput, "
                              "memory peaks and accuracy are not comparable", "warning"))
        for name, differences in self.settings.items():
            if differences:
                lines.append((f"warning: {name} was run with settings unlike the base's ({len(differences)}): its "
                              "figures are not like for like", "warning"))
                lines += [(f"  {d.describe('the base', name)}", "warning") for d in differences]
        for name, differences in self.environment.items():
            if differences:
                lines.append((f"environment of {name} differs from the base's (information):", "information"))
                lines += [(f"  {d.describe('the base', name)}", "information") for d in differences]
        return lines


def compare_reports(reports: list[dict[str, Any]], names: list[str], selection: Selection | None = None) -> Comparison:
    """The tables `selection` asks for, notes on runs that could not be matched, and how many metric
    rows there are and changed. Raises UserError when the base shares no run with any other report."""
    selection = selection or Selection()
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
    for name, report in zip(names, reports):
        require_usable(report, name, gated)
    for name, report in zip(names[1:], reports[1:]):
        require_same_units(report, base, (name, names[0]))
    thresholds = thresholds_for(base, [])
    short = [f"[{i}]" for i in range(len(reports))]
    value_columns = [f"{short[0]} base"]
    for s in short[1:]:
        value_columns += [s, f"Δ {s}", f"Δ% {s}", ""]
    titles = {"headline": "headline metrics"} if selection.headline else AREA_TITLES
    sections = {key: Section(title, value_columns) for key, title in titles.items()}
    out = Comparison([], notes, machines=[fingerprint_text(r.get("environment") or {}) for r in reports])
    for i, report in enumerate(reports[1:], 1):
        out.settings[f"[{i}]"] = setting_differences(report, base)
        out.environment[f"[{i}]"] = environment_differences(report, base)
        out.hardware[f"[{i}]"] = hardware_difference(report, base)
    for run in shared:
        runs = [keys.get((run["label"], run["seed"])) for keys in keyed]
        statuses = [_status_cell(r) for r in runs]
        status_changed = len({c.text for c in statuses}) > 1
        metric_sets = [(r or {}).get("metrics") or {} for r in runs]
        problems = problem_count(run, base.get("suite") or {})
        pairings = [Pairing(problems, out.hardware[f"[{i}]"] is None, report, base)
                    for i, report in enumerate(reports[1:], 1)]
        blocks = {key: RunBlock(run["id"], statuses) for key in sections}
        for name in _ordered_names(metric_sets):
            base_metric = metric_sets[0].get(name)
            beyond = [beyond_noise(name, base_metric, m.get(name), thresholds, p)
                      for m, p in zip(metric_sets[1:], pairings)]
            out.rows_total += 1
            out.rows_changed += any(beyond)
            if not selection.wants(name) or (selection.changed and not any(beyond)):
                continue
            row = [Cell(metric_label(name)), Cell(value_text(base_metric))]
            labels = []
            for metrics, changed, pairing in zip(metric_sets[1:], beyond, pairings):
                labels.append(change_label(name, base_metric, metrics.get(name), thresholds, pairing))
                row += [Cell(value_text(metrics.get(name))),
                        *change_cells(base_metric, metrics.get(name), not changed, labels[-1])]
            block = blocks["headline" if selection.headline else area(name)]
            block.rows.append(row)
            block.data.append(_row_data(name, metric_sets, labels, beyond))
        for key, block in blocks.items():
            if block.rows or (status_changed and key == next(iter(sections))):
                sections[key].blocks.append(block)
    out.sections = [s for s in sections.values() if s.blocks]
    return out


def _row_data(name: str, metric_sets: list[dict[str, Any]], labels: list[str], beyond: list[bool]) -> dict[str, Any]:
    """One metric row's numbers: its value in every report, and each later report's change from the base."""
    entries = [m.get(name) or {} for m in metric_sets]
    first = next((e for e in entries if e), {})
    values = [e.get("value") for e in entries]
    changes = []
    for value, label, changed in zip(values[1:], labels, beyond):
        delta = None if value is None or values[0] is None else value - values[0]
        changes.append({"change": delta, "relative_change": delta / abs(values[0]) if delta is not None and values[0]
                        else None, "label": label, "beyond_noise": changed})
    return {"metric": name, "area": area(name), "unit": first.get("unit", ""),
            "higher_is_better": first.get("higher_is_better"), "values": values, "changes": changes}


def compare_document(comparison: Comparison, names: list[str], reports: list[dict[str, Any]], footer: str) -> dict:
    """`compare --format json`: the reports and their machines, what differs from the base, and per
    shared run its status and every selected metric with its values and changes (labels as `check`)."""
    from rlbench.report.seeds import label_seed_means

    runs: dict[str, dict[str, Any]] = {}
    for section in comparison.sections:
        for block in section.blocks:
            entry = runs.setdefault(block.run, {"run": block.run, "statuses": [c.text for c in block.statuses],
                                                "metrics": []})
            entry["metrics"] += block.data
    mismatch = comparison.mismatch_lines()
    return {
        "rlbench_compare": 1,
        "reports": [{"index": i, "path": name, "base": i == 0, "suite": (r.get("suite") or {}).get("name"),
                     "created": r.get("created"), "machine": machine, "seed_means": label_seed_means(r)}
                    for i, (name, r, machine) in enumerate(zip(names, reports, comparison.machines))],
        "warnings": [line.strip() for line, kind in mismatch if kind == "warning"],
        "information": [line.strip() for line, kind in mismatch if kind == "information"],
        "hardware_differences": dict(comparison.hardware),
        "setting_differences": {k: [d.describe("the base", k) for d in v] for k, v in comparison.settings.items()},
        "runs": list(runs.values()),
        "rows_total": comparison.rows_total,
        "rows_changed": comparison.rows_changed,
        "summary": footer,
        "notes": list(comparison.notes),
    }


def _status_cell(run: dict[str, Any] | None) -> Cell:
    if run is None:
        return Cell("absent", "dim")
    status = str(run.get("status", "?"))
    return Cell(status, "green" if status == "ok" else "red")


def _ordered_names(metric_sets: list[dict[str, Any]]) -> list[str]:
    """Metric names in the order they first appear across the reports (memory roles stay together)."""
    seen: dict[str, None] = {}
    for metrics in metric_sets:
        for name in metrics:
            seen.setdefault(name, None)
    return list(seen)


def _styled(cell: Cell) -> Text:
    return Text(cell.text, style=cell.style)


def rich_table(section: Section) -> Table:
    """Rows grouped under a heading row per run (its id, and its status under each report's value)."""
    table = Table(title=Text(section.title), title_justify="left")
    table.add_column("metric")
    for i, col in enumerate(section.value_columns):
        table.add_column(Text(col), justify="left" if i % 4 == 0 and i else "right")
    value_at = [0] + [1 + 4 * i for i in range(len(section.blocks[0].statuses) - 1)] if section.blocks else []
    for block in section.blocks:
        if table.row_count:
            table.add_section()
        heading: list[Text] = [Text("")] * len(section.value_columns)
        for column, status in zip(value_at, block.statuses):
            heading[column] = _styled(status)
        table.add_row(Text(block.run, style="bold"), *heading)
        for row in block.rows:
            table.add_row(Text(f"  {row[0].text}"), *[_styled(c) for c in row[1:]])
    return table


def section_markdown(section: Section) -> str:
    rows: list[list[str]] = []
    value_at = [0] + [1 + 4 * i for i in range(len(section.blocks[0].statuses) - 1)]
    for block in section.blocks:
        status = [""] * len(section.value_columns)
        for column, cell in zip(value_at, block.statuses):
            status[column] = cell.text
        rows.append([block.run, "status", *status])
        rows += [["", *[c.text for c in row]] for row in block.rows]
    right = {2 + i for i in range(len(section.value_columns)) if i == 0 or i % 4}  # values and changes
    return markdown_table(["run", "metric", *section.value_columns], rows, right)


def compare_markdown(comparison: Comparison, names: list[str], footer: str = "") -> str:
    machines = comparison.machines or [""] * len(names)
    parts = ["# rlbench compare", "", *[Markdown(f"- \\[{i}\\] {md_text(name)}" + (" (base)" if i == 0 else "")
                                                 + (f": {md_text(machine)}" if machine else ""))
                                        for i, (name, machine) in enumerate(zip(names, machines))]]
    mismatch = comparison.mismatch_lines()
    if mismatch:
        parts += ["", *[f"- {md_text(line.strip())}" if line.startswith("  ") else md_text(line)
                        for line, _ in mismatch]]
    for section in comparison.sections:
        parts += ["", f"## {md_text(section.title)}", "", section_markdown(section)]
    if comparison.notes or footer:
        parts.append("")
    parts += [f"- note: {md_text(n)}" for n in comparison.notes]
    if footer:
        parts.append(md_text(footer))
    return "\n".join(parts) + "\n"


def selection_footer(comparison: Comparison, selection: Selection) -> str:
    shown = sum(len(b.rows) for s in comparison.sections for b in s.blocks)
    what = f"{comparison.rows_changed} of {comparison.rows_total} metric rows changed beyond noise or threshold"
    if selection.headline:
        return f"{what}; shown: the {shown} headline rows. --changed: only the changed rows, --all: every metric"
    if selection.changed and not shown:
        return f"{what}: nothing to show"
    return f"{what}; shown: {shown}"


def compare_command(paths: list[str], fmt: str, console: Console, selection: Selection | None = None,
                    quiet: bool = False, err: Console | None = None) -> int:
    """Print the comparison of `paths` (the first is the base) as Markdown (`fmt` md), JSON (json) or
    Rich tables (any other `fmt`); 0.
    Warnings (other hardware, other settings) go to `err` (the console when not given) in the table
    format, and are part of the document in the others; `quiet` prints the one-line summary only.
    Unusable input (a missing or unreadable report, fewer than two, no run in common, impossible
    figures, other units) raises UserError: exit 2."""
    from rlbench.report.schema import load_report

    selection = selection or Selection()
    err = err or console
    if len(paths) < 2:
        raise UserError("compare needs at least two reports: the base first, then the ones to set against it")
    reports = [load_report(p) for p in paths]
    names = [str(Path(p)) for p in paths]
    comparison = compare_reports(reports, names, selection)
    footer = selection_footer(comparison, selection)
    if quiet:
        console.print(footer, markup=False, highlight=False)
        return 0
    if fmt == "json":
        console.out(json_document(compare_document(comparison, names, reports, footer)), highlight=False, end="")
        return 0
    if fmt == "md":
        console.print(compare_markdown(comparison, names, footer), markup=False, highlight=False, soft_wrap=True)
        print_seed_means([(f"[{i}] {n}", r) for i, (n, r) in enumerate(zip(names, reports))], console, markdown=True)
        return 0
    for i, (name, report) in enumerate(zip(names, reports)):
        console.print(f"[{i}] {name}: suite {report['suite']['name']}, created {report['created']}"
                      + (" (base)" if i == 0 else ""), markup=False, highlight=False)
        console.print(f"    {comparison.machines[i]}", markup=False, highlight=False, soft_wrap=True)
    for line, kind in comparison.mismatch_lines():
        (err if kind == "warning" else console).print(line, style="yellow" if kind == "warning" else "dim",
                                                      markup=False, highlight=False)
    for section in comparison.sections:
        console.print(rich_table(section))
    for note in comparison.notes:
        console.print(f"note: {note}", style="dim", markup=False, highlight=False)
    console.print(footer, style="dim", markup=False, highlight=False)
    print_seed_means([(f"[{i}] {n}", r) for i, (n, r) in enumerate(zip(names, reports))], console)
    return 0
