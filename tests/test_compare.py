"""`rlbench compare` on real reports: two runs of suites/ci.yaml, both runs ok (ci_ok.json) and with
the first run's worker killed mid-run (ci_failed_run.json), and two runs of the three-run suite
tests/fixtures/reports/three.yaml on the same code (three_a.json, three_b.json: learning and
accuracy figures repeat exactly, memory and times do not). These are schema-1 reports, written
before reports named their hardware class: `_same_machine` stamps copies with one class (they
ran on one machine) where a test is about labels that need like hardware; test_check_hardware.py
covers reports from different classes."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from rich.console import Console

from rlbench.cli import main
from rlbench.errors import UserError
from rlbench.report.changes import Pairing
from rlbench.report.check import Threshold
from rlbench.report.compare import (
    HEADLINE,
    Selection,
    beyond_noise,
    change_cells,
    compare_command,
    compare_reports,
    markdown_table,
    metric_label,
)
from rlbench.report.gate import problem_count
from rlbench.report.schema import load_report

REPORTS = Path(__file__).parent / "fixtures" / "reports"
OK, FAILED = str(REPORTS / "ci_ok.json"), str(REPORTS / "ci_failed_run.json")
THREE_A, THREE_B = str(REPORTS / "three_a.json"), str(REPORTS / "three_b.json")
MIB = 2**20
THRESHOLDS = {"memory": Threshold(0.02, True), "throughput": Threshold(1.0, True), "accuracy": Threshold(0.02, False)}


def _same_machine(report: dict) -> dict:
    stamped = copy.deepcopy(report)
    stamped["environment"]["hardware_class"] = "cpu-amd-epyc-avx2"
    return stamped


def _same_machine_files(tmp_path: Path, *paths: str) -> list[str]:
    out = []
    for i, path in enumerate(paths):
        target = tmp_path / f"{i}_{Path(path).name}"
        target.write_text(json.dumps(_same_machine(load_report(path))))
        out.append(str(target))
    return out


def _console() -> Console:
    return Console(record=True, width=250, color_system=None)


def _shown(comparison) -> dict[tuple[str, str], list[str]]:
    return {(block.run, row[0].text): [c.text for c in row[1:]]
            for section in comparison.sections for block in section.blocks for row in block.rows}


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
    # within noise or threshold: dim, neither better nor worse
    noise = change_cells({"value": 10 * MIB, "higher_is_better": False, "unit": "bytes"},
                         {"value": 10.1 * MIB, "higher_is_better": False, "unit": "bytes"}, noise=True)
    assert [c.text for c in noise] == ["+0.1 MiB", "+1.0%", "↑ noise"] and {c.style for c in noise} == {"dim"}


def test_metric_labels() -> None:
    assert metric_label("memory/policy/peak_bytes") == "policy peak"
    assert metric_label("memory/process_peak_bytes") == "process_peak"
    assert metric_label("time/step_s") == "time/step_s"


def _m(value, unit="", stderr=None):
    return {"value": value, "unit": unit, **({"stderr": stderr} if stderr is not None else {})}


def test_beyond_noise_uses_thresholds_and_standard_errors() -> None:
    # memory "2%": 100 -> 101.5 MiB is 1.5%, noise; 100 -> 103 is 3%, a change; falls count too
    assert not beyond_noise("memory/process_peak_bytes", _m(100 * MIB, "bytes"), _m(101.5 * MIB, "bytes"), THRESHOLDS)
    assert beyond_noise("memory/process_peak_bytes", _m(100 * MIB, "bytes"), _m(103 * MIB, "bytes"), THRESHOLDS)
    assert beyond_noise("memory/process_peak_bytes", _m(103 * MIB, "bytes"), _m(100 * MIB, "bytes"), THRESHOLDS)
    # throughput "100%" is a ratio both ways: a step 1.9x as long is noise, 2.1x a change, and so is half the rate
    assert not beyond_noise("time/step_s", _m(1.0, "s"), _m(1.9, "s"), THRESHOLDS)
    assert beyond_noise("time/step_s", _m(1.0, "s"), _m(2.1, "s"), THRESHOLDS)
    assert beyond_noise("throughput/gen_tokens_per_s", _m(100.0, "1/s"), _m(45.0, "1/s"), THRESHOLDS)
    # accuracy 0.02 absolute, after the combined standard error sqrt(0.03^2 + 0.04^2) = 0.05:
    # 0.30 -> 0.34 is within the noise, 0.30 -> 0.36 beyond both
    assert not beyond_noise("eval/accuracy", _m(0.30, "fraction", 0.03), _m(0.34, "fraction", 0.04), THRESHOLDS)
    assert beyond_noise("eval/accuracy", _m(0.30, "fraction", 0.03), _m(0.36, "fraction", 0.04), THRESHOLDS)
    # no threshold for learning figures: seeded runs repeat them, so any change counts; equal is never a change
    assert beyond_noise("kl/k1", _m(0.010), _m(0.011), THRESHOLDS)
    assert not beyond_noise("kl/k1", _m(0.010), _m(0.010), THRESHOLDS)
    # a metric present on one side only, or NaN on one side only, changed
    assert beyond_noise("eval/accuracy", _m(0.3, "fraction"), None, THRESHOLDS)
    assert beyond_noise("eval/accuracy", _m(0.3, "fraction"), _m(float("nan"), "fraction"), THRESHOLDS)
    assert not beyond_noise("eval/accuracy", None, None, THRESHOLDS)


def test_default_output_fits_a_screen_with_every_run_and_headline(tmp_path: Path) -> None:
    console = _console()
    assert compare_command(_same_machine_files(tmp_path, THREE_A, THREE_B), "table", console) == 0
    text = console.export_text()
    lines = text.splitlines()
    assert len(lines) <= 40, text
    for run in ("grpo_zero/seed0", "grpo/seed0", "ppo_rules/seed0"):
        assert run in text
    for name in ("process_peak", "time/step_s", "throughput/gen_tokens_per_s", "throughput/mfu", "eval/accuracy"):
        assert text.count(name) == 3
    assert "time/generate_s" not in text and "learning/entropy" not in text
    # grpo_zero's process peak moved 0.2% against the default 5% memory threshold: within it, not "better"
    peak = next(line for line in lines if "process_peak" in line)
    assert "-0.2%" in peak and "↓ within threshold" in peak
    assert "metric rows changed beyond noise or threshold" in lines[-1] and "--all" in lines[-1]
    # as written, neither report names its hardware: the same change is not comparable
    console = _console()
    assert compare_command([THREE_A, THREE_B], "table", console) == 0
    text = console.export_text()
    peak = next(line for line in text.splitlines() if "process_peak" in line)
    assert "-0.2%" in peak and "↓ not comparable" in peak
    assert "ran on other hardware than the base (the baseline and the new report record no hardware class" in text


def test_changed_shows_exactly_the_rows_beyond_noise() -> None:
    reports = [_same_machine(load_report(THREE_A)), _same_machine(load_report(THREE_B))]
    thresholds = {"memory": Threshold(0.05, True), "throughput": Threshold(0.10, True),
                  "accuracy": Threshold(0.02, False)}  # three.yaml has no check: block: CheckConfig's defaults
    changed = compare_reports(reports, ["a", "b"], Selection(changed=True))
    everything = compare_reports(reports, ["a", "b"], Selection(all=True))
    shown, every = _shown(changed), _shown(everything)
    assert len(every) == everything.rows_total == changed.rows_total
    assert len(shown) == changed.rows_changed
    keyed = {r["id"]: r for r in reports[0]["runs"]}, {r["id"]: r for r in reports[1]["runs"]}
    expected = set()
    for run_id, base_run in keyed[0].items():
        pairing = Pairing(problem_count(base_run, reports[0]["suite"]), True, reports[1], reports[0])
        for name, metric in base_run["metrics"].items():
            if beyond_noise(name, metric, keyed[1][run_id]["metrics"].get(name), thresholds, pairing):
                expected.add((run_id, metric_label(name)))
    assert set(shown) == expected and expected  # times moved beyond 10% on this shared machine
    # the same code and seeds: no accuracy or learning figure changed
    assert not {k for k in shown if k[1].startswith(("eval/", "learning/", "kl/", "reward/", "loss/"))}
    assert [s.title for s in everything.sections] == ["memory by role", "throughput", "accuracy", "learning"]


def test_changed_against_itself_shows_nothing() -> None:
    console = _console()
    assert main_with(["compare", THREE_A, THREE_A, "--changed"], console) == 0
    text = console.export_text()
    assert "0 of 157 metric rows changed beyond noise or threshold: nothing to show" in text  # 3 runs x (training, evaluation) peaks among them
    assert "grpo/seed0" not in text


def main_with(argv: list[str], console: Console) -> int:
    from rlbench.cli import build_parser, dispatch

    return dispatch(build_parser().parse_args(argv), console)


def test_metrics_glob_picks_rows_by_name(capsys: pytest.CaptureFixture) -> None:
    comparison = compare_reports([load_report(THREE_A), load_report(THREE_B)], ["a", "b"],
                                 Selection(metrics=("memory/*/peak_bytes", "eval/accuracy")))
    names = {name for _, name in _shown(comparison)}
    assert names == {"policy peak", "reference peak", "reward peak", "value peak", "eval/accuracy"}
    # from the command line, comma-separated and repeated globs, with --changed on top
    assert main(["compare", THREE_A, THREE_B, "--metrics", "eval/*,learning/*", "--metrics", "kl/*",
                 "--changed", "--format", "md"]) == 0
    out = capsys.readouterr().out
    assert "nothing to show" in out and "| status |" not in out


def test_headline_metrics_exist_in_real_reports() -> None:
    for run in load_report(THREE_A)["runs"]:  # written before the anonymous-memory figures existed
        anonymous = {"memory/process_anon_peak_bytes", "memory/training_anon_peak_bytes", "memory/eval_anon_peak_bytes"}
        assert set(HEADLINE) - anonymous <= set(run["metrics"])
    for run in load_report(REPORTS / "ci_anon.json")["runs"]:
        assert set(HEADLINE) <= set(run["metrics"])


def test_status_of_each_report_heads_each_run() -> None:
    comparison = compare_reports([load_report(OK), load_report(FAILED)], [OK, FAILED], Selection(all=True))
    assert [s.title for s in comparison.sections] == ["memory by role", "throughput", "accuracy", "learning"]
    memory = comparison.sections[0]
    assert memory.value_columns == ["[0] base", "[1]", "Δ [1]", "Δ% [1]", ""]
    statuses = {b.run: [c.text for c in b.statuses] for b in memory.blocks}
    assert statuses == {"grpo_zero/seed0": ["ok", "failed"], "ppo_rules/seed0": ["ok", "ok"]}
    rows = _shown(comparison)
    # ppo_rules holds a value model; the failed grpo_zero run has no figures in the second report
    assert ("ppo_rules/seed0", "value peak") in rows
    assert rows[("grpo_zero/seed0", "policy peak")][1:] == ["-", "-", "-", ""]
    # static bytes are computed from tensors: the same model, the same bytes in both reports
    weights = rows[("ppo_rules/seed0", "policy weights")]
    assert weights[1:4] == [weights[0], "+0.0 MiB", "+0.0%"]
    console = _console()
    assert compare_command([OK, FAILED], "table", console) == 0
    text = console.export_text()
    heading = next(line for line in text.splitlines() if "grpo_zero/seed0" in line)
    assert "ok" in heading and "failed" in heading


def test_markdown_output(capsys: pytest.CaptureFixture) -> None:
    assert compare_command([OK, FAILED], "md", Console(width=250, color_system=None), Selection(all=True)) == 0
    out = capsys.readouterr().out
    assert out.startswith("# rlbench compare")
    for heading in ("## memory by role", "## throughput", "## accuracy", "## learning"):
        assert heading in out
    assert "| run | metric | \\[0\\] base | \\[1\\] | Δ \\[1\\] | Δ% \\[1\\] |  |" in out
    assert "| grpo\\_zero/seed0 | status | ok | failed |  |  |  |" in out
    assert "|  | policy weights | 3.3 MiB |" in out


def test_rich_output_names_runs_and_reports() -> None:
    console = _console()
    assert compare_command([OK, OK], "table", console, Selection(all=True)) == 0
    text = console.export_text()
    assert "[0] " + OK in text and "(base)" in text
    assert "memory by role" in text and "ppo_rules/seed0" in text and "eval/accuracy" in text
    assert "=" in text  # a report against itself: every change is zero


def test_three_reports_get_a_delta_group_each() -> None:
    reports = [load_report(OK), load_report(FAILED), load_report(OK)]
    comparison = compare_reports(reports, ["a", "b", "c"])
    assert comparison.sections[0].value_columns == ["[0] base", "[1]", "Δ [1]", "Δ% [1]", "", "[2]", "Δ [2]",
                                                    "Δ% [2]", ""]


def test_unmatched_runs_are_noted_and_no_common_run_is_an_error() -> None:
    base = load_report(OK)
    other = copy.deepcopy(base)
    other["runs"][0]["label"] = "grpo_zero_b"
    comparison = compare_reports([base, other], ["base", "other"])
    assert comparison.notes == ["other: has no grpo_zero/seed0",
                                f"other: {other['runs'][0]['id']} not in the base report, not compared"]
    for run in other["runs"]:
        run["seed"] = 3
    with pytest.raises(UserError, match="no runs in common"):
        compare_reports([base, other], ["base", "other"])
    with pytest.raises(UserError, match="at least two reports"):
        compare_command([OK], "table", _console())


def test_markdown_table_escapes_and_aligns() -> None:
    table = markdown_table(["name", "value"], [["a|b", "1.5"], ["c", "-"]])
    assert table.splitlines() == ["| name | value |", "| --- | ---: |", "| a\\|b | 1.5 |", "| c | - |"]


def test_json_output_carries_the_shown_rows_as_numbers(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a, b = _same_machine_files(tmp_path, THREE_A, THREE_B)
    assert main(["compare", a, b, "--changed", "--format", "json"]) == 0
    captured = capsys.readouterr()
    document = json.loads(captured.out)  # stdout is the document alone
    assert [r["path"] for r in document["reports"]] == [a, b] and document["reports"][0]["base"]
    comparison = compare_reports([load_report(a), load_report(b)], [a, b], Selection(changed=True))
    assert document["rows_changed"] == comparison.rows_changed and document["rows_total"] == comparison.rows_total
    shown = _shown(comparison)
    rows = {(run["run"], metric_label(m["metric"])): m for run in document["runs"] for m in run["metrics"]}
    assert set(rows) == set(shown) and rows
    base, new = load_report(a), load_report(b)
    for (run_id, _), row in rows.items():
        [change] = row["changes"]
        assert change["beyond_noise"] and change["label"] == shown[(run_id, metric_label(row["metric"]))][-1].split(
            " ", 1)[-1]
        values = [next(r for r in rep["runs"] if r["id"] == run_id)["metrics"][row["metric"]]["value"]
                  for rep in (base, new)]
        assert row["values"] == values and change["change"] == pytest.approx(values[1] - values[0])


def test_quiet_prints_the_count_of_changes_and_warnings_go_to_stderr(capsys: pytest.CaptureFixture) -> None:
    assert main(["compare", OK, str(REPORTS / "ci_anon.json"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 1 and "metric rows changed beyond noise or threshold" in captured.out
    assert captured.err == ""
    assert main(["compare", OK, str(REPORTS / "ci_anon.json")]) == 0
    captured = capsys.readouterr()
    assert "[1] was run with settings unlike the base's (2)" in captured.err
    assert "settings unlike" not in captured.out and "headline metrics" in captured.out
