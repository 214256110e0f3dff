"""How the change of one metric between two reports is labelled and shown, for `rlbench compare`.

`change_label` gives the label `rlbench check` gives the same change (gate.judge, with the noise
`check` allows and "not comparable" for a machine-bound figure from other hardware); `change_cells`
turns it into table cells; `beyond_noise` decides what `compare --changed` shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from rlbench.report.format import format_value
from rlbench.report.gate import NOT_COMPARABLE, Threshold, gated, judge, noise_level
from rlbench.report.machine import machine_independent
from rlbench.report.metrics import area
from rlbench.report.schema import metric_possible


@dataclass(frozen=True)
class Cell:
    """A table cell: its text (literal, never markup) and, for Rich, a style ('' for none)."""

    text: str
    style: str = ""


def change_cells(base: dict[str, Any] | None, new: dict[str, Any] | None, noise: bool = False,
                 label: str = "") -> list[Cell]:
    """[absolute change, relative change, arrow] of one metric between two reports. `label`: the
    change's label from `judge` (the one `check` gives): 'within noise' or 'within threshold' is
    shown dim, neither better nor worse; `noise` without a label: the same, worded 'noise'."""
    if base is None or new is None or base.get("value") is None or new.get("value") is None:
        return [Cell("-"), Cell("-"), Cell("")]
    delta = new["value"] - base["value"]
    absolute = format_value(delta, base.get("unit", ""), signed=True)
    relative = f"{delta / abs(base['value']):+.1%}" if base["value"] else "-"
    if delta == 0:
        return [Cell(absolute), Cell(relative), Cell("=")]
    arrow = "↑" if delta > 0 else "↓"
    if label.startswith("within") or label == NOT_COMPARABLE or (noise and not label):
        return [Cell(absolute, "dim"), Cell(relative, "dim"), Cell(f"{arrow} {label or 'noise'}", "dim")]
    higher = base.get("higher_is_better")
    if higher is None:
        return [Cell(absolute), Cell(relative), Cell(arrow)]
    better = (delta > 0) == higher
    return [Cell(absolute), Cell(relative), Cell(f"{arrow} {'better' if better else 'worse'}",
                                                 "green" if better else "red")]


@dataclass(frozen=True)
class Pairing:
    """What a change between the base and one later report is judged with: the base run's problem
    count (for noise), whether the two ran on comparable hardware, and whether the later report's
    schema and the base's could both hold every key."""

    problems: int | None = None
    comparable: bool = True
    new_report: dict[str, Any] | None = None
    base_report: dict[str, Any] | None = None

    def possible(self, name: str) -> bool:
        return all(r is None or metric_possible(r, name) for r in (self.new_report, self.base_report))


def beyond_noise(name: str, base: dict[str, Any] | None, new: dict[str, Any] | None,
                 thresholds: dict[str, Threshold], pairing: Pairing | None = None) -> bool:
    """Whether a metric changed beyond noise: present on one side only (unless the other side's
    schema predates it: then it is new), or a change larger than the noise (gate.noise_level) and
    larger than the area's threshold (memory, throughput and fraction-valued accuracy metrics;
    relative thresholds as ratios both ways, as `check` reads them). Metrics of other areas
    (learning, losses, KL) have no threshold: seeded runs repeat them exactly, so any change counts.
    A machine-bound metric from other hardware is not comparable, so not a change."""
    pairing = pairing or Pairing()
    base_value = None if base is None else base.get("value")
    new_value = None if new is None else new.get("value")
    if base_value is None or new_value is None:
        return (base_value is None) != (new_value is None) and pairing.possible(name)
    if math.isnan(base_value) or math.isnan(new_value):
        return math.isnan(base_value) != math.isnan(new_value)
    return change_label(name, base, new, thresholds, pairing) in ("worse", "better", "changed")


def change_label(name: str, base: dict[str, Any] | None, new: dict[str, Any] | None,
                 thresholds: dict[str, Threshold], pairing: Pairing | None = None) -> str:
    """`judge`'s label for the change of metric `name` (what `check` says of a gated metric), with
    the area's threshold (none for learning metrics and accuracy figures that are not fractions)
    and the noise `check` would allow; 'not comparable' for a gated machine-bound metric from other
    hardware; '' when a value is missing or not finite on either side."""
    pairing = pairing or Pairing()
    values = [None if m is None else m.get("value") for m in (base, new)]
    if any(v is None or not math.isfinite(v) for v in values):
        return ""
    assert base is not None and new is not None
    if not pairing.comparable and gated(name) and not machine_independent(name):
        return NOT_COMPARABLE
    gate = area(name)
    if gate == "accuracy" and base.get("unit") != "fraction":
        gate = "learning"
    return judge(base, new, thresholds.get(gate), noise_level(name, base, new, pairing.problems))


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
