"""`rlbench compare` on two real reports of suites/ci.yaml: both runs ok (ci_ok.json) and the same
suite with the first run's worker killed mid-run (ci_failed_run.json)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from rich.console import Console

from rlbench.errors import UserError
from rlbench.report.compare import (
    change_cells,
    compare_command,
    compare_sections,
    markdown_table,
    metric_label,
)
from rlbench.report.schema import load_report

REPORTS = Path(__file__).parent / "fixtures" / "reports"
OK, FAILED = str(REPORTS / "ci_ok.json"), str(REPORTS / "ci_failed_run.json")
MIB = 2**20


def _console() -> Console:
    return Console(record=True, width=250, color_system=None)


def test_change_cells_colour_by_direction() -> None:
    # memory, lower is better: 10 MiB -> 12 MiB is +2.0 MiB, +20.0%, worse (red)
    worse = change_cells({"value": 10 * MIB, "higher_is_better": False, "unit": "bytes"},
                         {"value": 12 * MIB, "higher_is_better": False, "unit": "bytes"})
    assert [c.text for c in worse] == ["+2.0 MiB", "+20.0%", "↑ worse"] and worse[2].style == "red"
    # accuracy, higher is better: 30% -> 35% is +5.0 points, +16.7% (0.05 / 0.30), better (green)
    better = change_cells({"value": 0.30, "higher_is_better": True, "unit": "fraction"},
                          {"value": 0.35, "higher_is_better": True, "unit": "fraction"})
    assert [c.text for c in better] == ["+5.0 pts", "+16.7%", "↑ better"] and better[2].style == "green"
    # no direction: an arrow, no colour; from 0: no relative change
    plain = change_cells({"value": 0.0, "higher_is_better": None, "unit": "tokens"},
                         {"value": 2.0, "higher_is_better": None, "unit": "tokens"})
    assert [c.text for c in plain] == ["+2", "-", "↑"] and plain[2].style == ""
    assert [c.text for c in change_cells({"value": 1.0, "higher_is_better": True, "unit": ""}, None)] == ["-", "-", ""]


def test_metric_labels() -> None:
    assert metric_label("memory/policy/peak_bytes") == "policy peak"
    assert metric_label("memory/process_peak_bytes") == "process_peak"
    assert metric_label("time/step_s") == "time/step_s"


def test_sections_match_runs_by_label_and_seed() -> None:
    sections, notes = compare_sections([load_report(OK), load_report(FAILED)], [OK, FAILED])
    assert [s.title for s in sections] == ["runs", "memory by role", "throughput", "accuracy"]
    runs = {row[0].text: [c.text for c in row[1:]] for row in sections[0].rows}
    assert runs == {"grpo_zero/seed0": ["ok", "failed"], "ppo_rules/seed0": ["ok", "ok"]}
    memory = sections[1]
    assert memory.columns == ["run", "metric", "[0] base", "[1]", "Δ [1]", "Δ% [1]", ""]
    by_metric = {}
    current = None
    for row in memory.rows:
        current = row[0].text or current
        by_metric[(current, row[1].text)] = [c.text for c in row[2:]]
    # ppo_rules holds a value model; the failed grpo_zero run has no figures in the second report
    assert ("ppo_rules/seed0", "value peak") in by_metric
    assert by_metric[("grpo_zero/seed0", "policy peak")][1:] == ["-", "-", "-", ""]
    # static bytes are computed from tensors: the same model, the same bytes in both reports
    assert by_metric[("ppo_rules/seed0", "policy weights")][1:4] == [
        by_metric[("ppo_rules/seed0", "policy weights")][0], "+0.0 MiB", "+0.0%"]
    assert notes == []


def test_markdown_output(capsys: pytest.CaptureFixture) -> None:
    assert compare_command([OK, FAILED], "md", Console(width=250, color_system=None)) == 0
    out = capsys.readouterr().out
    assert out.startswith("# rlbench compare")
    for heading in ("## runs", "## memory by role", "## throughput", "## accuracy"):
        assert heading in out
    assert "| run | metric | [0] base | [1] | Δ [1] | Δ% [1] |  |" in out
    assert "| ppo_rules/seed0 | policy weights |" in out
    assert "| grpo_zero/seed0 | ok | failed |" in out


def test_rich_output_names_runs_and_reports() -> None:
    console = _console()
    assert compare_command([OK, OK], "table", console) == 0
    text = console.export_text()
    assert "[0] " + OK in text and "(base)" in text
    assert "memory by role" in text and "ppo_rules/seed0" in text and "eval/accuracy" in text
    assert "=" in text  # a report against itself: every change is zero


def test_three_reports_get_a_delta_group_each() -> None:
    reports = [load_report(OK), load_report(FAILED), load_report(OK)]
    sections, _ = compare_sections(reports, ["a", "b", "c"])
    assert sections[1].columns == ["run", "metric", "[0] base", "[1]", "Δ [1]", "Δ% [1]", "", "[2]", "Δ [2]",
                                   "Δ% [2]", ""]


def test_unmatched_runs_are_noted_and_no_common_run_is_an_error() -> None:
    base = load_report(OK)
    other = copy.deepcopy(base)
    other["runs"][0]["label"] = "grpo_zero_b"
    _, notes = compare_sections([base, other], ["base", "other"])
    assert notes == ["other: has no grpo_zero/seed0",
                     f"other: {other['runs'][0]['id']} not in the base report, not compared"]
    for run in other["runs"]:
        run["seed"] = 3
    with pytest.raises(UserError, match="no runs in common"):
        compare_sections([base, other], ["base", "other"])
    with pytest.raises(UserError, match="at least two reports"):
        compare_command([OK], "table", _console())


def test_markdown_table_escapes_and_aligns() -> None:
    table = markdown_table(["name", "value"], [["a|b", "1.5"], ["c", "-"]])
    assert table.splitlines() == ["| name | value |", "| --- | ---: |", "| a\\|b | 1.5 |", "| c | - |"]
