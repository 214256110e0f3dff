"""The report schema against real reports: produced by `rlbench run suites/ci.yaml` with a small
budget (tests/fixtures/reports/ci_ok.json: both runs ok) and by the same suite with the first
run's worker killed mid-run (ci_failed_run.json: the runner records the failure and goes on)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from rlbench.errors import UserError
from rlbench.report.schema import load_report, schema, schema_errors, validate_report

REPORTS = Path(__file__).parent / "fixtures" / "reports"


def test_real_report_is_valid() -> None:
    report = load_report(REPORTS / "ci_ok.json")
    assert schema_errors(report) == []
    assert [r["status"] for r in report["runs"]] == ["ok", "ok"]
    assert report["schema_version"] == 1


def test_anonymous_memory_figures_are_valid_and_consistent() -> None:
    # ci_anon.json: suites/ci.yaml with budget.steps=1, eval.size=16, with the cpu probe's RssAnon figures.
    report = load_report(REPORTS / "ci_anon.json")
    assert schema_errors(report) == []
    for run in report["runs"]:
        anon, metrics = run["memory"]["anon"]["cpu"], run["metrics"]
        assert anon["rise_bytes"] == anon["process_peak_bytes"] - anon["baseline_bytes"] > 0
        assert anon["process_peak_bytes"] >= max(anon["phase_peak_bytes"].values())  # snapshots count too
        assert metrics["memory/process_anon_peak_bytes"]["value"] == anon["process_peak_bytes"]
        assert metrics["memory/process_anon_rise_bytes"]["value"] == anon["rise_bytes"]
        # anonymous pages are part of the resident total, which also holds file-backed pages
        assert anon["process_peak_bytes"] < metrics["memory/process_peak_bytes"]["value"]
        for role, entry in run["roles"].items():
            peaks = [ph["anon_peak_bytes"]["cpu"] for ph in entry["phases"].values()]
            assert entry["anon_peak_bytes"]["cpu"] == max(peaks) == metrics[f"memory/{role}/anon_peak_bytes"]["value"]


def test_report_with_a_run_that_failed_mid_suite_is_valid_and_keeps_the_others_results() -> None:
    report = load_report(REPORTS / "ci_failed_run.json")
    failed, ok = report["runs"]
    assert failed["id"] == "grpo_zero/seed0" and failed["status"] == "failed"
    assert "worker exited with code" in failed["error"]
    assert "metrics" not in failed  # the worker died before it could summarise
    assert ok["id"] == "ppo_rules/seed0" and ok["status"] == "ok"
    assert set(ok["roles"]) == {"policy", "reference", "value"}
    assert ok["metrics"]["memory/value/peak_bytes"]["value"] > 0
    assert "eval/accuracy" in ok["metrics"]
    assert report["status"] == "complete"


def _walk(node: object, path: str):
    """Every property schema in the document, with its path."""
    if isinstance(node, dict):
        for name, sub in (node.get("properties") or {}).items():
            yield f"{path}/{name}", sub
        for key, sub in node.items():
            if key in ("properties", "$defs"):
                for name, child in sub.items():
                    yield from _walk(child, f"{path}/{name}")
            elif isinstance(sub, dict):
                yield from _walk(sub, f"{path}/{key}")


def test_every_key_is_documented() -> None:
    undocumented = [p for p, sub in _walk(schema(), "") if "description" not in sub]
    assert undocumented == []
    assert len(list(_walk(schema(), ""))) > 100  # the walk reached the nested definitions


def test_schema_version_is_one() -> None:
    assert schema()["properties"]["schema_version"]["const"] == 1


def test_other_schema_version_is_refused(tmp_path: Path) -> None:
    report = json.loads((REPORTS / "ci_ok.json").read_text())
    report["schema_version"] = 2
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    with pytest.raises(UserError, match="schema_version 2 is not the supported 1"):
        load_report(path)


def test_mismatch_names_the_field(tmp_path: Path) -> None:
    report = json.loads((REPORTS / "ci_ok.json").read_text())
    report["runs"][1]["status"] = "exploded"
    del report["runs"][0]["metrics"]["eval/accuracy"]["higher_is_better"]
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    with pytest.raises(UserError) as err:
        load_report(path)
    text = "\n".join(err.value.messages)
    assert "runs/1/status" in text
    assert "runs/0/metrics/eval/accuracy: 'higher_is_better' is a required property" in text


def test_missing_and_unreadable_files_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such report"):
        load_report(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="not a JSON report"):
        load_report(tmp_path / "bad.json")


def test_validate_report_accepts_what_the_runner_writes_before_any_run() -> None:
    """The runner saves the report before the first run starts: runs pending, no results yet."""
    report = copy.deepcopy(load_report(REPORTS / "ci_ok.json"))
    report["status"] = "running"
    report.pop("finished")
    report["runs"] = [{k: r[k] for k in ("id", "algorithm", "label", "seed", "algorithm_index")} | {"status": "pending"}
                      for r in report["runs"]]
    validate_report(report)
