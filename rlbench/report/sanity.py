"""Figures no run can produce, and units that do not match: unusable input for `check` and `compare`.

    require_usable(report, "results/new/report.json")    UserError naming the first impossible figure
    require_same_units(new, base, names)                 UserError for a metric in other units

Decided: an impossible figure is unusable input (exit 2, one line naming the report, the run, the
metric and the value), not a regression and not an improvement. A report that says a peak was -3 MiB,
a step took -50 s or a peak was 0 bytes is corrupt or was edited: no verdict on it would be true, and
a zero peak read as "infinitely better" would pass the gate. NaN and infinite values stay
regressions (rlbench/report/gate.py): a run can compute one (a loss that diverged), and then it
failed. Impossible:

- bytes: below 0; a measured peak (memory/*peak_bytes, total or anonymous) of 0: a running
  process holds memory (static bytes may be 0: a frozen role has no gradients; a rise is a
  difference and may be anything);
- seconds: below 0, and a step time of 0; rates (1/s): below 0; counts of work (budget): below 0;
- fractions: outside [0, 1] (a change, `*_delta`, outside [-1, 1]), except that MFU is only
  bounded below: its model FLOPs count each completion's prompt (PaLM's per-sequence convention,
  rlbench/measure/flops.py) while rlbench computes a group's shared prompt once, so where the
  kernels run near the peak (bf16 on an AVX2 CPU: measured 1.06) it can pass 1;
- a standard error that is negative, not finite, or absurd: above 1 for a fraction (a binomial
  error is at most 0.5, a clustered one over G >= 2 clusters at most 0.5 sqrt(G / (G - 1)) <= 0.71;
  a change's at most 2);
- a gated metric whose unit is not the one rlbench gives its name (rlbench.report.metrics), and a
  metric whose unit differs between the two reports: a report in MiB set against one in bytes
  would read as a 1,048,576-fold improvement.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from rlbench.errors import UserError
from rlbench.report.metrics import direction

PEAK_SUFFIXES = ("peak_bytes",)
STDERR_LIMIT = {"fraction": 1.0, "fraction change": 2.0}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def finite_number(value: Any) -> bool:
    """A number a float holds: no bool, NaN, infinity, or integer beyond a float's range (crafted reports)."""
    if not _number(value):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def impossible(name: str, metric: dict[str, Any]) -> str | None:
    """Why a metric's value or standard error cannot be, or None. NaN and infinities are left to the gate."""
    value, unit = metric.get("value"), metric.get("unit")
    if _number(value) and math.isfinite(value):
        if unit == "bytes" and "rise" not in name:
            if value < 0:
                return "a memory figure below 0"
            if value == 0 and name.endswith(PEAK_SUFFIXES):
                return "a measured peak of 0 bytes (a running process holds memory)"
        if unit == "s" and (value < 0 or (value == 0 and name == "time/step_s")):
            return "a time below 0" if value < 0 else "a step that took no time"
        if unit == "1/s" and value < 0:
            return "a rate below 0"
        if unit == "fraction":
            low = -1.0 if name.endswith("_delta") else 0.0
            high = math.inf if name == "throughput/mfu" else 1.0
            if not low <= value <= high:
                return f"a fraction outside [{low:g}, {high:g}]"
    stderr = metric.get("stderr")
    if stderr is not None:
        limit = STDERR_LIMIT.get("fraction change" if name.endswith("_delta") else str(unit), math.inf)
        if not _number(stderr) or not math.isfinite(stderr) or stderr < 0:
            return f"a standard error of {stderr!r} (negative or not a finite number)"
        if stderr > limit:
            return f"a standard error of {stderr:g}, above the largest a fraction can have ({limit:g})"
    return None


def _metrics(report: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for run in report.get("runs") or []:
        for name, metric in (run.get("metrics") or {}).items():
            yield str(run.get("id")), name, metric


def require_usable(report: dict[str, Any], name: str, gated: Any = None) -> None:
    """Raise UserError (one line: the first problem, and how many more) for impossible figures in
    `report`: metrics, work counts, and the units of the metrics `gated(name)` names an area for."""
    problems = []
    for rid, metric_name, metric in _metrics(report):
        why = impossible(metric_name, metric)
        if why is None and gated is not None and gated(metric_name) is not None:
            expected = direction(metric_name)[1]
            if metric.get("unit") != expected:
                why = f"unit {metric.get('unit')!r}, where rlbench writes {expected!r}"
        if why:
            problems.append(f"{rid}: {metric_name} = {metric.get('value')!r} {metric.get('unit', '')}: {why}")
    for run in report.get("runs") or []:
        for key, value in (run.get("budget") or {}).items():
            if _number(value) and value < 0:
                problems.append(f"{run.get('id')}: budget.{key} = {value!r}: a count below 0")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UserError(f"{name}: unusable: {problems[0]}{more}; such a figure cannot be measured, so the report "
                        "is corrupt or was edited")


def require_same_units(new: dict[str, Any], base: dict[str, Any], names: tuple[str, str]) -> None:
    """Raise UserError when a metric of a run both reports have is in different units."""
    base_runs = {(r.get("label"), r.get("seed")): r for r in base.get("runs") or []}
    for run in new.get("runs") or []:
        base_metrics = (base_runs.get((run.get("label"), run.get("seed"))) or {}).get("metrics") or {}
        for metric_name, metric in (run.get("metrics") or {}).items():
            other = base_metrics.get(metric_name)
            if other is not None and other.get("unit") != metric.get("unit"):
                raise UserError(f"{run.get('id')}: {metric_name} is in {metric.get('unit')!r} in {names[0]} and in "
                                f"{other.get('unit')!r} in {names[1]}: figures in different units cannot be compared")
