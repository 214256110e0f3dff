"""Paired statistics and means over seeds on a real saved report, and how every surface shows them.

FIXTURE is a real run of two seeds of two algorithms with the per-problem outcomes kept:
    rlbench run suites/ci.yaml --set seeds=[0,1] --set budget.steps=1 --set eval.size=16
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from rich.console import Console

from rlbench.report.check import check_command
from rlbench.report.compare import compare_command
from rlbench.report.format import hacking_text, stderr_note, warning_lines
from rlbench.report.schema import load_report
from rlbench.report.seeds import label_seed_means, seed_rows
from rlbench.report.stats import clustered_stderr, paired_delta, seed_mean, weak_reward_model
from rlbench.report.summary import summary_markdown
from rlbench.report.views import print_report

REPORTS = Path(__file__).parent / "fixtures" / "reports"
FIXTURE = REPORTS / "two_seeds.json"


@pytest.fixture(scope="module")
def report() -> dict:
    return load_report(FIXTURE)


def _console() -> Console:
    return Console(record=True, width=250, color_system=None)


def test_outcomes_agree_with_the_accuracies_they_come_from(report):
    for run in report["runs"]:
        acc = run["accuracy"]
        outcomes, paired = acc["outcomes"], acc["paired"]
        n = int(acc["after"]["eval/size"])
        assert len(outcomes["before"]) == len(outcomes["after"]) == len(outcomes["cluster"]) == n == paired["n"]
        assert outcomes["before"].count("1") / n == pytest.approx(acc["before"]["eval/accuracy"])
        assert outcomes["after"].count("1") / n == pytest.approx(acc["after"]["eval/accuracy"])
        assert paired["delta"] == pytest.approx(acc["delta"])
        assert paired["clusters"] == len(outcomes["cluster_keys"]) == len(set(outcomes["cluster"]))
        # recomputed from the kept outcomes, the statistics are the report's
        before, after = [int(c) for c in outcomes["before"]], [int(c) for c in outcomes["after"]]
        again = paired_delta(before, after, outcomes["cluster"])
        for key in ("improved", "worsened", "stderr", "ci95", "p_value"):
            assert again[key] == pytest.approx(paired[key]), key
        assert clustered_stderr(after, outcomes["cluster"])[0] == pytest.approx(paired["after_stderr"])
        assert run["metrics"]["eval/accuracy_delta"]["stderr"] == pytest.approx(paired["stderr"])
        assert paired["cluster_by"] == "arithmetic chain"
        assert all(not any(ch.isalpha() for ch in key) for key in outcomes["cluster_keys"])  # chains, no words


def test_every_seed_scores_the_same_problems_before(report):
    befores = {run["accuracy"]["outcomes"]["before"] for run in report["runs"]}
    keys = {tuple(run["accuracy"]["outcomes"]["cluster_keys"]) for run in report["runs"]}
    assert len(befores) == 1 and len(keys) == 1  # one starting model, one list of held-out problems


def test_seed_means_are_the_mean_of_the_per_seed_rows(report):
    label = report["runs"][0]["label"]
    runs = [r for r in report["runs"] if r["status"] == "ok" and r["label"] == label]
    assert len(runs) >= 2
    means = {(m["label"], m["metric"]): m for m in label_seed_means(report)}
    values = [r["metrics"]["eval/accuracy"]["value"] for r in runs]
    mean = means[(label, "eval/accuracy")]
    assert mean["mean"] == pytest.approx(sum(values) / len(values))
    assert mean == dict(seed_mean(values), label=label, metric="eval/accuracy", seeds=[r["seed"] for r in runs])
    row = next(r for r in seed_rows(report) if r[:2] == [label, "acc after %"])
    assert row[3] == f"{mean['mean'] * 100:.1f}" and row[2] == str(len(runs))


def test_terminal_tables_show_the_paired_change_and_the_seed_mean(report):
    console = _console()
    print_report(report, console)
    text = " ".join(console.export_text().split())  # captions wrap to their table's width
    run = report["runs"][0]
    paired = run["accuracy"]["paired"]
    low, high = paired["ci95"]
    assert f"{paired['delta'] * 100:+.1f} [{low * 100:+.1f}, {high * 100:+.1f}]" in text
    assert "exact McNemar" in text and f"{paired['clusters']:,} clusters among {paired['n']:,} problems" in text
    assert "mean over seeds" in text and "Student's t" in text


def test_summary_markdown_shows_the_paired_change_and_the_seed_mean(report):
    md = summary_markdown(report)
    assert "Δ acc (pts) \\[95% CI\\]" in md and "| p |" in md
    assert "## mean over seeds" in md and "clustered by arithmetic chain" in md


def test_compare_and_check_print_each_reports_seed_means(report, capsys):
    console = _console()
    assert compare_command([str(FIXTURE), str(FIXTURE)], "rich", console) == 0
    text = " ".join(console.export_text().split())  # titles wrap
    assert f"mean over seeds: [0] {FIXTURE}" in text and f"mean over seeds: [1] {FIXTURE}" in text
    console = _console()
    assert compare_command([str(FIXTURE), str(FIXTURE)], "md", console) == 0
    assert "## mean over seeds: \\[1\\]" in console.export_text()
    console = _console()
    assert check_command(str(FIXTURE), str(FIXTURE), [], console) == 0
    text = " ".join(console.export_text().split())
    assert f"mean over seeds: new {FIXTURE}" in text and f"mean over seeds: baseline {FIXTURE}" in text


def test_one_seed_has_no_mean_row(report):
    one = copy.deepcopy(report)
    one["runs"] = one["runs"][:1]
    assert label_seed_means(one) == [] and "mean over seeds" not in summary_markdown(one)


def test_a_report_without_outcomes_keeps_the_old_display():
    old = json.loads((REPORTS / "three_a.json").read_text())
    assert "binomial" in stderr_note(old)
    assert "| +3.1 | - |" in summary_markdown(old)  # grpo_zero: +3.1 points, no p-value


def test_a_weak_reward_model_is_marked_in_tables_and_summary():
    # three_a.json's real reward model stage: 1.0 on 6 held-out pairs, not weak by the default rule;
    # judged against a floor no model reaches, the same figures give a real verdict to render
    report = json.loads((REPORTS / "three_a.json").read_text())
    stage = report["stages"]["reward_model"]
    assert weak_reward_model(stage["reward_model/heldout_accuracy"], stage["reward_model/heldout_pairs"]) is None
    weak = weak_reward_model(stage["reward_model/heldout_accuracy"], stage["reward_model/heldout_pairs"], floor=1.01)
    stage["weak"] = weak
    grpo = next(r for r in report["runs"] if r["label"] == "grpo")
    grpo["reward_model_warning"] = weak
    assert hacking_text(grpo) == "no, weak RM"
    assert warning_lines(report) == [f"weak reward model: {weak}"]
    md = summary_markdown(report)
    assert "## warnings" in md and "no, weak RM" in md
    console = _console()
    print_report(report, console)
    assert f"warning: weak reward model: {weak}" in console.export_text()


def test_the_starting_accuracy_line_uses_the_tables_standard_error():
    from rlbench.catalog import load_problems, problem_clusters
    from rlbench.config import load_suite
    from rlbench.stages.starting_eval import starting_stderr

    suite = load_suite(Path(__file__).parent / "data" / "tiny.yaml")
    problems = load_problems(suite.task, "eval", suite.eval.size, 0)
    outcomes = "1100101001110010"[:len(problems)]
    before = {"eval/accuracy": outcomes.count("1") / len(outcomes), "eval/accuracy_stderr_binomial": 0.125,
              "eval/outcomes": outcomes}
    clusters, by = problem_clusters(suite.task, problems)
    se, how = starting_stderr(suite, before)
    assert how == f"clustered by {by}" and se == clustered_stderr([int(c) for c in outcomes], clusters)[0]
    # an evaluation cached before outcomes were kept: the binomial error it stored
    assert starting_stderr(suite, {k: v for k, v in before.items() if k != "eval/outcomes"}) == (0.125, "binomial")
