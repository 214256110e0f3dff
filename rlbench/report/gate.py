"""The regression gate's decisions, pure functions on report dicts: `check_reports` and its parts.

The rules are described in rlbench/report/check.py (the command); machine-independent metrics in
rlbench/report/machine.py; impossible figures in rlbench/report/sanity.py. Noise (`noise_level`)
is never read from the report under test: the baseline's standard error of an estimate, and the
new figure's recomputed from its value and the number of problems (binomial), or taken to be the
baseline's where it cannot be recomputed (a change of accuracy).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rlbench.errors import UserError
from rlbench.report.format import format_change, format_value
from rlbench.report.machine import fixed_work, hardware_difference, machine_independent
from rlbench.report.sanity import require_same_units, require_usable
from rlbench.report.schema import metric_possible
from rlbench.report.stats import binomial_stderr

AREAS = ("memory", "throughput", "accuracy")
MEMORY_GATES = ("anon", "total")
SHOWN_NOT_GATED = ("memory/process_anon_rise_bytes",)
"""Shown beside the gated figures, never gated: the anonymous rise is the sampled peak less a steady
baseline, so the peak's sampling error weighs 1.7 times as much in it (measured: 1.5% apart in two
runs of the same code whose peaks were 0.9% apart), too close to a 2% threshold."""
NOT_COMPARABLE = "not comparable"


@dataclass(frozen=True)
class Threshold:
    """Largest allowed change in the worse direction: a ratio over 1 (relative), or an amount (absolute)."""

    limit: float
    relative: bool

    def __str__(self) -> str:
        return f"{self.limit * 100:g}%" if self.relative else f"{self.limit:g}"


@dataclass(frozen=True)
class Finding:
    """One gated change beyond its threshold (or a change of run status)."""

    run: str
    metric: str
    base: float | None
    new: float | None
    threshold: str
    unit: str = ""
    note: str = ""  # the error of a run no longer ok; the accuracy noise level
    statuses: tuple[str, str] | None = None  # (baseline, new) run status, for a change of status
    label: str = ""  # judge()'s label: worse, better, within noise, within threshold, unchanged

    @property
    def delta(self) -> float | None:
        return None if self.base is None or self.new is None else self.new - self.base

    @property
    def relative_delta(self) -> float | None:
        if self.delta is None or not self.base:
            return None
        return self.delta / abs(self.base)

    def describe(self) -> str:
        if self.statuses is None and self.base is None and self.new is None:
            return f"{self.run}: {self.metric}: {self.note}"
        if self.statuses is not None:
            base_status, new_status = self.statuses
            return f"{self.run}: status {new_status}, was {base_status} in the baseline" + (
                f" ({self.note})" if self.note else "")
        change = format_change(self.delta, self.relative_delta, self.unit)
        extra = f"; {self.note}" if self.note else ""
        return (f"{self.run}: {self.metric} {format_value(self.base, self.unit)} -> "
                f"{format_value(self.new, self.unit)} ({change}; threshold {self.threshold}{extra})")


@dataclass
class CheckResult:
    """What `check_reports` found. `ok` when there is no regression."""

    regressions: list[Finding] = field(default_factory=list)
    improvements: list[Finding] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)  # run ids compared
    metrics_compared: int = 0
    notes: list[str] = field(default_factory=list)  # unmatched runs, metrics missing on one side
    unflagged: list[Finding] = field(default_factory=list)  # accuracy changes within noise or threshold
    not_gated: list[Finding] = field(default_factory=list)  # memory peaks of the kind not gated (every one)
    memory_gates: dict[str, str] = field(default_factory=dict)  # run id -> the memory kind gated
    hardware: str | None = None  # why machine-bound metrics were not gated (hardware_difference), or None
    not_comparable: list[Finding] = field(default_factory=list)  # machine-bound metrics, other hardware
    passed: list[Finding] = field(default_factory=list)  # gated metrics compared: unchanged or within threshold
    not_compared: list[Finding] = field(default_factory=list)  # gated metrics new since the new report's schema

    @property
    def ok(self) -> bool:
        return not self.regressions


def memory_kind(name: str) -> str | None:
    """'anon' for an anonymous-memory peak or rise, 'total' for a total (RSS or device) peak, None
    for the other memory figures (static bytes, computed from tensors: always gated)."""
    if not name.startswith("memory/"):
        return None
    last = name.rsplit("/", 1)[-1]
    if last in ("anon_peak_bytes", "process_anon_peak_bytes", "process_anon_rise_bytes", "training_anon_peak_bytes",
                "eval_anon_peak_bytes"):
        return "anon"
    if last in ("peak_bytes", "process_peak_bytes", "training_peak_bytes", "eval_peak_bytes"):
        return "total"
    return None


def has_anon(metrics: Mapping[str, Any]) -> bool:
    return any(memory_kind(name) == "anon" for name in metrics)


def noise_level(name: str, base: Mapping[str, Any], new: Mapping[str, Any], problems: int | None) -> float:
    """Standard error of the difference of two estimates, sqrt(se_base^2 + se_new^2), for a fraction
    estimated over problems (accuracy and its relatives); 0 for anything else (memory, time: measured,
    not estimated, whatever stderr a report attaches) and for a baseline without a standard error.
    se_base is the baseline's; se_new is never the new report's: recomputed for a proportion over
    `problems` problems (sqrt(p(1-p)/n) of the new value), else (a change) taken to equal se_base."""
    se_base = base.get("stderr")
    if not se_base or base.get("unit") != "fraction":
        return 0.0
    proportion = not name.endswith("_delta") and problems
    se_new = binomial_stderr(new["value"], int(problems)) if proportion else se_base
    return math.sqrt(se_base**2 + se_new**2)


def judge(base: Mapping[str, Any], new: Mapping[str, Any], threshold: Threshold | None, noise: float = 0.0) -> str:
    """The label of one metric's change, shared by `check` and `compare`: 'unchanged'; 'within
    noise' (no larger than `noise`, from noise_level); 'within threshold'; 'worse' or 'better'
    (the metric's direction); 'changed' (no direction, or no threshold for a metric without one).
    Both values must be finite numbers."""
    base_value, new_value = base["value"], new["value"]
    if new_value == base_value:
        return "unchanged"
    if abs(new_value - base_value) <= noise:
        return "within noise"
    higher = base.get("higher_is_better")
    if threshold is not None:
        verdict = exceeds(threshold, base_value, new_value, bool(higher) if higher is not None else True)
        if verdict == 0:
            return "within threshold"
    if higher is None:
        return "changed"
    return "better" if (new_value > base_value) == higher else "worse"


def gated(name: str) -> str | None:
    """The threshold area that gates metric `name`, or None when it is not gated.

    MFU is not gated: it is `throughput/model_flops_per_s` (gated) over the machine's measured peak,
    a measurement of the machine that is re-taken when a run beats it, so gating MFU would gate
    the peak measurement's noise (a peak measured on a busy machine moved it 7x) on top of the
    same work's throughput."""
    if name == "throughput/mfu":
        return None
    if name.startswith("memory/"):
        return "memory"
    if name.startswith("throughput/") or name == "time/step_s":
        return "throughput"
    if name == "eval/accuracy":
        return "accuracy"
    return None


def thresholds_for(baseline: dict[str, Any], overrides: list[str]) -> dict[str, Threshold]:
    """The `check:` block of the baseline's suite (CheckConfig defaults where absent), then
    `AREA:LIMIT` overrides. Never the new report's own block: that would let a change set its own gate."""
    from rlbench.config import CheckConfig, parse_threshold
    from rlbench.registry import did_you_mean

    block = {**vars(CheckConfig()), **((baseline.get("suite") or {}).get("check") or {})}
    try:
        out = {name: Threshold(*parse_threshold(block[name])) for name in AREAS}
    except UserError as exc:
        raise UserError(f"the baseline's check: block: {exc}") from None
    for text in overrides:
        name, sep, limit = text.partition(":")
        name = name.strip()
        if not sep or name not in AREAS:
            raise UserError(f"--threshold {text!r}: expected AREA:LIMIT with AREA one of {', '.join(AREAS)}"
                            + (did_you_mean(name, AREAS) if sep else "") + ", e.g. memory:5% or accuracy:0.02")
        try:
            out[name] = Threshold(*parse_threshold(limit))
        except UserError as exc:
            raise UserError(f"--threshold {text!r}: {exc}") from None
    return out


def match_runs(new: dict[str, Any], base: dict[str, Any]) -> tuple[list[tuple[dict, dict]], list[str], list[str]]:
    """Pairs (new run, base run) with the same label and seed, then ids only in new, only in base."""
    base_runs = {(r["label"], r["seed"]): r for r in base["runs"]}
    new_keys = {(r["label"], r["seed"]) for r in new["runs"]}
    pairs = [(r, base_runs[(r["label"], r["seed"])]) for r in new["runs"] if (r["label"], r["seed"]) in base_runs]
    only_new = [r["id"] for r in new["runs"] if (r["label"], r["seed"]) not in base_runs]
    only_base = [r["id"] for r in base["runs"] if (r["label"], r["seed"]) not in new_keys]
    return pairs, only_new, only_base


def worse_factor(base: float, new: float, higher_is_better: bool) -> float:
    """How many times worse `new` is than `base`: 1 unchanged, 2 twice as bad (a time or a memory
    figure doubled, a rate halved), 0.5 twice as good. Infinite when the better value is 0."""
    bad, good = (base, new) if higher_is_better else (new, base)
    if good == 0:
        return 1.0 if bad == 0 else math.inf
    return bad / good


def exceeds(threshold: Threshold, base: float, new: float, higher_is_better: bool) -> int:
    """+1 when `new` is worse than `base` beyond the threshold, -1 when better beyond it, else 0.

    Relative: a ratio, the same for a time and the rate it implies ('60%': a step 1.6x as long, or
    completions per second 1.6x fewer). Absolute: a difference in the metric's unit.
    """
    if threshold.relative:
        factor = worse_factor(base, new, higher_is_better)
        if factor - 1 > threshold.limit:
            return 1
        # how many times better, as directly: 1 / factor can round past a limit the change equals
        return -1 if worse_factor(base, new, not higher_is_better) - 1 > threshold.limit else 0
    worse = (base - new) if higher_is_better else (new - base)
    return 1 if worse > threshold.limit else (-1 if -worse > threshold.limit else 0)


def problem_count(run: dict[str, Any], suite: dict[str, Any]) -> int | None:
    """Problems the run's accuracy was measured on: its eval/size, else the suite's eval.size."""
    size = ((run.get("metrics") or {}).get("eval/size") or {}).get("value") or (suite.get("eval") or {}).get("size")
    return int(size) if isinstance(size, (int, float)) and math.isfinite(size) and size >= 1 else None


def check_reports(new: dict[str, Any], base: dict[str, Any], thresholds: Mapping[str, Threshold],
                  memory_gate: str = "anon", names: tuple[str, str] = ("the new report", "the baseline")) -> CheckResult:
    """Compare every gated metric of every run the two reports share; pure (no I/O). `memory_gate`:
    which memory peaks are gated ('anon' falls back to 'total' for a run without anonymous figures
    on either side, with a note). Machine-bound metrics are gated only when hardware_difference
    finds none; otherwise they are listed as not comparable. Impossible figures and units that
    differ raise UserError (sanity.py)."""
    assert memory_gate in MEMORY_GATES, memory_gate
    require_usable(new, names[0], gated)
    require_usable(base, names[1], gated)
    require_same_units(new, base, names)
    pairs, only_new, only_base = match_runs(new, base)
    if not pairs:
        raise UserError("no runs in common: the new report has "
                        f"{', '.join(r['id'] for r in new['runs']) or 'no runs'}, the baseline "
                        f"{', '.join(r['id'] for r in base['runs']) or 'no runs'} (runs are matched by label and seed)")
    result = CheckResult(hardware=hardware_difference(new, base))
    result.notes += [f"{rid}: only in the new report, not checked" for rid in only_new]
    base_by_id = {r["id"]: r for r in base["runs"]}
    for rid in only_base:
        base_status = str(base_by_id[rid].get("status"))
        if base_status == "ok":
            result.regressions.append(Finding(rid, "status", None, None, "ok", statuses=(base_status, "missing"),
                                              note="the run is missing from the new report"))
        else:
            result.notes.append(f"{rid}: only in the baseline (where it was {base_status}), not checked")
    for new_run, base_run in pairs:
        rid = new_run["id"]
        result.runs.append(rid)
        new_ok, base_ok = new_run.get("status") == "ok", base_run.get("status") == "ok"
        statuses = (str(base_run.get("status")), str(new_run.get("status")))
        if base_ok and not new_ok:
            result.regressions.append(Finding(rid, "status", None, None, "ok", note=new_run.get("error") or "",
                                              statuses=statuses))
            continue
        if not base_ok:
            if new_ok:
                result.improvements.append(Finding(rid, "status", None, None, "ok", statuses=statuses))
            result.notes.append(f"{rid}: not ok in the baseline ({base_run.get('status')}), metrics not checked")
            continue
        if not new_run.get("metrics"):
            result.regressions.append(Finding(rid, "metrics", None, None, "-",
                                              note="the run is ok but has no metrics in the new report"))
            continue
        base_metrics = base_run.get("metrics") or {}
        kind = memory_gate
        if kind == "anon" and not (has_anon(base_metrics) and has_anon(new_run["metrics"])):
            kind = "total"
            missing = " and ".join(side for side, m in (("the baseline", base_metrics),
                                                        ("the new report", new_run["metrics"])) if not has_anon(m))
            if "cpu" in {(r.get("memory") or {}).get("primary") for r in (new_run, base_run)}:
                # (a GPU probe has no anonymous figures to gate: its peaks are the device's)
                result.notes.append(f"{rid}: no anonymous-memory figures in {missing}: memory peaks gated on "
                                    "total RSS (file-backed pages included)")
        result.memory_gates[rid] = kind
        context = _Context(rid, thresholds, result, kind, new, problem_count(base_run, base.get("suite") or {}))
        _check_metrics(context, new_run["metrics"], base_metrics)
        _check_work(context, fixed_work(new_run, new.get("suite") or {}), fixed_work(base_run, base.get("suite") or {}))
    return result


@dataclass(frozen=True)
class _Context:
    """What every metric of one run pair is checked with."""

    rid: str
    thresholds: Mapping[str, Threshold]
    result: CheckResult
    memory_gate: str
    new_report: dict[str, Any]
    problems: int | None


def _check_metrics(c: _Context, new: dict[str, Any], base: dict[str, Any]) -> None:
    result, rid = c.result, c.rid
    unknown_keys = [name for name in new if name not in base]
    if unknown_keys:
        result.notes.append(f"{rid}: {len(unknown_keys)} metric(s) only in the new report, not compared "
                            f"({', '.join(unknown_keys[:3])}{', ...' if len(unknown_keys) > 3 else ''})")
    for name, base_metric in base.items():
        gate = gated(name)
        if gate is None or base_metric.get("higher_is_better") is None or base_metric.get("value") is None:
            continue
        new_metric = new.get(name)
        if result.hardware is not None and not machine_independent(name):
            if new_metric is not None and _finite(new_metric.get("value")) and _finite(base_metric["value"]):
                result.not_comparable.append(Finding(rid, name, base_metric["value"], new_metric["value"], "-",
                                                     base_metric.get("unit", ""), label=NOT_COMPARABLE))
            continue
        kind = memory_kind(name)
        if (kind is not None and kind != c.memory_gate) or name in SHOWN_NOT_GATED:
            _not_gated(rid, name, base_metric, new_metric, c.thresholds[gate], result)
            continue
        if new_metric is None or new_metric.get("value") is None:
            if metric_possible(c.new_report, name):
                result.regressions.append(Finding(rid, name, None, None, "-",
                                                  note="in the baseline but missing from the new report"))
            else:
                why = f"new since the new report's schema {c.new_report.get('schema_version')}, not compared"
                result.notes.append(f"{rid}: {name}: {why}")
                result.not_compared.append(Finding(rid, name, base_metric["value"], None, "-",
                                                   base_metric.get("unit", ""), note=why))
            continue
        unusable = [side for side, m in (("new report", new_metric), ("baseline", base_metric))
                    if not _finite(m["value"])]
        if unusable:
            result.regressions.append(Finding(rid, name, None, None, "-", note=f"{base_metric['value']} in the "
                                              f"baseline, {new_metric['value']} in the new report: a value that is "
                                              f"not a finite number ({' and '.join(unusable)}) cannot be compared"))
            continue
        result.metrics_compared += 1
        threshold = c.thresholds[gate]
        noise = noise_level(name, base_metric, new_metric, c.problems)
        label = judge(base_metric, new_metric, threshold, noise)
        note = f"combined standard error {noise:.3g}" if gate == "accuracy" else ""
        finding = Finding(rid, name, base_metric["value"], new_metric["value"], str(threshold),
                          base_metric.get("unit", ""), note, label=label)
        if label == "unchanged" or (gate != "accuracy" and label not in ("worse", "better")):
            result.passed.append(finding)
            continue
        {"worse": result.regressions, "better": result.improvements}.get(label, result.unflagged).append(finding)


def _check_work(c: _Context, new: dict[str, int], base: dict[str, int]) -> None:
    """Counts of work both runs' settings fix (machine.fixed_work) must be equal: any change is a
    regression (the same settings did other work), whatever the machine."""
    for name, base_value in base.items():
        if name not in new:
            continue
        c.result.metrics_compared += 1
        same = new[name] == base_value
        (c.result.passed if same else c.result.regressions).append(Finding(
            c.rid, name, base_value, new[name], "equal", label="unchanged" if same else "worse",
            note="" if same else "a count the settings fix, the same on every machine"))


def _not_gated(rid: str, name: str, base: dict[str, Any], new: dict[str, Any] | None, threshold: Threshold,
               result: CheckResult) -> None:
    """A memory peak of the kind not gated: listed with its label, never a regression (the table
    shows the process's always, a role's when it moved beyond the threshold: `shown_not_gated`)."""
    if new is None or not (_finite(new.get("value")) and _finite(base.get("value"))):
        return
    result.not_gated.append(Finding(rid, name, base["value"], new["value"], str(threshold),
                                    base.get("unit", ""), label=judge(base, new, threshold)))


def shown_not_gated(findings: list[Finding]) -> list[Finding]:
    """The not-gated memory peaks worth a line: the process's, training and evaluation peaks always,
    a role's when it moved beyond the threshold."""
    return [f for f in findings if f.metric.startswith(("memory/process_", "memory/training_", "memory/eval_"))
            or f.label in ("worse", "better")]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
