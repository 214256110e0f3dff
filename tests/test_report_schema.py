"""The report schema against real reports: produced by `rlbench run suites/ci.yaml` with a small
budget (tests/fixtures/reports/ci_ok.json: both runs ok) and by the same suite with the first
run's worker killed mid-run (ci_failed_run.json: the runner records the failure and goes on)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from rlbench.errors import UserError
from rlbench.report import schema as schema_module
from rlbench.report.schema import (
    SCHEMA_VERSION,
    SCHEMA_VERSIONS,
    load_report,
    schema,
    schema_errors,
    validate_report,
)

REPORTS = Path(__file__).parent / "fixtures" / "reports"


def test_real_report_is_valid() -> None:
    report = load_report(REPORTS / "ci_ok.json")
    assert schema_errors(report) == []
    assert [r["status"] for r in report["runs"]] == ["ok", "ok"]
    assert report["schema_version"] == 1
    assert load_report(REPORTS / "ci_v2.json")["schema_version"] == 2


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


def test_rlbench_writes_schema_2_and_reads_1_and_2() -> None:
    assert SCHEMA_VERSION == 2 and SCHEMA_VERSIONS == (1, 2)
    assert schema()["properties"]["schema_version"]["enum"] == [1, 2]
    assert "CHANGELOG" in schema_module.__doc__ and "eval/accuracy_stderr -> eval/accuracy_stderr_binomial" in \
        " ".join(schema_module.__doc__.split())


def test_other_schema_version_is_refused(tmp_path: Path) -> None:
    report = json.loads((REPORTS / "ci_ok.json").read_text())
    report["schema_version"] = 3
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    with pytest.raises(UserError, match=r"schema_version 3 is not one this rlbench reads \(1, 2\)"):
        load_report(path)


def test_a_schema_1_report_is_read_with_todays_key_names() -> None:
    raw = json.loads((REPORTS / "ci_ok.json").read_text())
    assert "eval/accuracy_stderr" in raw["runs"][0]["accuracy"]["before"]
    report = load_report(REPORTS / "ci_ok.json")
    assert report["schema_version"] == 1  # as written: check and compare know which keys it could have
    before = report["runs"][0]["accuracy"]["before"]
    assert before["eval/accuracy_stderr_binomial"] == raw["runs"][0]["accuracy"]["before"]["eval/accuracy_stderr"]
    assert "eval/accuracy_stderr" not in before
    assert all("eval/accuracy_stderr" not in e for e in report["runs"][0]["evals"])


def test_schema_2_keeps_one_meaning_per_key() -> None:
    report = load_report(REPORTS / "ci_v2.json")
    run = report["runs"][0]
    before = run["accuracy"]["before"]
    assert "eval/accuracy_stderr" not in before and "eval/accuracy_stderr_binomial" in before
    # the binomial error, sqrt(p(1-p)/n), where it says binomial
    p, n = before["eval/accuracy"], before["eval/size"]
    assert before["eval/accuracy_stderr_binomial"] == pytest.approx((p * (1 - p) / n) ** 0.5, rel=1e-12)
    # the metric's error says which it is: clustered where the per-problem outcomes were kept
    metric = run["metrics"]["eval/accuracy"]
    assert metric["stderr_kind"] == f"clustered by {run['accuracy']['paired']['cluster_by']}"
    assert metric["stderr"] == run["accuracy"]["paired"]["after_stderr"]


def test_a_schema_2_report_must_carry_the_fingerprint(tmp_path: Path) -> None:
    report = json.loads((REPORTS / "ci_v2.json").read_text())
    del report["environment"]["hardware_class"]
    assert any("'hardware_class' is a required property" in e for e in schema_errors(report))
    report["schema_version"] = 1  # a schema-1 report never had it
    assert not any("hardware_class" in e for e in schema_errors(report))


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


def test_resume_refuses_a_report_of_an_older_schema(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from rlbench.cli import main

    (tmp_path / "report.json").write_text((REPORTS / "ci_ok.json").read_text())
    assert main(["run", "--resume", str(tmp_path)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "written by an older rlbench (schema 1, this one writes 2); run the suite afresh" in line
