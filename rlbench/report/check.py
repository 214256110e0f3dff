"""`rlbench check NEW --baseline BASE`: the regression gate, for CI.

    rlbench check results/ci/<timestamp>/report.json --baseline results/baselines/ci-cpu.json
    rlbench check new.json --baseline base.json --threshold memory:5% --threshold accuracy:0.02

Runs are matched by label and seed. For every matched run, the gated metrics are compared:

    memory       memory/* (every role's peak and static bytes, the process peak)
    throughput   throughput/* and time/step_s
    accuracy     eval/accuracy

A threshold is relative ('5%') or absolute ('0.02'). The direction comes from each metric's
`higher_is_better`: a change in the worse direction beyond the threshold is a regression, one in
the better direction beyond it an improvement. A relative threshold bounds the ratio of the worse
value to the better one, so a time and the rate it implies agree: 'throughput:60%' fails a step
that takes 1.6x as long and a tokens-per-second figure 1.6x lower (a fall of 37.5%); for small
limits this is the familiar 'N% worse'. Metrics without a direction are never gated. An accuracy
change smaller than the combined standard error of the two measurements, sqrt(se_new^2 +
se_base^2), is noise and never fails. Also regressions, each with a line saying why: a run that
ended ok in the baseline and is not ok in the new report, or is missing from it; an ok run with
no metrics; a gated metric of the baseline missing from the new report; a value that is NaN (or
infinite) on either side, which no threshold can compare.

Thresholds come from the baseline's suite (its `check:` block, defaults from CheckConfig), never
from the report under test: a change that loosens its own suite's `check:` block does not loosen
its own gate. `--threshold AREA:LIMIT` overrides them area by area.

Every regression and every improvement is listed (metric and run named), then the exit code:
0 no regression, 1 at least one, 2 unusable input (missing file, schema mismatch, no common runs,
bad threshold), raised as UserError.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from rlbench.errors import UserError

AREAS = ("memory", "throughput", "accuracy")


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

    @property
    def ok(self) -> bool:
        return not self.regressions


def gated(name: str) -> str | None:
    """The threshold area that gates metric `name`, or None when it is not gated."""
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
        return -1 if factor == 0 or 1 / factor - 1 > threshold.limit else 0
    worse = (base - new) if higher_is_better else (new - base)
    return 1 if worse > threshold.limit else (-1 if -worse > threshold.limit else 0)


def check_reports(new: dict[str, Any], base: dict[str, Any], thresholds: Mapping[str, Threshold]) -> CheckResult:
    """Compare every gated metric of every run the two reports share; pure (no I/O)."""
    pairs, only_new, only_base = match_runs(new, base)
    if not pairs:
        raise UserError("no runs in common: the new report has "
                        f"{', '.join(r['id'] for r in new['runs']) or 'no runs'}, the baseline "
                        f"{', '.join(r['id'] for r in base['runs']) or 'no runs'} (runs are matched by label and seed)")
    result = CheckResult()
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
        _check_metrics(rid, new_run["metrics"], base_run.get("metrics") or {}, thresholds, result)
    return result


def _check_metrics(rid: str, new: dict[str, Any], base: dict[str, Any], thresholds: Mapping[str, Threshold],
                   result: CheckResult) -> None:
    for name, base_metric in base.items():
        gate = gated(name)
        if gate is None or base_metric.get("higher_is_better") is None or base_metric.get("value") is None:
            continue
        new_metric = new.get(name)
        if new_metric is None or new_metric.get("value") is None:
            result.regressions.append(Finding(rid, name, None, None, "-",
                                              note="in the baseline but missing from the new report"))
            continue
        unusable = [side for side, m in (("new report", new_metric), ("baseline", base_metric))
                    if not _finite(m["value"])]
        if unusable:
            result.regressions.append(Finding(rid, name, None, None, "-", note=f"{base_metric['value']} in the "
                                              f"baseline, {new_metric['value']} in the new report: a value that is "
                                              f"not a finite number ({' and '.join(unusable)}) cannot be compared"))
            continue
        result.metrics_compared += 1
        threshold = thresholds[gate]
        verdict = exceeds(threshold, base_metric["value"], new_metric["value"], base_metric["higher_is_better"])
        noise = _combined_stderr(base_metric, new_metric) if gate == "accuracy" else 0.0
        if verdict == 0 or abs(new_metric["value"] - base_metric["value"]) <= noise:
            continue
        note = f"combined standard error {noise:.3g}" if gate == "accuracy" else ""
        finding = Finding(rid, name, base_metric["value"], new_metric["value"], str(threshold),
                          base_metric.get("unit", ""), note)
        (result.regressions if verdict > 0 else result.improvements).append(finding)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _combined_stderr(base: dict[str, Any], new: dict[str, Any]) -> float:
    """Standard error of the difference of two independent estimates."""
    return math.sqrt((base.get("stderr") or 0.0) ** 2 + (new.get("stderr") or 0.0) ** 2)


# ---- formatting ------------------------------------------------------------------------------


def format_value(value: float | None, unit: str, signed: bool = False) -> str:
    """A metric's value for people: bytes in MiB, fractions in percent (points when `signed`, for a
    change), seconds with 3 decimals, rates with a k/M/G prefix."""
    if value is None:
        return "-"
    sign = "+" if signed else ""
    if unit == "bytes":
        return f"{value / 2**20:{sign},.1f} MiB"
    if unit == "fraction":
        return f"{value * 100:{sign}.1f} pts" if signed else f"{value:.1%}"
    if unit == "s":
        return f"{value:{sign}.3f} s"
    if unit == "1/s":
        for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(value) >= factor:
                return f"{value / factor:{sign}.2f} {prefix}/s"
        return f"{value:{sign}.1f}/s"
    return f"{value:{sign}.4g}"


def format_change(delta: float | None, relative: float | None, unit: str) -> str:
    """'+2.0 MiB, +20.0%': a change in the metric's unit, then relative to the baseline where defined."""
    if delta is None:
        return "-"
    return format_value(delta, unit, signed=True) + (f", {relative:+.1%}" if relative is not None else "")


def check_command(report: str, baseline: str, thresholds: list[str], console: Console) -> int:
    """Load both reports, check, print every regression and improvement; 0 ok, 1 regression."""
    from rlbench.report.schema import load_report
    from rlbench.report.seeds import print_seed_means

    new, base = load_report(report), load_report(baseline)
    limits = thresholds_for(base, thresholds)
    result = check_reports(new, base, limits)
    console.print(f"[bold]rlbench check[/] {report}\n  against {baseline}\n  {len(result.runs)} run(s), "
                  f"{result.metrics_compared} metric(s) compared; thresholds: "
                  + ", ".join(f"{a} {limits[a]}" for a in AREAS)
                  + (" (the baseline's suite, --threshold overrides)" if thresholds else " (the baseline's suite)"),
                  highlight=False)
    for warning in _environment_warnings(new, base):
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    for title, findings, colour in (("regressions", result.regressions, "red"),
                                    ("improvements", result.improvements, "green")):
        if findings:
            console.print(_findings_table(title, findings, colour))
    for note in result.notes:
        console.print(f"[dim]note: {note}[/]", highlight=False)
    print_seed_means([(f"new {report}", new), (f"baseline {baseline}", base)], console)
    if result.regressions:
        console.print(f"[bold red]FAIL[/]: {len(result.regressions)} regression(s), "
                      f"{len(result.improvements)} improvement(s)")
        return 1
    console.print(f"[bold green]ok[/]: no regression ({len(result.improvements)} improvement(s))")
    return 0


def _findings_table(title: str, findings: list[Finding], colour: str) -> Table:
    table = Table(title=f"[{colour}]{title}[/]", title_justify="left")
    for col in ("run", "metric", "baseline", "new", "change", "threshold"):
        table.add_column(col, justify="right" if col in ("baseline", "new", "change") else "left",
                         overflow="fold")
    for f in findings:
        if f.statuses is not None:
            table.add_row(f.run, "status", f.statuses[0], f"[{colour}]{f.statuses[1]}[/]", f.note, f.threshold)
            continue
        change = format_change(f.delta, f.relative_delta, f.unit) + (f" ({f.note})" if f.note else "")
        table.add_row(f.run, f.metric, format_value(f.base, f.unit), format_value(f.new, f.unit),
                      f"[{colour}]{change}[/]", f.threshold)
    return table


def _environment_warnings(new: dict[str, Any], base: dict[str, Any]) -> list[str]:
    """Differences of machine that make memory and speed figures incomparable."""
    warnings = []
    ne, be = new.get("environment") or {}, base.get("environment") or {}
    for key, what in (("cpu", "CPU"), ("cpu_cores", "core count")):
        if ne.get(key) != be.get(key):
            warnings.append(f"{what} differs: {ne.get(key)!r} here, {be.get(key)!r} in the baseline")
    new_gpu, base_gpu = (ne.get("gpu") or {}).get("name"), (be.get("gpu") or {}).get("name")
    if new_gpu != base_gpu:
        warnings.append(f"GPU differs: {new_gpu!r} here, {base_gpu!r} in the baseline")
    return warnings
