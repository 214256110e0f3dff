"""`rlbench check` compares like with like: machine-independent figures everywhere, machine-bound
ones only against a baseline of the same hardware class (rlbench/report/machine.py).

The fixture is a real report of `rlbench run suites/ci.yaml --set budget.steps=1 --set eval.size=16
--set rollout.ignore_eos=true` (schema 2, with the fingerprint; ignore_eos makes every completion run
to max_new_tokens, so its token and FLOP counts are fixed by the settings). "Another machine" is a
copy whose environment names another hardware class, as a report from the Intel AMX machine would.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from rich.console import Console

from rlbench.cli import main
from rlbench.report.check import check_command, check_reports, thresholds_for
from rlbench.report.compare import Selection, compare_reports
from rlbench.report.machine import fixed_work, hardware_difference, machine_independent
from rlbench.report.schema import load_report

REPORTS = Path(__file__).parent / "fixtures" / "reports"
V2 = REPORTS / "ci_v2.json"
OTHER_CLASS = "cpu-intel-xeon-amx"


@pytest.fixture
def base() -> dict:
    return load_report(V2)


def _metric(report: dict, run_id: str, name: str) -> dict:
    return next(r for r in report["runs"] if r["id"] == run_id)["metrics"][name]


def _on_other_hardware(report: dict) -> dict:
    other = copy.deepcopy(report)
    other["environment"]["hardware_class"] = OTHER_CLASS
    other["environment"]["cpu"] = "Intel(R) Xeon(R) Processor"
    return other


def test_the_fixture_records_its_machine(base: dict) -> None:
    env = base["environment"]
    assert base["schema_version"] == 2 and env["hardware_class"].startswith("cpu-")
    assert env["cpu_capability"] and isinstance(env["cpu_features"], list) and env["ram_bytes"] > 0
    for run in base["runs"]:
        assert run["mfu_peak"]["dtype"] == "fp32" and run["mfu_peak"]["source"] == "measured"


def test_which_metrics_are_machine_independent() -> None:
    for name in ("memory/policy/weights_bytes", "memory/value/optimizer_bytes", "memory/policy/master_bytes",
                 "memory/reference/total_bytes", "budget/flops", "budget/tokens_generated"):
        assert machine_independent(name), name
    for name in ("memory/policy/peak_bytes", "memory/policy/anon_peak_bytes", "memory/process_peak_bytes",
                 "memory/process_anon_peak_bytes", "time/step_s", "throughput/gen_tokens_per_s", "throughput/mfu",
                 "eval/accuracy"):
        assert not machine_independent(name), name


def test_fixed_work_needs_a_step_budget_and_fixed_lengths(base: dict) -> None:
    run, suite = base["runs"][0], base["suite"]
    budget = run["budget"]
    assert budget["tokens_generated"] == budget["completions"] * suite["rollout"]["max_new_tokens"]  # ignore_eos
    assert set(fixed_work(run, suite)) == {"budget/steps", "budget/completions", "budget/prompts",
                                           "budget/tokens_generated", "budget/tokens_trained", "budget/flops"}
    # completions that stop at EOS: their lengths follow the sampled tokens, so the floats
    varied = dict(run, budget=dict(budget, tokens_generated=budget["tokens_generated"] - 1))
    assert set(fixed_work(varied, suite)) == {"budget/steps", "budget/completions", "budget/prompts"}
    # a run stopped by the clock did as much work as the machine's speed allowed
    assert fixed_work(dict(run, stopped_by="wall_seconds"), suite) == {}


def test_against_another_class_machine_bound_figures_are_listed_not_gated(base: dict) -> None:
    new = _on_other_hardware(base)
    _metric(new, "grpo_zero/seed0", "time/step_s")["value"] *= 5  # a slower machine
    _metric(new, "ppo_rules/seed0", "memory/process_anon_peak_bytes")["value"] *= 2
    _metric(new, "ppo_rules/seed0", "eval/accuracy")["value"] = 0.0
    result = check_reports(new, base, thresholds_for(base, []))
    assert result.ok, [f.describe() for f in result.regressions]
    assert result.hardware == f"{base['environment']['hardware_class']} in the baseline, {OTHER_CLASS} in the new report"
    listed = {(f.run, f.metric) for f in result.not_comparable}
    assert {("grpo_zero/seed0", "time/step_s"), ("ppo_rules/seed0", "memory/process_anon_peak_bytes"),
            ("ppo_rules/seed0", "eval/accuracy")} <= listed
    assert all(f.label == "not comparable" for f in result.not_comparable)
    # static bytes are gated against any machine
    _metric(new, "ppo_rules/seed0", "memory/value/optimizer_bytes")["value"] *= 2
    [finding] = check_reports(new, base, thresholds_for(base, [])).regressions
    assert (finding.run, finding.metric) == ("ppo_rules/seed0", "memory/value/optimizer_bytes")


def test_the_same_class_gates_machine_bound_figures(base: dict) -> None:
    new = copy.deepcopy(base)
    _metric(new, "grpo_zero/seed0", "time/step_s")["value"] *= 5
    [finding] = check_reports(new, base, thresholds_for(base, [])).regressions
    assert (finding.run, finding.metric) == ("grpo_zero/seed0", "time/step_s")


def test_a_fixed_work_count_that_changed_is_a_regression_on_any_machine(base: dict) -> None:
    new = _on_other_hardware(base)
    new["runs"][1]["budget"]["flops"] += 1
    result = check_reports(new, base, thresholds_for(base, []))
    [finding] = result.regressions
    assert (finding.run, finding.metric, finding.threshold) == ("ppo_rules/seed0", "budget/flops", "equal")
    assert "the same on every machine" in finding.describe()


def test_other_torch_threads_or_no_recorded_class_are_not_comparable(base: dict) -> None:
    threads = copy.deepcopy(base)
    threads["environment"]["torch_threads"] = base["environment"]["torch_threads"] + 14
    assert "torch threads" in hardware_difference(threads, base)
    old = load_report(REPORTS / "ci_anon.json")  # schema 1: no fingerprint
    assert hardware_difference(base, old) == "the baseline records no hardware class (written before schema 2)"


def _console() -> Console:
    return Console(record=True, width=250, color_system=None)


def test_check_names_the_difference_and_require_same_hardware_exits_2(tmp_path: Path, base: dict,
                                                                      capsys: pytest.CaptureFixture) -> None:
    new = _on_other_hardware(base)
    _metric(new, "grpo_zero/seed0", "time/step_s")["value"] *= 5
    (tmp_path / "new.json").write_text(json.dumps(new))
    console = _console()
    assert check_command(str(tmp_path / "new.json"), str(V2), [], console) == 0
    text = console.export_text()
    assert f"not comparable: hardware differs ({base['environment']['hardware_class']} in the baseline, " \
           f"{OTHER_CLASS} in the new report)" in text
    assert f"new:      {OTHER_CLASS}: Intel(R) Xeon(R) Processor" in text
    assert "ok: no regression (0 improvement(s)) among the machine-independent metrics" in text
    capsys.readouterr()
    assert main(["check", str(tmp_path / "new.json"), "--baseline", str(V2), "--require-same-hardware"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ran on different hardware" in err and OTHER_CLASS in err
    assert main(["check", str(V2), "--baseline", str(V2), "--require-same-hardware"]) == 0


def test_compare_labels_machine_bound_changes_from_other_hardware_not_comparable(base: dict) -> None:
    new = _on_other_hardware(base)
    _metric(new, "grpo_zero/seed0", "time/step_s")["value"] *= 5
    comparison = compare_reports([base, new], ["base", "new"], Selection(all=True))
    rows = {(b.run, row[0].text): row[-1].text for s in comparison.sections for b in s.blocks for row in b.rows}
    assert rows[("grpo_zero/seed0", "time/step_s")] == "↑ not comparable"
    assert any(kind == "warning" and OTHER_CLASS in line for line, kind in comparison.mismatch_lines())
    assert comparison.machines[1].startswith(f"{OTHER_CLASS}: ")
    assert comparison.rows_changed == 0  # nothing comparable changed


def test_a_key_only_the_newer_schema_has_is_new_not_missing(base: dict) -> None:
    """ci_ok.json (schema 1) predates master_bytes; the schema-2 baseline has it."""
    old = load_report(REPORTS / "ci_ok.json")
    assert "memory/policy/master_bytes" not in old["runs"][0]["metrics"]
    assert "memory/policy/master_bytes" in base["runs"][0]["metrics"]
    result = check_reports(old, base, thresholds_for(base, []))
    assert not [f for f in result.regressions if f.metric.endswith("master_bytes")]
    assert "grpo_zero/seed0: memory/policy/master_bytes: new since the new report's schema 1, not compared" \
           in result.notes
    comparison = compare_reports([old, base], ["old", "new"], Selection(changed=True, metrics=("*master_bytes",)))
    assert comparison.sections == []  # shown only when asked for, never as a change


def test_mfu_is_shown_not_gated_while_the_flop_rate_is(base: dict) -> None:
    # A peak measured on a busy machine gave MFU 97% where a quiet one gives 14%: the peak is a
    # measurement of the machine, so MFU is not gated; the model FLOP rate of the same work is.
    new = copy.deepcopy(base)
    run_id = new["runs"][0]["id"]
    _metric(new, run_id, "throughput/mfu")["value"] = _metric(base, run_id, "throughput/mfu")["value"] / 10
    result = check_reports(new, base, thresholds_for(base, []))
    assert result.ok and result.regressions == []
    _metric(new, run_id, "throughput/model_flops_per_s")["value"] = \
        _metric(base, run_id, "throughput/model_flops_per_s")["value"] / 10
    [finding] = check_reports(new, base, thresholds_for(base, [])).regressions
    assert finding.metric == "throughput/model_flops_per_s"
