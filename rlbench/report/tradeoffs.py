"""What each algorithm buys for what it costs: the rows of tradeoffs.png and of summary.md's table.

For each label (an algorithm with its settings) of a report, over its runs that ended ok:

- Δ held-out accuracy (after RL - before, a fraction) with a 95% interval. One seed: the paired
  interval of that run (per-problem differences, clustered standard error, t on clusters - 1
  degrees of freedom: rlbench/report/stats.py `paired_delta`). Several seeds: the mean over seeds
  with Student's t interval on seeds - 1 degrees of freedom (`seed_mean`), which includes how much
  training itself varies.
- what it cost, as means over the same seeds: model FLOPs (every role and phase, budget.flops),
  wall seconds of training (budget.wall_seconds: the RL loop, without loading and evaluation), and
  the training peak memory (rlbench/report/peaks.py: `training_peak_bytes`).

Control arms (CONTROL_ARMS: `sft_more`, the same budget spent on more SFT; `sft_new_data`, SFT on
new demonstrations) are marked: they answer "what would the same compute have bought without RL".
Runs without a measured accuracy (shape models: random weights) give rows without Δ; a report with
no Δ at all gets no figure, and summary.md says why in one line (`no_accuracy_reason`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import fmean
from typing import Any

from rlbench.report.format import markdown_table, md_text, primary_probe
from rlbench.report.peaks import training_peak_bytes
from rlbench.report.stats import seed_mean

CONTROL_ARMS = {"sft_more": "control: more SFT on the same demonstrations",
                "sft_new_data": "control: SFT on new demonstrations"}
"""Algorithms that are control arms, not RL recipes, and how the figure and table name them."""
@dataclass(frozen=True)
class Tradeoff:
    """One label's point: Δ accuracy with its interval, and its costs (means over its ok seeds)."""

    label: str
    algorithm: str
    control: str | None  # CONTROL_ARMS' description, None for an RL recipe
    seeds: tuple[int, ...]
    delta: float | None  # Δ held-out accuracy, a fraction (mean over seeds)
    ci95: tuple[float, float] | None
    interval: str  # "paired" (one seed), "seeds" (t over seeds) or "" (none)
    flops: float | None
    wall_seconds: float | None
    peak_bytes: float | None


def _mean(values: list[Any]) -> float | None:
    numbers = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return fmean(numbers) if len(numbers) == len(values) and numbers else None


def _delta(run: dict[str, Any]) -> float | None:
    delta = (run.get("accuracy") or {}).get("delta")
    if delta is None:
        delta = ((run.get("metrics") or {}).get("eval/accuracy_delta") or {}).get("value")
    return delta if isinstance(delta, (int, float)) and math.isfinite(delta) else None


def tradeoffs(report: dict[str, Any]) -> list[Tradeoff]:
    """One Tradeoff per label with at least one ok run, in the suite's order."""
    probe = primary_probe(report)
    by_label: dict[str, list[dict[str, Any]]] = {}
    for run in report.get("runs") or []:
        if run.get("status") == "ok":
            by_label.setdefault(run.get("label") or run["id"].split("/")[0], []).append(run)
    out = []
    for label, runs in by_label.items():
        deltas = [_delta(r) for r in runs]
        delta, ci, interval = None, None, ""
        if all(d is not None for d in deltas):
            if len(runs) == 1:
                delta = deltas[0]
                paired = (runs[0].get("accuracy") or {}).get("paired") or {}
                if paired.get("ci95") and all(math.isfinite(x) for x in paired["ci95"]):
                    ci, interval = (paired["ci95"][0], paired["ci95"][1]), "paired"
            else:
                mean = seed_mean(deltas)
                delta, ci, interval = mean["mean"], tuple(mean["ci95"]), "seeds"
        budgets = [r.get("budget") or {} for r in runs]
        out.append(Tradeoff(
            label, str(runs[0].get("algorithm", "")), CONTROL_ARMS.get(str(runs[0].get("algorithm"))),
            tuple(r.get("seed") for r in runs), delta, ci, interval,
            _mean([b.get("flops") for b in budgets]),
            _mean([b.get("wall_seconds", (r.get("throughput") or {}).get("time/rl_s")) for b, r in zip(budgets, runs)]),
            _mean([training_peak_bytes(r, probe) for r in runs])))
    return out


def no_accuracy_reason(rows: list[Tradeoff]) -> str | None:
    """Why there is no tradeoffs figure, in one line, or None when there is one."""
    if not rows:
        return "no tradeoffs figure: no run ended ok"
    if all(row.delta is None for row in rows):
        return ("no tradeoffs figure: no run measured held-out accuracy before and after training "
                "(a shape model has random weights, so its accuracy means nothing)")
    return None


def _points(x: float | None, signed: bool = True) -> str:
    return "-" if x is None else (f"{x * 100:+.1f}" if signed else f"{x * 100:.1f}")


def delta_text(row: Tradeoff) -> str:
    """'+3.1 [+1.2, +5.0]': Δ accuracy in points with its 95% interval."""
    if row.delta is None:
        return "-"
    return _points(row.delta) + (f" [{_points(row.ci95[0])}, {_points(row.ci95[1])}]" if row.ci95 else "")


def tradeoff_markdown(report: dict[str, Any]) -> list[str]:
    """summary.md's section: a row per label (Δ accuracy, FLOPs, wall time, training peak), or the
    one line saying why there is none."""
    rows = tradeoffs(report)
    title = ["## what each algorithm buys for what it costs", ""]
    why = no_accuracy_reason(rows)
    if why is not None:
        return [*title, md_text(why[0].upper() + why[1:] + "."), ""]
    cells = [[row.label, row.algorithm, row.control or "RL", str(len(row.seeds)), delta_text(row),
              "-" if row.flops is None else f"{row.flops:.3g}",
              "-" if row.wall_seconds is None else f"{row.wall_seconds:,.1f}",
              "-" if row.peak_bytes is None else f"{row.peak_bytes / 2**20:,.1f}"] for row in rows]
    kinds = {row.interval for row in rows} - {""}
    note = ("Δ acc: held-out accuracy after training minus before, in points, with its 95% interval: "
            + "; ".join(k for k in ("paired over problems for one seed (clustered, t on clusters - 1 degrees of "
                                    "freedom)" if "paired" in kinds else "",
                                    "over seeds for several (mean, Student's t on seeds - 1 degrees of "
                                    "freedom)" if "seeds" in kinds else "") if k)
            + ". Costs are means over the same seeds: FLOPs of every role and phase; training seconds (the "
              f"training loop, without loading and evaluation); training peak: the highest peak of a "
              f"non-evaluation phase ({primary_probe(report)} probe). Control arms spend the same budget "
              "without RL.")
    return [*title, markdown_table(["label", "algorithm", "arm", "seeds", "Δ acc (pts) [95% CI]", "FLOPs",
                                    "training s", "training peak MiB"], cells, right={3, 4, 5, 6, 7}),
            "", md_text(note), "", "![what each algorithm buys for what it costs](tradeoffs.png)", ""]
