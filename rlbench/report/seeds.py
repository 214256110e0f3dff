"""Means over seeds: each label's (recipe's) held-out accuracy and change of accuracy averaged over
its ok seeds, with a t-based 95% interval and the spread (`stats.seed_mean`).

One seed's interval says how precisely one trained model was measured; the spread over seeds says
how much training itself varies, which is what a recipe comparison has to beat. The run tables,
summary.md, `rlbench compare` and `rlbench check` show these rows under the per-seed rows for
every label with two or more ok seeds.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from rlbench.report.stats import seed_mean

# metric -> (what the row shows, whether it is a change shown in signed points)
SEED_METRICS: dict[str, tuple[str, bool]] = {
    "eval/accuracy": ("acc after %", False),
    "eval/accuracy_delta": ("Δ acc (pts)", True),
    "eval/accuracy_delta_strict": ("Δ strict (pts)", True),
    "eval/accuracy_delta_flexible": ("Δ flexible (pts)", True),
    "eval/accuracy_delta_seen": ("Δ seen chains (pts)", True),
    "eval/accuracy_delta_unseen": ("Δ unseen chains (pts)", True),
}
COLUMNS = ("label", "figure", "seeds", "mean", "95% CI", "sd", "min..max")


def label_seed_means(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per label with at least two ok runs and per metric of SEED_METRICS: `seed_mean` of the
    metric's values over those runs, with "label", "metric" and "seeds" (the seeds, in run order)."""
    by_label: dict[str, list[dict[str, Any]]] = {}
    for run in report.get("runs") or []:
        if run.get("status") == "ok":
            by_label.setdefault(run["label"], []).append(run)
    out = []
    for label, runs in by_label.items():
        for name in SEED_METRICS:
            pairs = [(run["seed"], ((run.get("metrics") or {}).get(name) or {}).get("value")) for run in runs]
            pairs = [(seed, value) for seed, value in pairs if value is not None]
            if len(pairs) >= 2:
                out.append(dict(seed_mean([v for _, v in pairs]), label=label, metric=name,
                                seeds=[s for s, _ in pairs]))
    return out


def seed_rows(report: dict[str, Any]) -> list[list[str]]:
    """label_seed_means as text cells (COLUMNS): accuracy in percent, changes in signed points."""
    rows = []
    for m in label_seed_means(report):
        what, signed = SEED_METRICS[m["metric"]]
        fmt = "{:+.1f}" if signed else "{:.1f}"

        def cell(x: float | None, fmt: str = fmt) -> str:
            return "-" if x is None else fmt.format(x * 100)

        ci = f"[{cell(m['ci95'][0])}, {cell(m['ci95'][1])}]" if m["ci95"] else "-"
        rows.append([m["label"], what, str(m["n"]), cell(m["mean"]), ci, cell(m["sd"], "{:.1f}"),
                     f"{cell(m['min'])}..{cell(m['max'])}"])
    return rows


SEED_NOTE = ("mean over seeds with a 95% interval from Student's t on seeds - 1 degrees of freedom; sd: sample "
             "standard deviation over seeds; min..max: the spread")


def seed_table(report: dict[str, Any], title: str = "mean over seeds") -> Table | None:
    """A Rich table of `seed_rows`, or None when no label has two ok seeds."""
    rows = seed_rows(report)
    if not rows:
        return None
    table = Table(title=Text(title), title_justify="left", caption=SEED_NOTE)
    for col in COLUMNS:
        table.add_column(col, justify="left" if col in ("label", "figure") else "right", no_wrap=col != "label")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    return table


def seed_markdown(report: dict[str, Any], title: str = "mean over seeds") -> list[str]:
    """A Markdown section of `seed_rows` (no lines when no label has two ok seeds)."""
    from rlbench.report.format import markdown_table, md_text

    rows = seed_rows(report)
    if not rows:
        return []
    return [f"## {md_text(title)}", "", markdown_table(list(COLUMNS), rows, right={2, 3, 4, 5, 6}), "",
            md_text(SEED_NOTE[0].upper() + SEED_NOTE[1:] + "."), ""]


def print_seed_means(named: list[tuple[str, dict[str, Any]]], console: Any, markdown: bool = False) -> None:
    """For `rlbench compare` and `rlbench check`: each report's means over seeds, titled by its
    name, as Rich tables or (`markdown`) Markdown sections; reports without two ok seeds of a label
    print nothing."""
    for name, report in named:
        title = f"mean over seeds: {name}"
        if markdown:
            lines = seed_markdown(report, title)
            if lines:
                console.print("\n".join(["", *lines]), markup=False, highlight=False, soft_wrap=True)
            continue
        table = seed_table(report, title)
        if table is not None:
            console.print(table)
