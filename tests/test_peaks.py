"""The training peak and the evaluation peak: read from a real report's per-phase figures, given to
a report that predates them when it is read, shown in the tables and gated under their own names."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from rich.console import Console

from rlbench.report.check import Threshold, check_reports, memory_kind
from rlbench.report.peaks import PEAK_METRICS, add_peak_metrics, peak_cell, split_peak
from rlbench.report.schema import load_report
from rlbench.report.summary import summary_markdown
from rlbench.report.views import memory_table, summary_table

REPORTS = Path(__file__).parent / "fixtures" / "reports"
V2 = REPORTS / "ci_v2.json"  # a real ci.yaml report written before the peak metrics existed


def _raw() -> dict:
    return json.loads(V2.read_text())


def test_split_peaks_of_a_real_report() -> None:
    grpo, ppo = _raw()["runs"]
    # grpo_zero's phases (cpu, bytes): generate 410,120,192; update 496,353,280; ref_logprobs
    # 425,398,272; eval 435,560,448. Training: the highest but eval, update; evaluation: eval.
    assert split_peak(grpo, "cpu", evaluation=False) == ("update", 496_353_280)
    assert split_peak(grpo, "cpu", evaluation=True) == ("eval", 435_560_448)
    # ppo_rules: value_update 510,455,808 is above its policy update 492,339,200.
    assert split_peak(ppo, "cpu", evaluation=False) == ("value_update", 510_455_808)
    # anonymous figures: update 373,256,192 and eval 314,843,136
    assert split_peak(grpo, "cpu", False, "anon_peak_bytes") == ("update", 373_256_192)
    assert split_peak(grpo, "cpu", True, "anon_peak_bytes") == ("eval", 314_843_136)
    assert split_peak({"roles": {}}, "cpu", False) is None
    assert split_peak(grpo, "nvml", False) is None  # a probe the run did not use
    assert peak_cell(("update", 496_353_280)) == "473.4 (update)" and peak_cell(None) == "-"


def test_a_distributed_run_takes_the_highest_rank() -> None:
    run = {"roles": {"policy": {"phases": {"update": {"peak_bytes": {"cpu": 100}}}}},
           "distributed": {"phase_peak_bytes_max": {"policy": {"update": {"cpu": 300}, "eval": {"cpu": 200}}}}}
    assert split_peak(run, "cpu", False) == ("update", 300)
    assert split_peak(run, "cpu", True) == ("eval", 200)


def test_an_older_report_gets_the_metrics_when_read() -> None:
    assert not any(name in _raw()["runs"][0]["metrics"] for name in PEAK_METRICS.values())
    grpo = load_report(V2)["runs"][0]["metrics"]
    assert grpo["memory/training_peak_bytes"]["value"] == 496_353_280
    assert grpo["memory/eval_peak_bytes"]["value"] == 435_560_448
    assert grpo["memory/training_anon_peak_bytes"]["value"] == 373_256_192
    assert grpo["memory/eval_anon_peak_bytes"]["value"] == 314_843_136
    assert grpo["memory/training_peak_bytes"]["higher_is_better"] is False
    # a figure the run wrote itself is kept, never recomputed
    report = _raw()
    report["runs"][0]["metrics"]["memory/eval_peak_bytes"] = {"value": 1, "higher_is_better": False, "unit": "bytes"}
    assert add_peak_metrics(report)["runs"][0]["metrics"]["memory/eval_peak_bytes"]["value"] == 1


def test_memory_kinds_of_the_new_names() -> None:
    assert memory_kind("memory/training_anon_peak_bytes") == memory_kind("memory/eval_anon_peak_bytes") == "anon"
    assert memory_kind("memory/training_peak_bytes") == memory_kind("memory/eval_peak_bytes") == "total"


def _gate(new: dict, base: dict):
    limits = {"memory": Threshold(0.02, True), "throughput": Threshold(2.0, True), "accuracy": Threshold(0.02, False)}
    return check_reports(new, base, limits)


def test_the_gate_names_an_evaluation_peak_that_rose() -> None:
    base = load_report(V2)
    raw = _raw()
    # Evaluation used 10% more anonymous memory: 314,843,136 x 1.1 = 346,327,449.6, beyond 2%; no
    # training phase changed, so the training peak passes.
    raw["runs"][0]["roles"]["policy"]["phases"]["eval"]["anon_peak_bytes"]["cpu"] = 346_327_450
    new = add_peak_metrics(copy.deepcopy(raw))
    result = _gate(new, base)
    worse = {(f.run, f.metric) for f in result.regressions}
    assert ("grpo_zero/seed0", "memory/eval_anon_peak_bytes") in worse
    assert ("grpo_zero/seed0", "memory/training_anon_peak_bytes") not in worse
    passed = {(f.run, f.metric) for f in result.passed}
    assert ("grpo_zero/seed0", "memory/training_anon_peak_bytes") in passed


def test_the_gate_names_a_training_peak_that_rose() -> None:
    base = load_report(V2)
    raw = _raw()
    raw["runs"][1]["roles"]["value"]["phases"]["value_update"]["anon_peak_bytes"]["cpu"] = 428_153_651  # x 1.1
    result = _gate(add_peak_metrics(raw), base)
    worse = {(f.run, f.metric) for f in result.regressions}
    assert ("ppo_rules/seed0", "memory/training_anon_peak_bytes") in worse
    assert ("ppo_rules/seed0", "memory/eval_anon_peak_bytes") not in worse


def test_tables_and_summary_show_both_peaks() -> None:
    report = load_report(V2)
    console = Console(width=250, record=True)
    console.print(summary_table(report))
    console.print(memory_table(report))
    text = console.export_text()
    assert "train peak MiB" in text and "eval peak MiB" in text
    assert "473.4 (update)" in text and "415.4 (eval)" in text  # 496,353,280 and 435,560,448 bytes in MiB
    assert "training peak" in text and "evaluation peak" in text
    summary = summary_markdown(report)
    assert "train peak MiB" in summary and r"486.8 (value\_update)" in summary  # 510,455,808 B, Markdown-escaped
