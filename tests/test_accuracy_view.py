"""The accuracy suite's report views on a real saved report (suites/accuracy-small.yaml, run once
by `rlbench run`): the SFT stop and curve, per-arm changes by scoring and chain, control arms in
their own tables, and the SFT curve figure."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from rlbench.report.accuracy_view import arm_markdown, arm_rows, arm_tables, change_text, sft_lines
from rlbench.report.schema import schema_errors
from rlbench.report.summary import summary_markdown

FIXTURE = Path(__file__).parent / "fixtures" / "reports" / "accuracy_small.json"


def _report() -> dict:
    return json.loads(FIXTURE.read_text())


def test_the_fixture_is_a_valid_report_with_the_new_keys():
    report = _report()
    assert schema_errors(report) == []
    run = report["runs"][0]
    assert set(run["accuracy"]["scorings"]) == {"strict", "flexible"}
    assert set(run["accuracy"]["chains"]) == {"seen", "unseen"}
    assert "eval/accuracy_delta_unseen" in run["metrics"]


def test_sft_lines_say_where_it_stopped_and_draw_the_curve():
    report = _report()
    sft = report["stages"]["sft"]
    lines = sft_lines(report)
    assert lines[0].startswith(f"SFT on {sft['sft/demonstrations']} demonstrations: kept step {sft['sft/best_step']}")
    assert f"by {sft['sft/stopped_by']}" in lines[0] and len(lines) == 1 + len(sft["sft/curve"])
    del report["stages"]["sft"]["sft/best_step"]  # a suite without a fixed demonstration set: no section line
    assert sft_lines(report) == []


def test_arms_are_split_into_rl_the_fair_control_and_new_data():
    report = _report()
    rows = {row.label: row for row in arm_rows(report)}
    assert set(rows) == {"grpo_zero", "grpo", "grpo_rm80", "sft_more", "sft_new_data"}
    assert rows["grpo_zero"].rm_accuracy == 1.0
    assert rows["grpo_rm80"].rm_accuracy == pytest.approx(0.800, abs=5e-4)  # Phi(1 / (0.84 sqrt 2))
    assert rows["grpo"].rm_accuracy == report["stages"]["reward_model"]["reward_model/heldout_accuracy"]
    assert rows["sft_more"].zero_variance is None and rows["sft_more"].rm_accuracy is None
    text = "\n".join(arm_markdown(report))
    rl, control, new = (text.index(h) for h in ("### RL arms", "### control: more epochs",
                                                "### labelled apart: fresh demonstrations"))
    assert rl < control < new
    assert "sft\\_new\\_data" in text[new:] and "sft\\_new\\_data" not in text[:new]
    assert "## accuracy by arm, scoring and chain" in summary_markdown(report)
    console = Console(file=io.StringIO(), width=250)
    for table in arm_tables(report):
        console.print(table)
    assert "labelled apart" in console.file.getvalue()


def test_change_text_in_points_with_the_interval():
    assert change_text((0.012, (-0.008, 0.031))) == "+1.2 [-0.8, +3.1]"
    assert change_text((-0.05, None)) == "-5.0" and change_text(None) == "-"


def test_the_sft_curve_figure_is_written(tmp_path):
    from rlbench.report.plots import write_plots

    written = {p.name for p in write_plots(_report(), tmp_path)}
    assert "sft_curve.png" in written and (tmp_path / "sft_curve.png").stat().st_size > 0
