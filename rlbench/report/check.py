"""`rlbench check NEW --baseline BASE`: the regression gate, for CI.

    rlbench check results/ci/<timestamp>/report.json --baseline results/baselines/cpu-amd-epyc-avx2.json
    rlbench check new.json --baseline base.json --threshold memory:5% --threshold accuracy:0.02
    rlbench check new.json --baseline base.json --require-same-hardware   # exit 2 on other hardware
    rlbench check new.json --baseline base.json --format junit --output check.xml   # CI test reporters

Output. `--format table` (the default): Rich tables for people. `json`, `md` and `junit`: one
verdict per gated metric per run (rlbench/report/verdicts.py, rlbench/report/junit.py), on stdout,
or in the file `--output` names while stdout shows the tables. Warnings (settings that differ,
with --allow-mismatch) go to stderr; `--quiet` prints the one-line verdict and errors only.

Runs are matched by label and seed. For every matched run, the gated metrics are compared:

    memory       memory/*: every role's static bytes, and its peak, the process peak, the training
                 peak (memory/training_*peak_bytes: the highest phase that is not an evaluation)
                 and the evaluation peak (memory/eval_*peak_bytes; rlbench/report/peaks.py), either
                 anonymous (`--gate-memory anon`, the default) or total (`--gate-memory total`)
    throughput   throughput/* and time/step_s
    accuracy     eval/accuracy
    work         budget/<count>: the counts of work the settings fix (rlbench/report/machine.py),
                 which must be equal

Like with like. Each report names the machine that made it (its `environment`: the fingerprint
and hardware class, rlbench/environment.py). Static bytes and the fixed work counts are the same
on every machine and are gated against any baseline. Times, throughput, MFU, memory peaks and
accuracy are gated only against a baseline of the same hardware class and torch threads; against
another (or a schema-1 baseline, which records no class) they are listed as "not comparable:
hardware differs (...)" and not gated. `--require-same-hardware` makes such a pair unusable input
(exit 2). CI keeps one baseline per class (.ci/run, `make baseline`).

Memory peaks come in two kinds (rlbench/measure/cpu_probe.py). The total (memory/process_peak_bytes,
memory/<role>/peak_bytes: VmHWM) counts file-backed pages too: the code of the libraries as it is
paged in and memory-mapped weights, which depend on how the libraries were installed and on the page
cache: the same code reads differently in two venvs, by more than a tight threshold (README,
"Regression gate in CI"). The anonymous figures (memory/process_anon_peak_bytes and
memory/<role>/anon_peak_bytes: RssAnon, sampled every probe period; memory/process_anon_rise_bytes,
the peak's rise above the run's baseline, is shown but not gated: SHOWN_NOT_GATED) are what the
code allocates. By default the gate uses the anonymous figures where both runs have them, and shows
the total figures (not gated) beside them; `--gate-memory total` gates the total figures instead
(the anonymous ones are then shown, not gated). A run of a report written before the anonymous
figures existed (an old baseline) falls back to the total figures, with a note saying so.

The two reports must have been run with the same settings (rlbench/report/mismatch.py: model,
task, budget, rollout, evaluation, seeds, probe, and each matched run's algorithm settings): when
they differ, `check` refuses (exit 2) and lists every difference; `--allow-mismatch` checks anyway
and prints the differences as a warning above the verdict. Library versions are listed as
information.

A threshold is relative ('5%') or absolute ('0.02'). The direction comes from each metric's
`higher_is_better`: a change in the worse direction beyond the threshold is a regression, one in
the better direction beyond it an improvement. A relative threshold bounds the ratio of the worse
value to the better one, so a time and the rate it implies agree: 'throughput:60%' fails a step
that takes 1.6x as long and a tokens-per-second figure 1.6x lower (a fall of 37.5%); for small
limits this is the familiar 'N% worse'. Metrics without a direction are never gated.

Noise. An accuracy change no larger than the standard error of the difference, sqrt(se_base^2 +
se_new^2), is noise and never fails; it is listed as "within noise" with that noise level (an
accuracy change within the threshold, as "within threshold"). Noise is never read from the report
under test (a report claiming a standard error of 10 would pass anything): se_base is the
baseline's, se_new is recomputed from the new accuracy and the number of problems (binomial). Only
estimates have noise: memory and time figures are measured, whatever stderr a report attaches to
them. `judge` gives the label, and `rlbench compare` labels its changes with the same function, so
the two agree. Also regressions, each with a line saying why: a run that ended ok in the baseline
and is not ok in the new report, or is missing from it; an ok run with no metrics; a gated metric
of the baseline missing from the new report (unless the new report's schema predates the key:
then it is new, noted, not compared); a value that is NaN (or infinite) on either side, which no
threshold can compare; a changed fixed work count.

Unusable input (exit 2, one line; rlbench/report/sanity.py): a figure no run can produce (negative
memory, time or rate, a zero peak, a fraction outside [0, 1], a negative or absurd standard error)
and a metric whose unit differs between the reports or from rlbench's.

Thresholds come from the baseline's suite (its `check:` block, defaults from CheckConfig), never
from the report under test: a change that loosens its own suite's `check:` block does not loosen
its own gate. `--threshold AREA:LIMIT` overrides them area by area.

Every regression and every improvement is listed (metric and run named), then the exit code:
0 no regression, 1 at least one, 2 unusable input (missing or unreadable file, schema mismatch, no
common runs, bad threshold, impossible figures, other hardware with --require-same-hardware),
raised as UserError. The rules live in rlbench/report/gate.py; this module prints them.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rlbench.errors import UserError
from rlbench.report.format import format_change, format_value
from rlbench.report.gate import (
    AREAS,
    MEMORY_GATES,
    SHOWN_NOT_GATED,
    CheckResult,
    Finding,
    Threshold,
    check_reports,
    exceeds,
    gated,
    has_anon,
    judge,
    match_runs,
    memory_kind,
    noise_level,
    shown_not_gated,
    thresholds_for,
    worse_factor,
)
from rlbench.report.io import json_document, write_output
from rlbench.report.machine import fingerprint_text, hardware_difference
from rlbench.report.verdicts import CheckInputs, check_document, check_markdown, verdict_line

__all__ = ["AREAS", "MEMORY_GATES", "SHOWN_NOT_GATED", "CheckResult", "Finding", "Threshold", "check_command",
           "check_reports", "exceeds", "format_change", "format_value", "gated", "has_anon", "judge", "match_runs",
           "memory_kind", "noise_level", "thresholds_for", "worse_factor"]


FORMATS = ("table", "json", "md", "junit")


def check_command(report: str, baseline: str, thresholds: list[str], console: Console,
                  allow_mismatch: bool = False, gate_memory: str = "anon", require_same_hardware: bool = False,
                  fmt: str = "table", output: str | None = None, quiet: bool = False,
                  err: Console | None = None) -> int:
    """Load both reports, refuse unlike settings (unless `allow_mismatch`) and, with
    `require_same_hardware`, other hardware; check; write the verdicts in `fmt` (table, json, md,
    junit) to `output` or to `console`; 0 ok, 1 regression.

    With `output`, the console shows the tables (the verdict alone with a table `fmt`, or with
    `quiet`). Warnings go to `err` (the console itself when not given); `quiet` keeps the verdict
    line only."""
    from rlbench.report.mismatch import environment_differences, setting_differences
    from rlbench.report.schema import load_report

    if gate_memory not in MEMORY_GATES:
        raise UserError(f"--gate-memory {gate_memory!r}: expected one of {', '.join(MEMORY_GATES)}")
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    err = err or console
    new, base = load_report(report), load_report(baseline)
    if base.get("smoke"):
        raise UserError(f"{baseline}: a smoke run (rlbench run --smoke) cannot be a baseline: its runs are cut short; "
                        "make the baseline with a full run of the suite (make baseline)")
    limits = thresholds_for(base, thresholds)
    differences = setting_differences(new, base)
    if differences and not allow_mismatch:
        raise UserError(f"{report} and the baseline {baseline} were run with different settings, so their "
                        f"figures are not comparable: {'; '.join(d.describe() for d in differences)} "
                        "(--allow-mismatch checks them anyway, with these differences as a warning)")
    hardware = hardware_difference(new, base)
    if hardware and require_same_hardware:
        raise UserError(f"--require-same-hardware: {report} and the baseline {baseline} ran on different hardware "
                        f"({hardware}); use the baseline of this machine's class (make baseline)")
    result = check_reports(new, base, limits, gate_memory, names=(report, baseline))
    inputs = CheckInputs(report, baseline, (fingerprint_text(new.get("environment") or {}),
                                            fingerprint_text(base.get("environment") or {})), limits,
                         [d.describe() for d in differences],
                         [d.describe() for d in environment_differences(new, base)], bool(thresholds))
    if differences and not quiet:
        err.print(f"[yellow]warning:[/] the reports were run with different settings ({len(differences)}; "
                  "--allow-mismatch): their figures are not like for like", highlight=False)
        for line in inputs.settings:
            err.print(f"[yellow]  {escape(line)}[/]", highlight=False)
    code = 1 if result.regressions else 0
    document = None if fmt == "table" else _document(fmt, inputs, result, new, base)
    if output is None:
        if document is None:
            _print_tables(console, inputs, result, (new, base), quiet)
        else:
            console.out(document, highlight=False, end="")
        return code
    if document is None:  # the tables, as plain text
        buffer = Console(file=io.StringIO(), width=150, color_system=None)
        _print_tables(buffer, inputs, result, (new, base), False)
        document = buffer.file.getvalue()
    write_output(output, document)
    # the file holds the document; the console shows the tables (the verdict alone when they went to the file)
    _print_tables(console, inputs, result, (new, base), quiet or fmt == "table")
    if not quiet:
        console.print(f"wrote: {escape(output)}", highlight=False)
    return code


def _document(fmt: str, inputs: CheckInputs, result: CheckResult, new: dict[str, Any], base: dict[str, Any]) -> str:
    """The check's verdicts as JSON, Markdown or JUnit XML (rlbench/report/verdicts.py, junit.py)."""
    from rlbench.report.junit import junit_xml
    from rlbench.report.seeds import label_seed_means, seed_markdown

    if fmt == "json":
        seeds = {"new": label_seed_means(new), "baseline": label_seed_means(base)}
        return json_document(check_document(inputs, result, seeds))
    if fmt == "md":
        extra = [*seed_markdown(new, f"mean over seeds: new {inputs.report}"),
                 *seed_markdown(base, f"mean over seeds: baseline {inputs.baseline}")]
        return check_markdown(inputs, result) + ("\n" + "\n".join(extra) if extra else "")
    return junit_xml(inputs, result, new.get("created"))


def _print_tables(console: Console, inputs: CheckInputs, result: CheckResult, reports: tuple[dict, dict],
                  quiet: bool) -> None:
    """The check for people: the reports, machines and thresholds, a table per kind of finding,
    the notes, the means over seeds, and the verdict (alone when `quiet`)."""
    from rlbench.report.seeds import print_seed_means

    if quiet:
        _print_verdict(console, result)
        return
    limits = inputs.thresholds
    console.print(f"[bold]rlbench check[/] {escape(inputs.report)}\n  against {escape(inputs.baseline)}\n"
                  f"  new:      {escape(inputs.machines[0])}\n"
                  f"  baseline: {escape(inputs.machines[1])}\n  {len(result.runs)} "
                  f"run(s), {result.metrics_compared} metric(s) compared; thresholds: "
                  + ", ".join(f"{a} {limits[a]}" for a in AREAS)
                  + (" (the baseline's suite, --threshold overrides)" if inputs.overridden else " (the baseline's suite)")
                  + f"; memory peaks gated: {_gates_text(result.memory_gates)}",
                  highlight=False, soft_wrap=True)
    if result.hardware:
        console.print(f"[yellow]not comparable: hardware differs ({escape(result.hardware)})[/]: times, "
                      "throughput, memory peaks and accuracy are listed, not gated; static bytes and fixed work "
                      "counts are gated", highlight=False, soft_wrap=True)
    if inputs.environment:
        console.print("[dim]environment differs (information):[/]", highlight=False)
        for line in inputs.environment:
            console.print(f"[dim]  {escape(line)}[/]", highlight=False)
    for title, findings, colour in (("regressions", result.regressions, "red"),
                                    ("improvements", result.improvements, "green"),
                                    ("accuracy within noise or threshold (not a regression)", result.unflagged,
                                     "dim"),
                                    ("memory peaks not gated (shown for information)",
                                     shown_not_gated(result.not_gated), "dim"),
                                    (f"not comparable: hardware differs ({result.hardware})", result.not_comparable,
                                     "dim")):
        if findings:
            console.print(_findings_table(title, findings, colour, labels=colour == "dim"))
    for note in result.notes:
        console.print(f"[dim]note: {escape(note)}[/]", highlight=False)
    new, base = reports
    print_seed_means([(f"new {inputs.report}", new), (f"baseline {inputs.baseline}", base)], console)
    _print_verdict(console, result)


def _print_verdict(console: Console, result: CheckResult) -> None:
    line = verdict_line(result)
    colour = "bold red" if result.regressions else "bold green"
    head, _, rest = line.partition(":")
    console.print(f"[{colour}]{head}[/]:{escape(rest)}", highlight=False)


def _gates_text(gates: Mapping[str, str]) -> str:
    """'anon' when every run gated anonymous peaks, else which runs gated which kind."""
    kinds = set(gates.values())
    if len(kinds) <= 1:
        kind = next(iter(kinds), "-")
        return {"anon": "anonymous (RssAnon)", "total": "total (RSS or device)"}.get(kind, kind)
    return ", ".join(f"{rid} {kind}" for rid, kind in gates.items())


def _findings_table(title: str, findings: list[Finding], colour: str, labels: bool) -> Table:
    table = Table(title=f"[{colour}]{escape(title)}[/]", title_justify="left")
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
