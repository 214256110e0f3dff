"""What each algorithm buys for what it costs (rlbench/report/tradeoffs.py, tradeoff_plot.py), on
real reports of suites/ci.yaml: ci_v2.json (one seed, with per-problem outcomes, so a paired
interval) and two_seeds.json (two seeds per label)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from rlbench.report.plots import write_plots
from rlbench.report.schema import load_report
from rlbench.report.summary import summary_markdown
from rlbench.report.tradeoff_plot import tradeoff_figure
from rlbench.report.tradeoffs import CONTROL_ARMS, no_accuracy_reason, tradeoffs, training_peak_bytes

REPORTS = Path(__file__).parent / "fixtures" / "reports"


@pytest.fixture
def v2() -> dict:
    return load_report(REPORTS / "ci_v2.json")


def test_training_peak_is_the_highest_non_evaluation_phase(v2: dict) -> None:
    grpo, ppo = v2["runs"]
    # grpo_zero: generate 410,120,192, update 496,353,280, ref_logprobs 425,398,272 (eval 435,560,448 left out)
    assert training_peak_bytes(grpo, "cpu") == 496_353_280
    # ppo_rules: its value update, 510,455,808, is above the policy update's 492,339,200
    assert training_peak_bytes(ppo, "cpu") == 510_455_808
    grpo["roles"]["policy"]["phases"]["eval"]["peak_bytes"]["cpu"] = 900_000_000  # evaluation at a larger batch
    assert training_peak_bytes(grpo, "cpu") == 496_353_280
    assert training_peak_bytes({"roles": {}}, "cpu") is None


def test_one_seed_gives_the_paired_interval_and_the_runs_costs(v2: dict) -> None:
    rows = tradeoffs(v2)
    assert [r.label for r in rows] == ["grpo_zero", "ppo_rules"]
    grpo = rows[0]
    paired = v2["runs"][0]["accuracy"]["paired"]
    assert grpo.delta == -0.0625 and grpo.ci95 == tuple(paired["ci95"]) and grpo.interval == "paired"
    assert grpo.flops == 18_460_108_800 and grpo.wall_seconds == 39.588 and grpo.peak_bytes == 496_353_280
    assert grpo.control is None and grpo.seeds == (0,)


def test_several_seeds_give_the_mean_with_a_t_interval() -> None:
    report = load_report(REPORTS / "two_seeds.json")
    grpo = next(r for r in tradeoffs(report) if r.label == "grpo_zero")
    # Δ -0.0625 and 0.0: mean -0.03125; sd 0.0625 / sqrt(2) = 0.0441942; t(0.975, 1) = 12.7062;
    # half-width 12.7062 x 0.0441942 / sqrt(2) = 0.397069
    assert grpo.interval == "seeds" and grpo.seeds == (0, 1)
    assert grpo.delta == pytest.approx(-0.03125)
    assert grpo.ci95 == pytest.approx((-0.03125 - 0.397069, -0.03125 + 0.397069), abs=1e-6)
    assert grpo.wall_seconds == pytest.approx((13.753 + 6.25) / 2)
    assert grpo.flops is None  # a schema-1 report records no FLOPs


def test_control_arms_are_marked_in_the_table_and_the_figure(v2: dict) -> None:
    v2["runs"][1]["algorithm"] = "sft_more"
    rows = tradeoffs(v2)
    assert rows[1].control == CONTROL_ARMS["sft_more"]
    summary = summary_markdown(v2)
    assert "## what each algorithm buys for what it costs" in summary
    # Δ -0.0625 is -6.25 points, printed -6.2 (Python rounds the half to even); 510,455,808 B = 486.8 MiB
    assert ("| ppo\\_rules | sft\\_more | control: more SFT on the same demonstrations | 1 | -6.2 \\[-19.6, +7.1\\] "
            "| 5.49e+10 | 129.8 | 486.8 |") in summary
    assert "![what each algorithm buys for what it costs](tradeoffs.png)" in summary
    fig = tradeoff_figure(v2)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["grpo_zero: -6.2 [-19.6, +7.1]", "ppo_rules: -6.2 [-19.6, +7.1] (control)", "no change"]
    flops, seconds, peak = fig.axes[:3]
    # one errorbar container per label and panel: y is Δ in points, the bar its interval
    for ax in (flops, seconds, peak):
        assert len(ax.containers) == 2
        line = ax.containers[0].lines[0]
        assert list(line.get_ydata()) == pytest.approx([-6.25])
    assert list(peak.containers[1].lines[0].get_xdata()) == pytest.approx([510_455_808 / 2**20])
    assert peak.containers[1].lines[0].get_markerfacecolor() == "white"  # hollow: a control arm


def test_without_accuracy_there_is_no_figure_and_one_line_says_why(tmp_path: Path, v2: dict) -> None:
    shape = copy.deepcopy(v2)
    for run in shape["runs"]:
        run["accuracy"] = {"meaningless": "shape model: random weights"}
        del run["metrics"]["eval/accuracy_delta"]
    assert no_accuracy_reason(tradeoffs(shape)).startswith("no tradeoffs figure: no run measured held-out accuracy")
    said = []
    paths = write_plots(shape, tmp_path, skipped=said.append)
    assert [p.name for p in paths] == ["memory_by_role.png", "curves.png", "summary.md"]
    assert said == [no_accuracy_reason(tradeoffs(shape))]
    summary = (tmp_path / "summary.md").read_text()
    assert "No tradeoffs figure: no run measured held-out accuracy" in summary and "tradeoffs.png" not in summary
