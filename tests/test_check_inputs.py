"""What `check` and `compare` do with input no run could produce, and the gate's exact boundaries.

- Noise is never read from the report under test (a standard error of 1e15 or 10 once let tripled
  memory and an accuracy fall from 90% to 0% pass); negative or absurd standard errors are
  unusable input (exit 2).
- Impossible figures (negative memory, time or rate; a zero peak) are unusable input, exit 2 with
  one line, in `check` and `compare`; so are units that differ (MiB against bytes).
- A report that is not UTF-8 or nests 100,000 brackets deep: one line and exit 2 in `report`,
  `compare`, `check`, `export` and `run --resume`.
- Boundaries worked out exactly in binary floating point: a change equal to the threshold or to
  the noise is within it.

Each case changes a copy of a real report (tests/fixtures/reports/ci_v2.json, see
test_check_hardware.py) and goes through the CLI where the exit code is the point.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest

from rlbench.cli import main
from rlbench.errors import UserError
from rlbench.report.check import Threshold, check_reports, exceeds, judge, noise_level, thresholds_for
from rlbench.report.gate import problem_count
from rlbench.report.schema import MAX_DEPTH, load_report

REPORTS = Path(__file__).parent / "fixtures" / "reports"
V2 = REPORTS / "ci_v2.json"
GRPO, PPO = "grpo_zero/seed0", "ppo_rules/seed0"


@pytest.fixture
def base() -> dict:
    return load_report(V2)


def _metrics(report: dict, run_id: str) -> dict:
    return next(r for r in report["runs"] if r["id"] == run_id)["metrics"]


def _cli(tmp_path: Path, capsys, command: str, new: dict | str, *extra: str) -> tuple[int, list[str]]:
    path = tmp_path / "new.json"
    if isinstance(new, str):
        path.write_text(new)
    else:
        path.write_text(json.dumps(new))
    args = {"check": ["check", str(path), "--baseline", str(V2)], "compare": ["compare", str(V2), str(path)]}[command]
    capsys.readouterr()
    code = main([*args, *extra])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.err.strip().splitlines()


# ---- D6: noise from the baseline, never from the report under test ------------------------------


@pytest.mark.parametrize("on_baseline", [False, True])
def test_tripled_memory_with_a_huge_stderr_is_a_regression(tmp_path, capsys, base, on_baseline) -> None:
    new = copy.deepcopy(base)
    for run in new["runs"]:
        for name, metric in run["metrics"].items():
            if name.startswith("memory/"):
                metric["value"] *= 3
                metric["stderr"] = 1e15  # memory is measured, not estimated: no noise applies
    if on_baseline:
        baseline = copy.deepcopy(base)
        for run in baseline["runs"]:
            for name, metric in run["metrics"].items():
                if name.startswith("memory/"):
                    metric["stderr"] = 1e15
        result = check_reports(new, baseline, thresholds_for(base, []))
    else:
        code, _ = _cli(tmp_path, capsys, "check", new)
        assert code == 1
        result = check_reports(new, base, thresholds_for(base, []))
    assert not result.ok and all(f.metric.startswith("memory/") for f in result.regressions)


def _accuracy(report: dict, value: float, stderr: float | None) -> dict:
    metric = _metrics(report, GRPO)["eval/accuracy"]
    metric["value"] = value
    if stderr is None:
        metric.pop("stderr", None)
    else:
        metric["stderr"] = stderr
    return report


@pytest.mark.parametrize("stderr", [10.0, -10.0, float("nan")])
def test_an_impossible_stderr_is_unusable_input(tmp_path, capsys, base, stderr) -> None:
    code, lines = _cli(tmp_path, capsys, "check", _accuracy(copy.deepcopy(base), 0.0, stderr))
    assert code == 2 and len(lines) == 1
    assert f"{GRPO}: eval/accuracy" in lines[0] and "standard error" in lines[0]


def test_a_plausible_but_inflated_stderr_in_the_new_report_is_ignored(base) -> None:
    # Baseline 90% on 16 problems with its own standard error sqrt(0.9 * 0.1 / 16) = 0.075. The new
    # report claims 0% with a standard error of 0.5: that figure is not used. The new side's error
    # is recomputed: sqrt(0 * 1 / 16) = 0, so the noise is 0.075 and the fall of 0.9 a regression.
    baseline = _accuracy(copy.deepcopy(base), 0.9, 0.075)
    new = _accuracy(copy.deepcopy(base), 0.0, 0.5)
    result = check_reports(new, baseline, thresholds_for(base, []))
    [finding] = result.regressions
    assert (finding.run, finding.metric) == (GRPO, "eval/accuracy")
    assert finding.note == "combined standard error 0.075"


# ---- D7: impossible figures are unusable input -----------------------------------------------------


@pytest.mark.parametrize("run_id,name,value,why", [
    (PPO, "memory/policy/weights_bytes", -4096, "a memory figure below 0"),
    (GRPO, "memory/process_anon_peak_bytes", 0, "a measured peak of 0 bytes"),
    (GRPO, "memory/policy/peak_bytes", 0, "a measured peak of 0 bytes"),
    (GRPO, "time/step_s", -50.0, "a time below 0"),
    (PPO, "throughput/gen_tokens_per_s", -1e9, "a rate below 0"),
    (GRPO, "eval/accuracy", 1.5, "a fraction outside [0, 1]"),
])
@pytest.mark.parametrize("command", ["check", "compare"])
def test_impossible_figures_exit_2_with_one_line(tmp_path, capsys, base, run_id, name, value, why, command) -> None:
    new = copy.deepcopy(base)
    _metrics(new, run_id)[name]["value"] = value
    code, lines = _cli(tmp_path, capsys, command, new)
    assert code == 2 and len(lines) == 1
    assert f"{run_id}: {name} = {value!r}" in lines[0] and why in lines[0]


def test_a_negative_work_count_is_unusable(base) -> None:
    new = copy.deepcopy(base)
    new["runs"][0]["budget"]["tokens_generated"] = -1
    with pytest.raises(UserError, match="budget.tokens_generated = -1: a count below 0"):
        check_reports(new, base, thresholds_for(base, []))


def test_a_zero_static_figure_and_a_negative_change_are_possible(base) -> None:
    # the reference holds no gradients; accuracy may fall: both are real figures
    assert _metrics(base, GRPO)["memory/reference/gradients_bytes"]["value"] == 0
    new = copy.deepcopy(base)
    _metrics(new, GRPO)["eval/accuracy_delta"]["value"] = -0.5
    check_reports(new, base, thresholds_for(base, []))


# ---- D8: units -------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["check", "compare"])
def test_a_report_in_mib_is_refused_not_read_as_improvements(tmp_path, capsys, base, command) -> None:
    new = copy.deepcopy(base)
    for run in new["runs"]:
        for name, metric in run["metrics"].items():
            if name.startswith("memory/"):
                metric["value"] /= 2**20
                metric["unit"] = "MiB"
    code, lines = _cli(tmp_path, capsys, command, new)
    assert code == 2 and len(lines) == 1
    assert "'MiB'" in lines[0] and "'bytes'" in lines[0]


def test_a_gated_metric_in_a_unit_rlbench_does_not_write_is_refused(base) -> None:
    new, baseline = copy.deepcopy(base), copy.deepcopy(base)
    for report in (new, baseline):  # the same wrong unit on both sides
        _metrics(report, PPO)["time/step_s"]["unit"] = "ms"
    with pytest.raises(UserError, match="time/step_s .*unit 'ms', where rlbench writes 's'"):
        check_reports(new, baseline, thresholds_for(base, []))


# ---- D9: unreadable reports --------------------------------------------------------------------------


BAD = {"not UTF-8": b'{"schema_version": 2, "suite": "\xff\xfe"}', "deeply nested": b"[" * 100_000 + b"]" * 100_000,
       "nested past the limit": b'{"a": ' + b"[" * (MAX_DEPTH + 5) + b"]" * (MAX_DEPTH + 5) + b"}"}


@pytest.mark.parametrize("kind", list(BAD))
@pytest.mark.parametrize("command", ["report", "compare", "check", "export", "resume"])
def test_an_unreadable_report_is_one_line_and_exit_2(tmp_path, capsys, kind, command) -> None:
    folder = tmp_path / "results" / "ci" / "20260101T000000Z"
    folder.mkdir(parents=True)
    path = folder / "report.json"
    path.write_bytes(BAD[kind])
    args = {"report": ["report", str(path)], "compare": ["compare", str(V2), str(path)],
            "check": ["check", str(path), "--baseline", str(V2)],
            "export": ["export", str(path), "--to", "tensorboard"], "resume": ["run", "--resume", str(folder)]}[command]
    capsys.readouterr()
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "not UTF-8" in err[0] if kind == "not UTF-8" else f"deeper than {MAX_DEPTH} levels" in err[0]


# ---- exact boundaries (each would survive a mutant of its comparison) ---------------------------------


def test_an_absolute_threshold_is_not_exceeded_by_a_change_equal_to_it() -> None:
    # 0.5 - 0.25 = 0.25 exactly in binary: a fall equal to the limit is within it, a rise likewise
    limit = Threshold(0.25, relative=False)
    assert exceeds(limit, 0.5, 0.25, higher_is_better=True) == 0
    assert exceeds(limit, 0.5, 0.75, higher_is_better=True) == 0
    assert exceeds(limit, 0.5, 0.25 - 2**-20, higher_is_better=True) == 1
    assert exceeds(limit, 0.5, 0.75 + 2**-20, higher_is_better=True) == -1


def test_a_change_equal_to_the_noise_is_within_noise(base) -> None:
    # 16 problems. Baseline 21/32 = 0.65625 with a (clustered) standard error of 3/32 = 0.09375; new
    # 0.5, whose binomial error is sqrt(0.5 * 0.5 / 16) = 0.125. Noise: sqrt((3/32)^2 + (4/32)^2) = 5/32
    # = 0.15625 (a 3-4-5 triangle: every step exact), and the fall 0.65625 - 0.5 = 0.15625 equals it.
    base_metric = {"value": 21 / 32, "stderr": 3 / 32, "unit": "fraction", "higher_is_better": True}
    new_metric = {"value": 0.5, "stderr": 0.2, "unit": "fraction", "higher_is_better": True}
    noise = noise_level("eval/accuracy", base_metric, new_metric, 16)
    assert noise == 5 / 32
    assert judge(base_metric, new_metric, Threshold(0.01, False), noise) == "within noise"
    assert judge(base_metric, dict(new_metric, value=0.5 - 2**-20), Threshold(0.01, False), noise) == "worse"
    # and through the gate, with the fixture's 16 problems
    baseline, new = copy.deepcopy(base), copy.deepcopy(base)
    _accuracy(baseline, 21 / 32, 3 / 32)
    _accuracy(new, 0.5, None)
    assert _metrics(base, GRPO)["eval/size"]["value"] == 16
    result = check_reports(new, baseline, thresholds_for(base, []))
    assert result.ok and [(f.metric, f.label) for f in result.unflagged] == [("eval/accuracy", "within noise")]


def test_a_measured_figure_has_no_noise_and_a_change_keeps_the_baselines_error() -> None:
    # memory and time are measured, not estimated: no noise, whatever stderr a report attaches
    assert noise_level("time/step_s", {"value": 2.0, "stderr": 0.5, "unit": "s"}, {"value": 2.5}, 16) == 0.0
    assert noise_level("eval/accuracy", {"value": 0.5, "unit": "fraction"}, {"value": 0.25}, 16) == 0.0  # no stderr
    # A change of accuracy (a name ending in _delta) is no proportion, nor is a proportion over an unknown
    # number of problems: the new error is taken equal to the baseline's 3/32, not recomputed from the new
    # value (sqrt(0.25 x 0.75 / 16) = 0.108). Noise sqrt(2) x 3/32 = 0.1326 (a few roundings: 1e-15 relative).
    base_metric = {"value": 0.125, "stderr": 3 / 32, "unit": "fraction", "higher_is_better": True}
    expected = pytest.approx(math.sqrt(2) * 3 / 32, rel=1e-15)
    assert noise_level("eval/accuracy_delta", base_metric, {"value": 0.25}, 16) == expected
    assert noise_level("eval/accuracy", base_metric, {"value": 0.25}, None) == expected
    # judge without a noise level has none: a step 0.5 s slower (25%, over a 10% threshold) is worse
    assert judge({"value": 2.0, "unit": "s", "higher_is_better": False}, {"value": 2.5, "unit": "s"},
                 Threshold(0.1, True)) == "worse"


def test_an_absolute_threshold_on_a_figure_where_lower_is_better() -> None:
    # 0.5 -> 0.75 is a rise of 0.25 exactly (binary fractions): equal to the limit, within it
    limit = Threshold(0.25, relative=False)
    assert exceeds(limit, 0.5, 0.75, higher_is_better=False) == 0
    assert exceeds(limit, 0.5, 0.25, higher_is_better=False) == 0
    assert exceeds(limit, 0.5, 0.75 + 2**-20, higher_is_better=False) == 1
    assert exceeds(limit, 0.5, 0.25 - 2**-20, higher_is_better=False) == -1


def test_unusable_figures_are_named_with_the_report_they_are_in(base) -> None:
    bad = copy.deepcopy(base)
    bad["runs"][0]["budget"]["tokens_generated"] = -1
    with pytest.raises(UserError, match=r"^new\.json: unusable: "):
        check_reports(bad, base, thresholds_for(base, []), names=("new.json", "base.json"))
    with pytest.raises(UserError, match=r"^base\.json: unusable: "):
        check_reports(base, bad, thresholds_for(base, []), names=("new.json", "base.json"))


def test_the_problem_count_is_the_runs_eval_size_else_the_suites() -> None:
    assert problem_count({"metrics": {"eval/size": {"value": 16.0}}}, {"eval": {"size": 64}}) == 16
    assert problem_count({"metrics": {}}, {"eval": {"size": 64}}) == 64
    assert problem_count({"metrics": {"eval/size": {"value": 1.0}}}, {}) == 1  # one problem is a count
    for size in (0.5, math.inf, "16"):  # not a count of problems
        assert problem_count({"metrics": {"eval/size": {"value": size}}}, {}) is None


def test_metrics_that_are_not_gated_are_not_judged(base) -> None:
    # MFU and the per-phase times have a direction but no gate: tripled, they are neither a regression
    # nor an improvement, nor counted among the metrics compared
    new = copy.deepcopy(base)
    for name in ("throughput/mfu", "time/generate_s"):
        _metrics(new, GRPO)[name]["value"] *= 3
    same = check_reports(base, base, thresholds_for(base, []))
    result = check_reports(new, base, thresholds_for(base, []))
    assert result.ok and not result.improvements and result.metrics_compared == same.metrics_compared
    assert not [f for f in result.passed + result.unflagged if f.metric in ("throughput/mfu", "time/generate_s")]


def test_without_eval_size_the_noise_counts_the_suites_problems(base) -> None:
    # as test_a_change_equal_to_the_noise_is_within_noise, with the runs' eval/size removed: the count is
    # the baseline suite's eval.size, 16, and the noise 5/32 again (without a count it would be
    # sqrt(2) x 3/32 = 0.133, and the fall of 0.15625 worse)
    baseline, new = copy.deepcopy(base), copy.deepcopy(base)
    assert baseline["suite"]["eval"]["size"] == 16
    _accuracy(baseline, 21 / 32, 3 / 32)
    _accuracy(new, 0.5, None)
    for report in (baseline, new):
        del _metrics(report, GRPO)["eval/size"]
    result = check_reports(new, baseline, thresholds_for(base, []))
    assert result.ok and [(f.metric, f.label) for f in result.unflagged] == [("eval/accuracy", "within noise")]


def test_a_relative_change_equal_to_the_limit_is_within_it_in_either_direction() -> None:
    # 7 -> 8.4 is 20% more, and 8.4 -> 7 its reverse. 8.4 / 7 rounds to 1.2 exactly, but 7 / 8.4 to
    # 0.8333..., whose reciprocal rounds to 1.2000000000000002: a change equal to the limit must read as
    # within it whichever of the two is the better value.
    limit = Threshold(0.2, relative=True)
    for higher_is_better in (True, False):
        assert exceeds(limit, 7.0, 8.4, higher_is_better) == 0
        assert exceeds(limit, 8.4, 7.0, higher_is_better) == 0
    assert exceeds(limit, 7.0, 8.4 + 2**-40, True) == -1 and exceeds(limit, 7.0, 8.4 + 2**-40, False) == 1
    for higher in (True, False, None):  # and so for judge, with a direction or without one
        assert judge({"value": 7.0, "higher_is_better": higher}, {"value": 8.4}, limit) == "within threshold"
    # 4 -> 5: 5 / 4 - 1 = 0.25 exactly: better or worse by exactly the limit is within it
    limit = Threshold(0.25, relative=True)
    assert exceeds(limit, 4.0, 5.0, True) == exceeds(limit, 4.0, 5.0, False) == 0


def test_memory_peaks_not_gated_are_listed_when_present_and_shown_when_they_matter(base) -> None:
    from rlbench.report.gate import Finding, shown_not_gated

    # gating anonymous peaks, the total ones are listed, not gated; one missing from the new report is not
    new = copy.deepcopy(base)
    del _metrics(new, GRPO)["memory/policy/peak_bytes"]
    result = check_reports(new, base, thresholds_for(base, []))
    listed = {(f.run, f.metric) for f in result.not_gated}
    assert (PPO, "memory/policy/peak_bytes") in listed and (GRPO, "memory/policy/peak_bytes") not in listed
    _metrics(new, PPO)["memory/policy/peak_bytes"]["value"] = math.nan  # nor one no threshold can compare
    assert not [f for f in check_reports(new, base, thresholds_for(base, [])).not_gated
                if f.metric == "memory/policy/peak_bytes"]
    # shown: the process, training and evaluation peaks always, a role's only beyond the threshold
    process = Finding(GRPO, "memory/process_peak_bytes", 1.0, 1.0, "2%", label="unchanged")
    training = Finding(GRPO, "memory/training_peak_bytes", 1.0, 1.0, "2%", label="unchanged")
    worse = Finding(GRPO, "memory/policy/peak_bytes", 1.0, 2.0, "2%", label="worse")
    better = Finding(GRPO, "memory/value/peak_bytes", 2.0, 1.0, "2%", label="better")
    within = Finding(GRPO, "memory/reference/peak_bytes", 1.0, 1.01, "2%", label="within threshold")
    assert shown_not_gated([process, training, worse, better, within]) == [process, training, worse, better]


def test_a_baseline_figure_without_a_direction_or_a_value_is_not_compared(base) -> None:
    """A baseline metric is compared only when it is gated, says which way is better and has a value."""
    compared = check_reports(copy.deepcopy(base), base, thresholds_for(base, [])).metrics_compared
    name = "memory/policy/weights_bytes"
    for key in ("higher_is_better", "value"):
        changed = copy.deepcopy(base)
        _metrics(changed, GRPO)[name][key] = None
        result = check_reports(copy.deepcopy(changed), changed, thresholds_for(changed, []))
        assert result.metrics_compared == compared - 1, key
        assert result.ok
