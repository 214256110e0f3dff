"""`rlbench check NEW --baseline BASE`: the regression gate, for CI.

    rlbench check results/ci/<timestamp>/report.json --baseline results/baselines/ci-cpu.json
    rlbench check new.json --baseline base.json --threshold memory:5% --threshold accuracy:0.02

Runs are matched by label and seed. For every matched run, the gated metrics are compared:

    memory       memory/*: every role's static bytes, and its peak and the process peak, either
                 anonymous (`--gate-memory anon`, the default) or total (`--gate-memory total`)
    throughput   throughput/* and time/step_s
    accuracy     eval/accuracy

Memory peaks come in two kinds (rlbench/measure/cpu_probe.py). The total (memory/process_peak_bytes,
memory/<role>/peak_bytes: VmHWM) counts file-backed pages too: the code of the libraries as it is
paged in and memory-mapped weights, which depend on how the libraries were installed and on the page
cache: the same code reads differently in two venvs, by more than a tight threshold (README,
"Regression gate in CI"). The anonymous figures (memory/process_anon_peak_bytes and
memory/<role>/anon_peak_bytes: RssAnon, sampled every probe period; memory/process_anon_rise_bytes,
the peak's rise above the run's baseline, is shown but not gated: SHOWN_NOT_GATED) are what the
code allocates. By
default the gate uses the anonymous figures where both runs have them, and shows the total figures
(not gated) beside them; `--gate-memory total` gates the total figures instead (the anonymous ones
are then shown, not gated). A run of a report written before the anonymous figures existed (an old
baseline) falls back to the total figures, with a note saying so.

The two reports must have been run with the same settings (rlbench/report/mismatch.py: model,
task, budget, rollout, evaluation, seeds, probe, and each matched run's algorithm settings): when
they differ, `check` refuses (exit 2) and lists every difference; `--allow-mismatch` checks anyway
and prints the differences as a warning above the verdict. Differences of environment (library
versions, CPU, GPU) are listed as information.

A threshold is relative ('5%') or absolute ('0.02'). The direction comes from each metric's
`higher_is_better`: a change in the worse direction beyond the threshold is a regression, one in
the better direction beyond it an improvement. A relative threshold bounds the ratio of the worse
value to the better one, so a time and the rate it implies agree: 'throughput:60%' fails a step
that takes 1.6x as long and a tokens-per-second figure 1.6x lower (a fall of 37.5%); for small
limits this is the familiar 'N% worse'. Metrics without a direction are never gated. An accuracy
change smaller than the combined standard error of the two measurements, sqrt(se_new^2 +
se_base^2), is noise and never fails; it is listed as "within noise" with that noise level (an
accuracy change within the threshold, as "within threshold"). `judge` gives the label, and
`rlbench compare` labels its changes with the same function, so the two agree. Also regressions, each with a line saying why: a run that
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
from rich.markup import escape
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
    not_gated: list[Finding] = field(default_factory=list)  # memory peaks of the kind not gated
    memory_gates: dict[str, str] = field(default_factory=dict)  # run id -> the memory kind gated

    @property
    def ok(self) -> bool:
        return not self.regressions


MEMORY_GATES = ("anon", "total")
SHOWN_NOT_GATED = ("memory/process_anon_rise_bytes",)
"""Shown beside the gated figures, never gated: the anonymous rise is the sampled peak less a steady
baseline, so the peak's sampling error weighs 1.7 times as much in it (measured: 1.5% apart in two
runs of the same code whose peaks were 0.9% apart), too close to a 2% threshold."""


def memory_kind(name: str) -> str | None:
    """'anon' for an anonymous-memory peak or rise, 'total' for a total (RSS or device) peak, None
    for the other memory figures (static bytes, computed from tensors: always gated)."""
    if not name.startswith("memory/"):
        return None
    last = name.rsplit("/", 1)[-1]
    if last in ("anon_peak_bytes", "process_anon_peak_bytes", "process_anon_rise_bytes"):
        return "anon"
    if last in ("peak_bytes", "process_peak_bytes"):
        return "total"
    return None


def has_anon(metrics: Mapping[str, Any]) -> bool:
    return any(memory_kind(name) == "anon" for name in metrics)


def judge(base: Mapping[str, Any], new: Mapping[str, Any], threshold: Threshold | None) -> str:
    """The label of one metric's change, shared by `check` and `compare`: 'unchanged'; 'within
    noise' (no larger than the combined standard error); 'within threshold'; 'worse' or 'better'
    (the metric's direction); 'changed' (no direction, or no threshold for a metric without one).
    Both values must be finite numbers."""
    base_value, new_value = base["value"], new["value"]
    if new_value == base_value:
        return "unchanged"
    if abs(new_value - base_value) <= _combined_stderr(base, new):
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


def check_reports(new: dict[str, Any], base: dict[str, Any], thresholds: Mapping[str, Threshold],
                  memory_gate: str = "anon") -> CheckResult:
    """Compare every gated metric of every run the two reports share; pure (no I/O). `memory_gate`:
    which memory peaks are gated ('anon' falls back to 'total' for a run without anonymous figures
    on either side, with a note)."""
    assert memory_gate in MEMORY_GATES, memory_gate
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
        _check_metrics(rid, new_run["metrics"], base_metrics, thresholds, result, kind)
    return result


def _check_metrics(rid: str, new: dict[str, Any], base: dict[str, Any], thresholds: Mapping[str, Threshold],
                   result: CheckResult, memory_gate: str = "total") -> None:
    for name, base_metric in base.items():
        gate = gated(name)
        if gate is None or base_metric.get("higher_is_better") is None or base_metric.get("value") is None:
            continue
        kind = memory_kind(name)
        if (kind is not None and kind != memory_gate) or name in SHOWN_NOT_GATED:
            _not_gated(rid, name, base_metric, new.get(name), thresholds[gate], result)
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
        label = judge(base_metric, new_metric, threshold)
        if label == "unchanged" or (gate != "accuracy" and label not in ("worse", "better")):
            continue
        note = f"combined standard error {_combined_stderr(base_metric, new_metric):.3g}" if gate == "accuracy" else ""
        finding = Finding(rid, name, base_metric["value"], new_metric["value"], str(threshold),
                          base_metric.get("unit", ""), note, label=label)
        {"worse": result.regressions, "better": result.improvements}.get(label, result.unflagged).append(finding)


def _not_gated(rid: str, name: str, base: dict[str, Any], new: dict[str, Any] | None, threshold: Threshold,
               result: CheckResult) -> None:
    """A memory peak of the kind not gated: shown (the process's always, a role's when it moved
    beyond the threshold), never a regression."""
    if new is None or not (_finite(new.get("value")) and _finite(base.get("value"))):
        return
    label = judge(base, new, threshold)
    if name.startswith("memory/process_") or label in ("worse", "better"):
        result.not_gated.append(Finding(rid, name, base["value"], new["value"], str(threshold),
                                        base.get("unit", ""), label=label))


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


def check_command(report: str, baseline: str, thresholds: list[str], console: Console,
                  allow_mismatch: bool = False, gate_memory: str = "anon") -> int:
    """Load both reports, refuse unlike settings (unless `allow_mismatch`), check, print every
    regression and improvement; 0 ok, 1 regression."""
    from rlbench.report.mismatch import environment_differences, setting_differences
    from rlbench.report.schema import load_report
    from rlbench.report.seeds import print_seed_means

    if gate_memory not in MEMORY_GATES:
        raise UserError(f"--gate-memory {gate_memory!r}: expected one of {', '.join(MEMORY_GATES)}")
    new, base = load_report(report), load_report(baseline)
    limits = thresholds_for(base, thresholds)
    differences = setting_differences(new, base)
    if differences and not allow_mismatch:
        raise UserError(f"{report} and the baseline {baseline} were run with different settings, so their "
                        f"figures are not comparable: {'; '.join(d.describe() for d in differences)} "
                        "(--allow-mismatch checks them anyway, with these differences as a warning)")
    result = check_reports(new, base, limits, gate_memory)
    console.print(f"[bold]rlbench check[/] {report}\n  against {baseline}\n  {len(result.runs)} run(s), "
                  f"{result.metrics_compared} metric(s) compared; thresholds: "
                  + ", ".join(f"{a} {limits[a]}" for a in AREAS)
                  + (" (the baseline's suite, --threshold overrides)" if thresholds else " (the baseline's suite)")
                  + f"; memory peaks gated: {_gates_text(result.memory_gates)}",
                  highlight=False)
    if differences:
        console.print(f"[yellow]warning:[/] the reports were run with different settings ({len(differences)}; "
                      "--allow-mismatch): their figures are not like for like", highlight=False)
        for difference in differences:
            console.print(f"[yellow]  {escape(difference.describe())}[/]", highlight=False)
    environment = environment_differences(new, base)
    if environment:
        console.print("[dim]environment differs (information; memory and speed figures may move with it):[/]",
                      highlight=False)
        for difference in environment:
            console.print(f"[dim]  {escape(difference.describe())}[/]", highlight=False)
    for title, findings, colour in (("regressions", result.regressions, "red"),
                                    ("improvements", result.improvements, "green"),
                                    ("accuracy within noise or threshold (not a regression)", result.unflagged,
                                     "dim"),
                                    ("memory peaks not gated (shown for information)", result.not_gated, "dim")):
        if findings:
            console.print(_findings_table(title, findings, colour, labels=colour == "dim"))
    for note in result.notes:
        console.print(f"[dim]note: {escape(note)}[/]", highlight=False)
    print_seed_means([(f"new {report}", new), (f"baseline {baseline}", base)], console)
    if result.regressions:
        console.print(f"[bold red]FAIL[/]: {len(result.regressions)} regression(s), "
                      f"{len(result.improvements)} improvement(s)")
        return 1
    console.print(f"[bold green]ok[/]: no regression ({len(result.improvements)} improvement(s))")
    return 0


def _gates_text(gates: Mapping[str, str]) -> str:
    """'anon' when every run gated anonymous peaks, else which runs gated which kind."""
    kinds = set(gates.values())
    if len(kinds) <= 1:
        kind = next(iter(kinds), "-")
        return {"anon": "anonymous (RssAnon)", "total": "total (RSS or device)"}.get(kind, kind)
    return ", ".join(f"{rid} {kind}" for rid, kind in gates.items())


def _findings_table(title: str, findings: list[Finding], colour: str, labels: bool = False) -> Table:
    table = Table(title=f"[{colour}]{title}[/]", title_justify="left")
    for col in ("run", "metric", "baseline", "new", "change", "threshold", *(("label",) if labels else ())):
        table.add_column(col, justify="right" if col in ("baseline", "new", "change") else "left",
                         overflow="fold")
    for f in findings:
        if f.statuses is not None:
            table.add_row(f.run, "status", f.statuses[0], f"[{colour}]{f.statuses[1]}[/]", escape(f.note), f.threshold)
            continue
        change = format_change(f.delta, f.relative_delta, f.unit) + (f" ({f.note})" if f.note else "")
        table.add_row(f.run, f.metric, format_value(f.base, f.unit), format_value(f.new, f.unit),
                      f"[{colour}]{escape(change)}[/]", f.threshold, *((f.label,) if labels else ()))
    return table
