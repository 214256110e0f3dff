"""`rlbench check` for machines: one verdict per gated metric per run, as JSON or Markdown.

    rlbench check new.json --baseline base.json --format json > check.json
    rlbench check new.json --baseline base.json --format md --output check.md    # a pull-request comment
    rlbench check new.json --baseline base.json --format junit --output check.xml  # rlbench/report/junit.py

`verdicts` flattens what `check_reports` found (rlbench/report/gate.py) into one `Verdict` per
gated metric of every matched run (and per run status that changed, and per fixed work count):

    failed   a regression: worse beyond its threshold, a run no longer ok or missing, a gated
             metric missing or not a finite number, a changed work count
    passed   unchanged, within threshold, within noise (accuracy), or better
    skipped  not gated here, with the reason: a machine-bound metric against a baseline of other
             hardware ("not comparable: hardware differs (...)"), a memory peak of the kind not
             gated (--gate-memory), one new since the new report's schema

`check_document` is the JSON (`--format json`): the verdict, the exit code, both reports and their
machines, the thresholds, every verdict with its numbers, and the notes. `check_markdown` is the
same for people (`--format md`): the verdict, then a table per outcome that is not a plain pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlbench.report.format import format_change, format_value, markdown_table, md_text
from rlbench.report.gate import CheckResult, Finding, Threshold, gated

OUTCOMES = ("failed", "passed", "skipped")
DOCUMENT_VERSION = 1
"""Version of the `check --format json` document; changes when its keys change."""


@dataclass(frozen=True)
class Verdict:
    """One gated metric of one run (or a run's status): what `check` decided and why."""

    run: str
    metric: str
    area: str  # memory, throughput, accuracy, work (budget/<count>) or run (status, metrics)
    outcome: str  # failed, passed or skipped
    label: str  # worse, better, unchanged, within threshold, within noise, not comparable, not gated, ...
    baseline: float | None
    new: float | None
    unit: str
    threshold: str
    reason: str = ""  # why it failed or was skipped, or the noise level; "" when the numbers say it all

    @property
    def change(self) -> float | None:
        return None if self.baseline is None or self.new is None else self.new - self.baseline

    def delta_text(self) -> str:
        """'+0.7 MiB, +0.1%': the change in the metric's unit and relative to the baseline, or ''."""
        if self.change is None:
            return ""
        return format_change(self.change, self.change / abs(self.baseline) if self.baseline else None, self.unit)

    def change_text(self) -> str:
        """'524.7 MiB -> 525.4 MiB (+0.7 MiB, +0.1%)', or '' without two values."""
        if self.change is None:
            return ""
        return f"{format_value(self.baseline, self.unit)} -> {format_value(self.new, self.unit)} ({self.delta_text()})"

    def message(self) -> str:
        """The verdict in one line: 'worse: 356.0 MiB -> 427.2 MiB (+71.2 MiB, +20.0%); threshold 2%'."""
        parts = [self.change_text(), f"threshold {self.threshold}" if self.change is not None else "", self.reason]
        return f"{self.label}: " + "; ".join(p for p in parts if p)

    def as_dict(self) -> dict[str, Any]:
        change = self.change
        relative = change / abs(self.baseline) if change is not None and self.baseline else None
        return {"run": self.run, "metric": self.metric, "area": self.area, "outcome": self.outcome,
                "label": self.label, "baseline": self.baseline, "new": self.new, "unit": self.unit,
                "change": change, "relative_change": relative, "threshold": self.threshold, "reason": self.reason,
                "message": self.message()}


def _area(metric: str) -> str:
    if metric.startswith("budget/"):
        return "work"
    return gated(metric) or "run"


def _verdict(f: Finding, outcome: str, label: str, reason: str | None = None) -> Verdict:
    if f.statuses is not None:
        reason = f"status {f.statuses[1]}, was {f.statuses[0]} in the baseline" + (f": {f.note}" if f.note else "")
        return Verdict(f.run, "status", "run", outcome, label, None, None, "", f.threshold, reason)
    return Verdict(f.run, f.metric, _area(f.metric), outcome, label, f.base, f.new, f.unit, f.threshold,
                   f.note if reason is None else reason)


def _failure_label(f: Finding) -> str:
    if f.statuses is not None:
        return "missing" if f.statuses[1] == "missing" else "not ok"
    if f.label:
        return f.label
    if f.metric == "metrics":
        return "no metrics"
    return "missing" if "missing" in f.note else "not a finite number"


def verdicts(result: CheckResult) -> list[Verdict]:
    """Every verdict of `result`, run by run (in the order the runs were checked, a run missing
    from the new report last), the status first, then metrics by name."""
    out = [_verdict(f, "failed", _failure_label(f)) for f in result.regressions]
    out += [_verdict(f, "passed", "ok again" if f.statuses else f.label or "better") for f in result.improvements]
    out += [_verdict(f, "passed", f.label) for f in result.unflagged + result.passed]
    out += [_verdict(f, "skipped", f.label, f"hardware differs ({result.hardware})") for f in result.not_comparable]
    for f in result.not_gated:
        kind = "anonymous" if result.memory_gates.get(f.run, "anon") == "anon" else "total"
        reason = ("shown beside the gated peaks, never gated (a rise above a sampled baseline)"
                  if f.metric.endswith("_rise_bytes") else
                  f"this run's memory peaks are gated on {kind} memory (--gate-memory)")
        out.append(_verdict(f, "skipped", "not gated", reason))
    out += [_verdict(f, "skipped", "new", f.note) for f in result.not_compared]
    order = {rid: i for i, rid in enumerate(result.runs)}
    return sorted(out, key=lambda v: (order.get(v.run, len(order)), v.run, v.metric != "status", v.metric))


def counts(items: list[Verdict]) -> dict[str, int]:
    return {outcome: sum(v.outcome == outcome for v in items) for outcome in OUTCOMES}


def verdict_line(result: CheckResult) -> str:
    """The one-line verdict `check` ends with (and all that --quiet prints)."""
    if result.regressions:
        return f"FAIL: {len(result.regressions)} regression(s), {len(result.improvements)} improvement(s)"
    return (f"ok: no regression ({len(result.improvements)} improvement(s))"
            + (" among the machine-independent metrics" if result.hardware else ""))


@dataclass(frozen=True)
class CheckInputs:
    """What a check was run on and with: for the documents' headers."""

    report: str
    baseline: str
    machines: tuple[str, str]  # fingerprint_text of the new report and of the baseline
    thresholds: dict[str, Threshold]
    settings: list[str]  # settings the two reports differ in (with --allow-mismatch), described
    environment: list[str]  # environment differences, described (information)
    overridden: bool = False  # whether --threshold overrode the baseline suite's thresholds


def check_document(inputs: CheckInputs, result: CheckResult, seed_means: dict[str, Any] | None = None) -> dict:
    """The JSON document of `check --format json` (keys described in the module docstring)."""
    items = verdicts(result)
    return {
        "rlbench_check": DOCUMENT_VERSION,
        "verdict": "fail" if result.regressions else "ok",
        "exit_code": 1 if result.regressions else 0,
        "summary": verdict_line(result),
        "report": {"path": inputs.report, "machine": inputs.machines[0]},
        "baseline": {"path": inputs.baseline, "machine": inputs.machines[1]},
        "thresholds": {area: str(limit) for area, limit in inputs.thresholds.items()},
        "memory_gates": dict(result.memory_gates),
        "hardware_difference": result.hardware,
        "setting_differences": list(inputs.settings),
        "environment_differences": list(inputs.environment),
        "runs": list(result.runs),
        "metrics_compared": result.metrics_compared,
        "counts": {**counts(items), "regressions": len(result.regressions),
                   "improvements": len(result.improvements)},
        "checks": [v.as_dict() for v in items],
        "notes": list(result.notes),
        "seed_means": seed_means or {},
    }


MD_GROUPS = (("failed", "regressions"), ("better", "improvements"), ("passed", "within noise or threshold"),
             ("skipped", "not gated or not comparable"))


def check_markdown(inputs: CheckInputs, result: CheckResult) -> str:
    """`check --format md`: the verdict first, the machines and thresholds, then a table of the
    regressions, the improvements, the accuracy changes within noise or threshold, and the metrics
    skipped with the reason; unchanged metrics are counted, not listed."""
    items = verdicts(result)
    tally = counts(items)
    lines = [f"## rlbench check: {md_text(verdict_line(result))}", "",
             f"- new: {md_text(inputs.report)} ({md_text(inputs.machines[0])})",
             f"- baseline: {md_text(inputs.baseline)} ({md_text(inputs.machines[1])})",
             "- thresholds: " + md_text(", ".join(f"{a} {t}" for a, t in inputs.thresholds.items())),
             f"- {len(result.runs)} run(s); {len(items)} check(s): {tally['failed']} failed, {tally['passed']} "
             f"passed, {tally['skipped']} skipped"]
    if result.hardware:
        lines.append(f"- not comparable: hardware differs ({md_text(result.hardware)}): times, throughput, memory "
                     "peaks and accuracy are listed, not gated")
    lines += [f"- warning: settings differ: {md_text(s)}" for s in inputs.settings]
    groups = {"failed": [v for v in items if v.outcome == "failed"],
              "better": [v for v in items if v.outcome == "passed" and v.label in ("better", "ok again")],
              "passed": [v for v in items if v.outcome == "passed" and v.label.startswith("within")],
              "skipped": [v for v in items if v.outcome == "skipped" and (v.label != "not gated" or
                                                                            v.metric.startswith("memory/process_"))]}
    for key, title in MD_GROUPS:
        if groups[key]:
            rows = [[v.run, v.metric, format_value(v.baseline, v.unit), format_value(v.new, v.unit),
                     v.delta_text() or "-", v.label, v.threshold,
                     _short(v.reason, result.hardware)] for v in groups[key]]
            lines += ["", f"### {title}", "",
                      markdown_table(["run", "metric", "baseline", "new", "change", "verdict", "threshold", "note"],
                                     rows, right={2, 3, 4})]
    if result.notes:
        lines += ["", *[f"- note: {md_text(n)}" for n in result.notes]]
    return "\n".join(lines) + "\n"


def _short(reason: str, hardware: str | None) -> str:
    """A verdict's note for a table row: the hardware difference, stated once above, as two words."""
    return "hardware differs" if hardware and reason == f"hardware differs ({hardware})" else reason
