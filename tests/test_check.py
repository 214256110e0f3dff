"""`rlbench check`: regressions and improvements between a real report and changed copies of it.

The fixtures are real reports of `rlbench run suites/ci.yaml` (see test_report_schema.py); a
regression is made by changing one figure of a copy, the way a slower or larger build would.
The suite's `check:` block gives memory 2%, throughput 200%, accuracy 0.02. The base is ci_v2.json
(schema 2: it names its hardware class, so a copy of it is from the same class and its times,
peaks and accuracy are gated; see test_check_hardware.py for reports from other machines).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
from rich.console import Console

from rlbench.cli import main
from rlbench.errors import UserError
from rlbench.measure.evaluation import standard_error
from rlbench.report.check import (
    Finding,
    Threshold,
    check_command,
    check_reports,
    exceeds,
    gated,
    memory_kind,
    thresholds_for,
    worse_factor,
)
from rlbench.report.schema import load_report

REPORTS = Path(__file__).parent / "fixtures" / "reports"
V2 = REPORTS / "ci_v2.json"  # suites/ci.yaml, budget.steps=1, eval.size=16, rollout.ignore_eos=true


@pytest.fixture
def base() -> dict:
    return load_report(V2)


@pytest.fixture
def thresholds(base: dict) -> dict[str, Threshold]:
    return thresholds_for(base, [])


def _metric(report: dict, run_id: str, name: str) -> dict:
    run = next(r for r in report["runs"] if r["id"] == run_id)
    return run["metrics"][name]


def _set_accuracy(report: dict, run_id: str, accuracy: float, n: int = 64) -> None:
    """Accuracy on n problems, with its binomial standard error (the check recomputes the new side's)."""
    metric = _metric(report, run_id, "eval/accuracy")
    metric["value"], metric["stderr"] = accuracy, standard_error(accuracy, n)
    _metric(report, run_id, "eval/size")["value"] = float(n)


def test_thresholds_come_from_the_suite_check_block(thresholds: dict[str, Threshold]) -> None:
    assert thresholds == {"memory": Threshold(0.02, True), "throughput": Threshold(2.0, True),
                          "accuracy": Threshold(0.02, False)}
    assert [str(thresholds[a]) for a in ("memory", "throughput", "accuracy")] == ["2%", "200%", "0.02"]


def test_threshold_flags_override_the_suite(base: dict) -> None:
    limits = thresholds_for(base, ["memory:25%", "accuracy:0.05"])
    assert limits["memory"] == Threshold(0.25, True)
    assert limits["accuracy"] == Threshold(0.05, False)
    assert limits["throughput"] == Threshold(2.0, True)


@pytest.mark.parametrize("text,message", [
    ("memroy:5%", "did you mean 'memory'"),
    ("memory", "expected AREA:LIMIT"),
    ("memory:five%", "expected 'N%' \\(relative\\) or a plain number"),
    ("accuracy:-0.1", "at least 0"),
])
def test_bad_thresholds_are_user_errors(base: dict, text: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        thresholds_for(base, [text])


def test_which_metrics_are_gated() -> None:
    assert gated("memory/policy/peak_bytes") == "memory"
    assert gated("memory/reference/weights_bytes") == "memory"
    assert gated("memory/process_peak_bytes") == "memory"
    assert gated("throughput/gen_tokens_per_s") == "throughput"
    assert gated("time/step_s") == "throughput"
    assert gated("time/generate_s") is None
    assert gated("eval/accuracy") == "accuracy"
    assert gated("eval/format_rate") is None
    assert gated("learning/entropy") is None


def test_unchanged_report_passes(base: dict, thresholds: dict[str, Threshold]) -> None:
    result = check_reports(copy.deepcopy(base), base, thresholds)
    assert result.ok
    assert result.regressions == [] and result.improvements == []
    assert result.runs == ["grpo_zero/seed0", "ppo_rules/seed0"]
    # grpo_zero: 2 roles x 5 static figures (weights, master, gradients, optimizer, total) + 2 role
    # anonymous peaks + the process's (its rise is shown, not gated); ppo_rules: 3 x 5 + 3 + 1;
    # each: 5 gated throughput/* (completions, tokens, generated and trained tokens per s, FLOPs per
    # s; MFU is shown, not gated: rlbench/report/gate.py) + time/step_s, eval/accuracy, and the 6 work counts fixed-length rollouts fix (steps,
    # completions, prompts, generated and trained tokens, FLOPs); each also its training and
    # evaluation anonymous peaks (2, derived on reading: rlbench/report/peaks.py).
    assert result.metrics_compared == (10 + 3 + 6 + 1 + 6 + 2) + (15 + 4 + 6 + 1 + 6 + 2)


def test_policy_peak_raised_20_percent_fails_and_names_metric_and_run(base: dict, thresholds) -> None:
    new = copy.deepcopy(base)
    peak = _metric(new, "ppo_rules/seed0", "memory/policy/anon_peak_bytes")
    peak["value"] = int(peak["value"] * 1.2)  # +20% against a 2% threshold
    result = check_reports(new, base, thresholds)
    assert not result.ok
    [finding] = result.regressions
    assert (finding.run, finding.metric, finding.threshold) == ("ppo_rules/seed0", "memory/policy/anon_peak_bytes",
                                                                "2%")
    assert finding.relative_delta == pytest.approx(0.2, abs=1e-6)
    assert "ppo_rules/seed0: memory/policy/anon_peak_bytes" in finding.describe()
    assert result.improvements == []


def test_memory_rise_within_threshold_passes(base: dict, thresholds) -> None:
    new = copy.deepcopy(base)
    peak = _metric(new, "grpo_zero/seed0", "memory/policy/peak_bytes")
    peak["value"] = int(peak["value"] * 1.019)  # +1.9% < 2%
    assert check_reports(new, base, thresholds).ok


def test_accuracy_fall_of_5_standard_errors_fails(base: dict, thresholds) -> None:
    # Baseline 40% on 64 problems: se = sqrt(0.4 * 0.6 / 64) = 0.0612. Five of them lower: 9.4%,
    # se = sqrt(0.094 * 0.906 / 64) = 0.0365; combined se = sqrt(0.0612^2 + 0.0365^2) = 0.0713.
    # A fall of 0.306 is beyond both the 0.02 threshold and the combined se: a regression.
    baseline, new = copy.deepcopy(base), copy.deepcopy(base)
    _set_accuracy(baseline, "grpo_zero/seed0", 0.40)
    _set_accuracy(new, "grpo_zero/seed0", 0.40 - 5 * standard_error(0.40, 64))
    result = check_reports(new, baseline, thresholds)
    [finding] = result.regressions
    assert (finding.run, finding.metric) == ("grpo_zero/seed0", "eval/accuracy")
    assert finding.delta == pytest.approx(-0.306, abs=1e-3)
    assert "combined standard error 0.0713" in finding.describe()


def test_accuracy_fall_within_the_combined_standard_error_passes(base: dict, thresholds) -> None:
    # 40% -> 35% on 64 problems: a fall of 0.05 is beyond the 0.02 threshold, but the combined se is
    # sqrt(0.0612^2 + 0.0596^2) = 0.0855: noise, never a failure.
    baseline, new = copy.deepcopy(base), copy.deepcopy(base)
    _set_accuracy(baseline, "grpo_zero/seed0", 0.40)
    _set_accuracy(new, "grpo_zero/seed0", 0.35)
    assert check_reports(new, baseline, thresholds).ok


def test_every_regression_and_improvement_is_listed(base: dict, thresholds) -> None:
    new = copy.deepcopy(base)
    # Relative thresholds are ratios of the worse value to the better one (throughput 200%: 3x).
    _metric(new, "grpo_zero/seed0", "time/step_s")["value"] *= 3.5  # 3.5x as long > 3x: regression
    _metric(new, "ppo_rules/seed0", "throughput/gen_tokens_per_s")["value"] *= 0.3  # 3.3x lower: regression
    _metric(new, "ppo_rules/seed0", "memory/value/optimizer_bytes")["value"] //= 2  # 2x smaller > 2%: improvement
    _metric(new, "ppo_rules/seed0", "throughput/completions_per_s")["value"] *= 2.9  # 2.9x < 3x: neither
    _metric(new, "ppo_rules/seed0", "time/step_s")["value"] *= 0.35  # 1/0.35 = 2.86x faster < 3x: neither
    _metric(new, "ppo_rules/seed0", "learning/entropy")["value"] *= 10  # no direction: never gated
    result = check_reports(new, base, thresholds)
    assert sorted((f.run, f.metric) for f in result.regressions) == [
        ("grpo_zero/seed0", "time/step_s"), ("ppo_rules/seed0", "throughput/gen_tokens_per_s")]
    assert [(f.run, f.metric) for f in result.improvements] == [("ppo_rules/seed0", "memory/value/optimizer_bytes")]


@pytest.mark.parametrize("base_value,new_value,higher,verdict", [
    (100.0, 200.0, False, 0),    # a time doubled: 200 / 100 - 1 = 1.0, not beyond the limit 1.0
    (100.0, 201.0, False, 1),    # 1.01 beyond it
    (100.0, 49.0, True, 1),      # a rate fell to 0.49: 2.04x worse
    (100.0, 51.0, True, 0),      # 1.96x worse
    (100.0, 250.0, True, -1),    # a rate 2.5x higher: improvement
    (0.0, 0.0, False, 0),
    (10.0, 0.0, False, -1),      # memory gone: infinitely better
    (10.0, 0.0, True, 1),        # a rate gone: infinitely worse
])
def test_relative_thresholds_are_ratios(base_value, new_value, higher, verdict) -> None:
    assert exceeds(Threshold(1.0, True), base_value, new_value, higher) == verdict


def test_absolute_thresholds_are_differences() -> None:
    # accuracy 0.30 -> 0.28: a fall of 0.02, beyond 0.01; 0.30 -> 0.295 is not
    assert exceeds(Threshold(0.01, False), 0.30, 0.28, True) == 1
    assert exceeds(Threshold(0.01, False), 0.30, 0.295, True) == 0
    assert exceeds(Threshold(0.01, False), 0.30, 0.32, True) == -1


def test_memory_from_zero_is_a_regression(base: dict, thresholds) -> None:
    """The reference holds no gradients; any now is a regression even though +x% of 0 is undefined."""
    new = copy.deepcopy(base)
    _metric(new, "grpo_zero/seed0", "memory/reference/gradients_bytes")["value"] = 4096
    [finding] = check_reports(new, base, thresholds).regressions
    assert finding.metric == "memory/reference/gradients_bytes" and finding.relative_delta is None


def test_metric_without_direction_is_never_gated(base: dict, thresholds) -> None:
    new = copy.deepcopy(base)
    metric = _metric(new, "grpo_zero/seed0", "memory/policy/peak_bytes")
    baseline = copy.deepcopy(base)
    _metric(baseline, "grpo_zero/seed0", "memory/policy/peak_bytes")["higher_is_better"] = None
    metric["value"] *= 3
    assert check_reports(new, baseline, thresholds).ok


def test_run_that_failed_in_the_new_report_is_a_regression(base: dict, thresholds) -> None:
    failed = load_report(REPORTS / "ci_failed_run.json")
    result = check_reports(failed, base, thresholds)
    status = [f for f in result.regressions if f.metric == "status"]
    assert [f.run for f in status] == ["grpo_zero/seed0"]
    assert "status failed" in status[0].describe() and "was ok in the baseline" in status[0].describe()
    # and the other way round it is an improvement, with the failed run's metrics left unchecked
    reverse = check_reports(base, failed, thresholds)
    assert [(f.run, f.metric) for f in reverse.improvements if f.metric == "status"] == [("grpo_zero/seed0", "status")]
    assert any("not ok in the baseline" in n for n in reverse.notes)


def test_no_common_runs_is_a_user_error(base: dict, thresholds) -> None:
    new = copy.deepcopy(base)
    for run in new["runs"]:
        run["seed"] = 7
    with pytest.raises(UserError, match="no runs in common"):
        check_reports(new, base, thresholds)


def _console() -> Console:
    return Console(record=True, width=220, color_system=None)


def test_check_command_exit_codes_and_output(tmp_path: Path) -> None:
    report = json.loads(V2.read_text())
    peak = _metric(report, "ppo_rules/seed0", "memory/policy/anon_peak_bytes")
    peak["value"] = int(peak["value"] * 1.2)
    raised = tmp_path / "raised.json"
    raised.write_text(json.dumps(report))

    console = _console()
    assert check_command(str(V2), str(V2), [], console) == 0
    assert "ok: no regression" in console.export_text()

    console = _console()
    assert check_command(str(raised), str(V2), [], console) == 1
    text = console.export_text()
    assert "ppo_rules/seed0" in text and "memory/policy/anon_peak_bytes" in text and "+20.0%" in text
    assert "FAIL: 1 regression(s)" in text

    console = _console()
    assert check_command(str(raised), str(V2), ["memory:25%"], console) == 0
    assert "thresholds: memory 25%, throughput 200%, accuracy 0.02" in console.export_text()


def test_cli_exits_2_on_unusable_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["check", str(tmp_path / "missing.json"), "--baseline", str(REPORTS / "ci_ok.json")]) == 2
    assert "no such report" in capsys.readouterr().err
    assert main(["check", str(REPORTS / "ci_ok.json"), "--baseline", str(REPORTS / "ci_ok.json"),
                 "--threshold", "speed:5%"]) == 2
    assert main(["check", str(REPORTS / "ci_failed_run.json"), "--baseline", str(REPORTS / "ci_ok.json")]) == 1


# ---- accuracy within noise, memory gated on anonymous figures, and agreement with compare ----------


def test_accuracy_within_noise_is_listed_with_its_noise_level(base: dict, thresholds) -> None:
    # 40% -> 35% on 64 problems (as above): combined se 0.0855, so "within noise", listed, not dropped.
    baseline, new = copy.deepcopy(base), copy.deepcopy(base)
    _set_accuracy(baseline, "grpo_zero/seed0", 0.40)
    _set_accuracy(new, "grpo_zero/seed0", 0.35)
    result = check_reports(new, baseline, thresholds)
    [finding] = result.unflagged
    assert (finding.run, finding.metric, finding.label) == ("grpo_zero/seed0", "eval/accuracy", "within noise")
    assert finding.note == "combined standard error 0.0855"
    assert result.ok and result.regressions == []


def test_check_command_prints_accuracy_within_noise(tmp_path: Path) -> None:
    baseline, new = load_report(V2), load_report(V2)
    _set_accuracy(baseline, "grpo_zero/seed0", 0.40)
    _set_accuracy(new, "grpo_zero/seed0", 0.35)
    (tmp_path / "base.json").write_text(json.dumps(baseline))
    (tmp_path / "new.json").write_text(json.dumps(new))
    console = _console()
    assert check_command(str(tmp_path / "new.json"), str(tmp_path / "base.json"), [], console) == 0
    text = console.export_text()
    line = next(line for line in text.splitlines() if "eval/accuracy" in line)
    assert "within noise" in line and "combined standard error 0.0855" in line and "-5.0 pts" in line


ANON = V2  # has anonymous figures (and a hardware class, so its peaks are gated against a copy of itself)


def _scaled(report: dict, run_id: str, name: str, factor: float) -> dict:
    new = copy.deepcopy(report)
    metric = _metric(new, run_id, name)
    metric["value"] = int(metric["value"] * factor)
    return new


def test_memory_kinds() -> None:
    assert memory_kind("memory/process_peak_bytes") == "total"
    assert memory_kind("memory/policy/peak_bytes") == "total"
    assert memory_kind("memory/process_anon_peak_bytes") == "anon"
    assert memory_kind("memory/process_anon_rise_bytes") == "anon"
    assert memory_kind("memory/value/anon_peak_bytes") == "anon"
    assert memory_kind("memory/policy/optimizer_bytes") is None  # static: always gated
    assert memory_kind("time/step_s") is None


def test_anon_gate_ignores_a_total_rise_and_fails_an_anonymous_one() -> None:
    base = load_report(ANON)
    limits = thresholds_for(base, [])
    total_up = _scaled(base, "ppo_rules/seed0", "memory/process_peak_bytes", 1.14)  # file pages: +14%
    result = check_reports(total_up, base, limits)
    assert result.ok and result.memory_gates == {"grpo_zero/seed0": "anon", "ppo_rules/seed0": "anon"}
    shown = {(f.run, f.metric): f.label for f in result.not_gated}
    assert shown[("ppo_rules/seed0", "memory/process_peak_bytes")] == "worse"
    assert shown[("grpo_zero/seed0", "memory/process_peak_bytes")] == "unchanged"
    # the same report gated on total RSS fails
    [finding] = check_reports(total_up, base, limits, memory_gate="total").regressions
    assert (finding.run, finding.metric) == ("ppo_rules/seed0", "memory/process_peak_bytes")

    anon_up = _scaled(base, "grpo_zero/seed0", "memory/process_anon_peak_bytes", 1.10)
    [finding] = check_reports(anon_up, base, limits).regressions
    assert (finding.run, finding.metric) == ("grpo_zero/seed0", "memory/process_anon_peak_bytes")
    total = check_reports(anon_up, base, limits, memory_gate="total")
    assert total.ok and ("grpo_zero/seed0", "memory/process_anon_peak_bytes") in {
        (f.run, f.metric) for f in total.not_gated}
    # the rise above the baseline is shown, never gated (see SHOWN_NOT_GATED)
    rise_up = _scaled(base, "grpo_zero/seed0", "memory/process_anon_rise_bytes", 1.10)
    result = check_reports(rise_up, base, limits)
    assert result.ok and {(f.metric, f.label) for f in result.not_gated if f.run == "grpo_zero/seed0"} >= {
        ("memory/process_anon_rise_bytes", "worse")}


def test_a_baseline_without_anonymous_figures_falls_back_to_total_with_a_note() -> None:
    # ci_ok.json was written before the anonymous figures existed (ci_anon.json, same schema, has them).
    new, base = load_report(REPORTS / "ci_anon.json"), load_report(REPORTS / "ci_ok.json")
    result = check_reports(new, base, thresholds_for(base, []))
    assert result.memory_gates == {"grpo_zero/seed0": "total", "ppo_rules/seed0": "total"}
    assert "ppo_rules/seed0: no anonymous-memory figures in the baseline: memory peaks gated on total RSS " \
           "(file-backed pages included)" in result.notes
    assert not result.not_gated  # the baseline has no anonymous figures to show against


def test_check_command_names_the_memory_gate(tmp_path: Path) -> None:
    base = load_report(ANON)
    (tmp_path / "new.json").write_text(json.dumps(_scaled(base, "ppo_rules/seed0", "memory/process_peak_bytes", 1.14)))
    console = _console()
    assert check_command(str(tmp_path / "new.json"), str(ANON), [], console) == 0
    text = console.export_text()
    assert "memory peaks gated: anonymous (RssAnon)" in text
    assert "memory peaks not gated" in text and "+14.0%" in text
    console = _console()
    assert check_command(str(tmp_path / "new.json"), str(ANON), [], console, gate_memory="total") == 1
    assert "memory peaks gated: total (RSS or device)" in console.export_text()


@pytest.mark.parametrize("change", [
    ("eval/accuracy", 0.35, 0.40),  # within noise
    ("eval/accuracy", 0.05, 0.40),  # worse beyond noise and threshold
    ("memory/process_anon_peak_bytes", 1.05, None),
    ("memory/process_peak_bytes", 0.99, None),
    ("time/step_s", 2.5, None),
    ("throughput/gen_tokens_per_s", 3.5, None),
])
def test_check_and_compare_give_the_same_label_to_every_gated_change(change) -> None:
    from rlbench.report.compare import Selection, compare_reports, metric_label

    name, value, base_accuracy = change
    base = load_report(ANON)
    new = copy.deepcopy(base)
    if base_accuracy is not None:
        for report, accuracy in ((base, base_accuracy), (new, value)):
            _set_accuracy(report, "grpo_zero/seed0", accuracy, n=16)
    else:
        new = _scaled(base, "grpo_zero/seed0", name, value)
    result = check_reports(new, base, thresholds_for(base, []))
    by_check = {(f.run, f.metric): f.label or "worse" for f in
                result.regressions + result.improvements + result.unflagged + result.not_gated}
    comparison = compare_reports([base, new], ["base", "new"], Selection(all=True))
    by_compare = {}
    for section in comparison.sections:
        for block in section.blocks:
            for row in block.rows:
                by_compare[(block.run, row[0].text)] = row[-1].text.split(" ", 1)[-1] if row[-1].text != "=" else "unchanged"
    assert by_check, "the change must be reported by check"
    for (run, metric), label in by_check.items():
        assert by_compare[(run, metric_label(metric))] == label, (run, metric)


def test_a_finding_with_one_side_missing_has_no_change():
    # a metric new since the new report's schema: the baseline's value, none in the new report
    only_base = Finding("r/seed0", "memory/policy/anon_peak_bytes", 1024.0, None, "-", "bytes", note="not compared")
    only_new = Finding("r/seed0", "eval/accuracy", None, 0.5, "-")
    assert only_base.delta is None and only_base.relative_delta is None
    assert only_new.delta is None and only_new.relative_delta is None
    assert Finding("r/seed0", "time/step_s", 2.0, 3.0, "10%").delta == 1.0  # both sides: new - base


def test_a_run_only_in_the_new_report_is_noted_and_the_matched_ones_are_not(base: dict, thresholds) -> None:
    baseline = copy.deepcopy(base)
    extra = baseline["runs"].pop()  # the new report has a run the baseline lacks
    result = check_reports(base, baseline, thresholds)
    only_new = [note for note in result.notes if "only in the new report" in note]
    assert only_new == [f"{extra['id']}: only in the new report, not checked"]
    assert result.runs == [r["id"] for r in baseline["runs"]]


def test_a_figure_zero_on_both_sides_is_unchanged_and_one_from_zero_infinitely_worse() -> None:
    assert worse_factor(0.0, 0.0, True) == worse_factor(0.0, 0.0, False) == 1.0
    assert worse_factor(0.0, 2.0, False) == math.inf  # a time from 0 s to 2 s
    assert exceeds(Threshold(0.05, True), 0.0, 0.0, True) == 0
