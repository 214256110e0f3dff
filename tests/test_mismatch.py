"""Settings two reports differ in (rlbench/report/mismatch.py), and what check and compare do with them.

Real saved reports: ci_ok.json and ci_anon.json are runs of suites/ci.yaml (the second with
--set budget.steps=1 --set eval.size=16), three_a.json a run of tests/fixtures/reports/three.yaml,
a different suite on the same embedded model.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from rich.console import Console

from rlbench.cli import main
from rlbench.report.check import check_command
from rlbench.report.compare import compare_command, compare_reports
from rlbench.report.mismatch import Difference, environment_differences, flatten, setting_differences
from rlbench.report.schema import load_report

REPORTS = Path(__file__).parent / "fixtures" / "reports"


def _console() -> Console:
    return Console(record=True, width=250, color_system=None)


def test_flatten_makes_dotted_paths_with_lists_and_empty_blocks_as_leaves() -> None:
    assert flatten({"model": {"sft": {"steps": 40}, "lora": None}, "seeds": [0, 1], "x": {}}) == {
        "model.sft.steps": 40, "model.lora": None, "seeds": [0, 1], "x": {}}


def test_same_suite_has_no_setting_differences() -> None:
    report = load_report(REPORTS / "ci_ok.json")
    assert setting_differences(copy.deepcopy(report), report) == []
    assert environment_differences(copy.deepcopy(report), report) == []


def test_two_runs_of_one_suite_with_overrides_differ_in_exactly_those() -> None:
    # ci_anon.json: suites/ci.yaml with --set budget.steps=1 --set eval.size=16; ci_ok.json: as written.
    new, base = load_report(REPORTS / "ci_anon.json"), load_report(REPORTS / "ci_ok.json")
    assert setting_differences(new, base) == [Difference("budget.steps", 3, 1), Difference("eval.size", 64, 16)]


def test_different_suites_list_model_task_budget_rollout_eval_and_algorithm_params() -> None:
    new, base = load_report(REPORTS / "ci_ok.json"), load_report(REPORTS / "three_a.json")
    found = {d.setting: (d.base, d.new) for d in setting_differences(new, base)}
    assert found["model.sft.steps"] == (150, 40)
    assert found["task.max_number"] == (20, 50)
    assert found["budget.steps"] == (8, 3)
    assert found["rollout.completions_per_step"] == (16, 32)
    assert found["eval.size"] == (32, 64)
    assert found["algorithms[ppo_rules].params.ppo_epochs"] == (1, 2)
    # labels only one suite has (three_a's grpo) are unmatched runs, not setting differences
    assert not [s for s in found if s.startswith("algorithms[grpo]")]
    assert "name" not in found and "check.memory" not in found and not [s for s in found if s.startswith("output")]


def test_dtype_precision_seeds_and_a_filled_block_against_null_differ() -> None:
    base = load_report(REPORTS / "ci_anon.json")
    new = copy.deepcopy(base)
    new["suite"]["model"].update(dtype="bfloat16", precision="bf16-mixed", lora={"rank": 8, "alpha": 16})
    new["suite"]["seeds"] = [0, 1]
    new["suite"]["algorithms"][1]["params"]["lr"] = 1e-5
    found = setting_differences(new, base)
    assert Difference("model.dtype", "float32", "bfloat16") in found
    assert Difference("model.precision", "auto", "bf16-mixed") in found
    assert Difference("model.lora", None, {"rank": 8, "alpha": 16}) in found
    assert Difference("seeds", [0], [0, 1]) in found
    assert Difference("algorithms[ppo_rules].params.lr", 3e-05, 1e-05) in found
    assert len(found) == 5
    assert found[-1].describe() == "algorithms[ppo_rules].params.lr: 3e-05 in the baseline, 1e-05 in the new report"


def test_a_setting_recorded_on_one_side_only_is_not_a_difference() -> None:
    # newer reports record distributed and budget.flops; ci_ok.json predates them.
    base = load_report(REPORTS / "ci_ok.json")
    new = copy.deepcopy(base)
    new["suite"]["distributed"] = None
    new["suite"]["budget"]["flops"] = None
    assert setting_differences(new, base) == []


def test_environment_differences_are_library_versions_and_machine() -> None:
    new, base = load_report(REPORTS / "ci_ok.json"), load_report(REPORTS / "three_a.json")
    assert Difference("packages.transformers", "5.24.0", "5.23.0") in environment_differences(new, base)
    changed = copy.deepcopy(new)
    changed["environment"].update(cpu="Intel Xeon", gpu={"name": "H100"}, git={"commit": "abc"}, hostname="other")
    found = {d.setting for d in environment_differences(changed, new)}
    assert found == {"cpu", "gpu"}  # commit and hostname are expected to differ


def test_check_refuses_unlike_settings_with_exit_2_listing_them(capsys: pytest.CaptureFixture) -> None:
    new, base = str(REPORTS / "ci_anon.json"), str(REPORTS / "ci_ok.json")
    assert main(["check", new, "--baseline", base]) == 2
    err = capsys.readouterr().err
    assert "different settings" in err and "Traceback" not in err
    assert "budget.steps: 3 in the baseline, 1 in the new report" in err and "eval.size: 64" in err
    assert "--allow-mismatch" in err


def test_check_with_allow_mismatch_proceeds_and_warns_above_the_verdict() -> None:
    console = _console()
    code = check_command(str(REPORTS / "ci_anon.json"), str(REPORTS / "ci_ok.json"), [], console,
                         allow_mismatch=True)
    text = console.export_text()
    assert code in (0, 1)
    warning = text.index("warning: the reports were run with different settings (2")
    assert text.index("budget.steps: 3 in the baseline, 1 in the new report") > warning
    verdict = text.index("FAIL:" if code else "ok: no regression")
    assert warning < verdict


def test_compare_always_proceeds_and_lists_the_differences() -> None:
    paths = [str(REPORTS / "ci_ok.json"), str(REPORTS / "ci_anon.json")]
    comparison = compare_reports([load_report(p) for p in paths], paths)
    assert comparison.settings == {"[1]": [Difference("budget.steps", 3, 1), Difference("eval.size", 64, 16)]}
    console = _console()
    assert compare_command(paths, "table", console) == 0
    text = console.export_text()
    assert "[1] was run with settings unlike the base's (2)" in text
    assert "eval.size: 64 in the base, 16 in [1]" in text
    console = _console()
    assert compare_command(paths, "md", console) == 0
    assert "eval.size: 64 in the base, 16 in \\[1\\]" in console.export_text()


def test_compare_of_like_reports_prints_no_mismatch(tmp_path: Path) -> None:
    report = json.loads((REPORTS / "ci_ok.json").read_text())
    copy_path = tmp_path / "copy.json"
    copy_path.write_text(json.dumps(report))
    console = _console()
    assert compare_command([str(REPORTS / "ci_ok.json"), str(copy_path)], "table", console) == 0
    assert "settings unlike" not in console.export_text()
