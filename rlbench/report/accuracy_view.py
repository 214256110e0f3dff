"""The accuracy suite's own views of a report: where SFT stopped, and each arm's change of held-out
accuracy by scoring and by chain, over seeds, RL arms and control arms apart.

- `sft_lines`: the SFT stage on a fixed demonstration set (`stages.sft`): the kept step, where and
  why it stopped, and its dev-accuracy curve.
- `arm_rows`: per label (an arm), over its ok seeds, the mean change of held-out accuracy in the
  headline scoring, strict and flexible, and on chains seen / unseen in the demonstrations, each
  with Student's t 95% interval over seeds (one seed: that run's paired interval over problems);
  RL arms also the zero-variance-group fraction, policy entropy, the hacking flags and the reward
  model's within-prompt pairwise accuracy (the trained one's held-out figure, or a simulated
  one's Phi(1 / (sd sqrt 2)), `rewards.simulated_pairwise_accuracy`).
- `arm_markdown` / `arm_tables`: the same rows for summary.md and the terminal, RL arms, the fair
  control (`sft_more`) and "what more labelled data would buy" (`sft_new_data`) in separate tables.

Reads report JSON only (no torch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import fmean
from typing import Any

from rich.table import Table
from rich.text import Text

from rlbench.report.format import markdown_table, md_text
from rlbench.report.stats import seed_mean

SECTIONS = (("RL arms", None), ("control: more epochs on the same demonstrations", "sft_more"),
            ("labelled apart: fresh demonstrations (what more labelled data would buy)", "sft_new_data"))
"""The tables, in order: title and the algorithm it holds (None: every RL recipe)."""
CHANGES = (("headline", "eval/accuracy_delta"), ("strict", "eval/accuracy_delta_strict"),
           ("flexible", "eval/accuracy_delta_flexible"), ("seen chains", "eval/accuracy_delta_seen"),
           ("unseen chains", "eval/accuracy_delta_unseen"))
"""Columns of changes: heading and the run metric each reads."""


@dataclass(frozen=True)
class ArmRow:
    """One label's changes (fractions, each (mean, 95% interval or None)) and diagnostics."""

    label: str
    algorithm: str
    seeds: int
    before: float | None
    changes: dict[str, tuple[float, tuple[float, float] | None] | None]
    zero_variance: float | None
    entropy: float | None
    flagged: int
    rm_accuracy: float | None
    rm_kind: str


def sft_lines(report: dict[str, Any]) -> list[str]:
    """The SFT stage's stop, and its curve as one line per dev evaluation; [] without a fixed set."""
    sft = (report.get("stages") or {}).get("sft") or {}
    if "sft/best_step" not in sft:
        return []
    head = (f"SFT on {sft['sft/demonstrations']} demonstrations: kept step {sft['sft/best_step']} "
            f"(dev accuracy {sft['sft/best_dev_accuracy']:.1%}), stopped at step {sft['sft/stopped_step']} "
            f"of a {sft['sft/horizon_steps']}-step horizon by {sft['sft/stopped_by']}")
    curve = [f"step {p['step']} (epoch {p['epoch']:.1f}): train loss {p['train_loss']:.3f}, "
             f"dev {p['dev_accuracy']:.1%}" for p in sft.get("sft/curve") or []]
    return [head, *curve]


def sft_curve_points(report: dict[str, Any]) -> list[dict[str, float]]:
    """The SFT stage's dev-accuracy curve ([] without a fixed demonstration set)."""
    return ((report.get("stages") or {}).get("sft") or {}).get("sft/curve") or []


def _value(run: dict[str, Any], name: str) -> float | None:
    value = ((run.get("metrics") or {}).get(name) or {}).get("value")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _change(runs: list[dict[str, Any]], name: str, paired_key: str | None
            ) -> tuple[float, tuple[float, float] | None] | None:
    values = [_value(r, name) for r in runs]
    if not values or any(v is None for v in values):
        return None
    if len(values) > 1:
        mean = seed_mean(values)
        return mean["mean"], (tuple(mean["ci95"]) if mean["ci95"] else None)
    accuracy = runs[0].get("accuracy") or {}
    part = accuracy.get("paired") if paired_key is None else (
        (accuracy.get("scorings") or {}) | (accuracy.get("chains") or {})).get(paired_key)
    ci = (part or {}).get("ci95")
    return values[0], (tuple(ci) if ci else None)


def _rm_accuracy(report: dict[str, Any], config: dict[str, Any]) -> tuple[float | None, str]:
    noise = config.get("reward_noise") or 0.0
    if noise > 0:
        return 0.5 * (1 + math.erf(1 / (noise * math.sqrt(2)) / math.sqrt(2))), f"simulated, sd {noise:g}"
    if config.get("reward") in ("model", "both"):
        rm = (report.get("stages") or {}).get("reward_model") or {}
        return rm.get("reward_model/heldout_accuracy"), f"trained {rm.get('reward_model/kind', 'pairwise')}"
    return 1.0, "answer checker"


def arm_rows(report: dict[str, Any]) -> list[ArmRow]:
    """One row per label with ok runs, in the suite's order."""
    by_label: dict[str, list[dict[str, Any]]] = {}
    for run in report.get("runs") or []:
        if run.get("status") == "ok":
            by_label.setdefault(run.get("label") or run["id"].split("/")[0], []).append(run)
    configs = {(a.get("label") or a.get("name")): a for a in (report.get("suite") or {}).get("algorithms") or []}
    rows = []
    for label, runs in by_label.items():
        algorithm = str(runs[0].get("algorithm", ""))
        supervised = algorithm in ("sft_more", "sft_new_data")
        rm_accuracy, rm_kind = (None, "-") if supervised else _rm_accuracy(report, configs.get(label) or {})
        before = [_value(r, "eval/accuracy_before") for r in runs]
        zero = [((r.get("learning") or {}).get("learning/zero_variance_groups")) for r in runs]
        entropy = [((r.get("learning") or {}).get("learning/entropy")) for r in runs]
        rows.append(ArmRow(
            label, algorithm, len(runs), fmean(before) if None not in before else None,
            {name: _change(runs, metric, None if name == "headline" else name.split()[0]) for name, metric in CHANGES},
            None if supervised or None in zero else fmean(zero), None if None in entropy else fmean(entropy),
            sum(bool((r.get("reward_hacking") or {}).get("flag")) for r in runs), rm_accuracy, rm_kind))
    return rows


def change_text(change: tuple[float, tuple[float, float] | None] | None) -> str:
    """'+1.2 [-0.8, +3.1]' in points; '-' when not measured."""
    if change is None:
        return "-"
    mean, ci = change
    return f"{mean * 100:+.1f}" + (f" [{ci[0] * 100:+.1f}, {ci[1] * 100:+.1f}]" if ci else "")


def _cells(row: ArmRow) -> list[str]:
    return [row.label, str(row.seeds), "-" if row.before is None else f"{row.before * 100:.1f}",
            *(change_text(row.changes[name]) for name, _ in CHANGES),
            "-" if row.zero_variance is None else f"{row.zero_variance:.2f}",
            "-" if row.entropy is None else f"{row.entropy:.3f}",
            "-" if row.rm_accuracy is None else f"{row.rm_accuracy:.3f} ({row.rm_kind})",
            f"{row.flagged}/{row.seeds}"]


HEADER = ["label", "seeds", "before %", *(f"Δ {name} (pts) [95% CI]" for name, _ in CHANGES), "zero-var groups",
          "entropy", "RM pairwise acc", "hacking flags"]
SHORT_HEADER = ["label", "seeds", "before %", "Δ head", "Δ strict", "Δ flex", "Δ seen", "Δ unseen", "0-var",
                "entropy", "RM acc", "flags"]
"""HEADER for the terminal."""
NOTE = ("Δ: held-out accuracy after minus before, in points. Several seeds: mean over seeds with Student's t "
        "95% interval on seeds - 1 degrees of freedom (each seed's change is paired: the same problems before "
        "and after); one seed: the paired interval over problems. Headline: the suite's eval.headline scoring; "
        "strict reads only the <answer> tag, flexible the last number; seen / unseen chains: held-out problems "
        "whose arithmetic chain is / is not among the SFT demonstrations' (headline scoring). Zero-var groups: "
        "fraction of GRPO groups whose rewards were all equal (no gradient), last quarter of the run; entropy: "
        "policy entropy per token (nats). RM pairwise acc: within-prompt pairwise accuracy of the reward the arm "
        "optimised (1.0: the answer checker).")


def _sections(report: dict[str, Any]) -> list[tuple[str, list[ArmRow]]]:
    rows = arm_rows(report)
    out = []
    for title, algorithm in SECTIONS:
        picked = [r for r in rows if (r.algorithm == algorithm if algorithm else
                                      r.algorithm not in ("sft_more", "sft_new_data"))]
        if picked:
            out.append((title, picked))
    return out


def arm_markdown(report: dict[str, Any]) -> list[str]:
    """summary.md's accuracy section (SFT stop, then one table per kind of arm); [] for a report
    with neither a fixed demonstration set nor strict/flexible scorings."""
    sft = sft_lines(report)
    sections = _sections(report)
    if not sft and not any(r.changes["strict"] or r.changes["flexible"] for _, rows in sections for r in rows):
        return []
    lines = ["## accuracy by arm, scoring and chain", ""]
    if sft:
        lines += [md_text(sft[0]) + ".", "", *[f"- {md_text(line)}" for line in sft[1:]], ""]
    for title, rows in sections:
        lines += [f"### {md_text(title)}", "", markdown_table(HEADER, [_cells(r) for r in rows],
                                                               right=set(range(1, len(HEADER)))), ""]
    return [*lines, md_text(NOTE), ""]


def arm_tables(report: dict[str, Any]) -> list[Table]:
    """The same tables for the terminal (none for a report without these figures)."""
    if not arm_markdown(report):
        return []
    tables = []
    for title, rows in _sections(report):
        table = Table(title=Text(f"{report['suite']['name']}: {title}"), title_justify="left")
        for i, col in enumerate(SHORT_HEADER):
            table.add_column(col, justify="right" if i else "left")
        for row in rows:
            table.add_row(*(Text(c) for c in _cells(row)))
        tables.append(table)
    if tables:
        tables[-1].caption = NOTE
    return tables
