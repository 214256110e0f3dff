"""`rlbench check --format json|md|junit [--output FILE] [--quiet]`: the gate's verdicts for CI.

Real reports of suites/ci.yaml (ci_v2.json, schema 2) and changed copies of them, as in
test_check.py: a 20% larger policy peak is a regression (memory threshold 2%); a report from
another hardware class has its machine-bound figures skipped as not comparable.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from rlbench.cli import main
from rlbench.report.check import check_reports, gated, thresholds_for
from rlbench.report.machine import machine_independent
from rlbench.report.schema import load_report

REPORTS = Path(__file__).parent / "fixtures" / "reports"
V2 = REPORTS / "ci_v2.json"
PEAK = "memory/policy/anon_peak_bytes"  # gated: the default --gate-memory anon


def _raised(tmp_path: Path, factor: float = 1.2) -> Path:
    report = json.loads(V2.read_text())
    run = next(r for r in report["runs"] if r["id"] == "grpo_zero/seed0")
    run["metrics"][PEAK]["value"] = int(run["metrics"][PEAK]["value"] * factor)
    path = tmp_path / "new.json"
    path.write_text(json.dumps(report))
    return path


def _gated_names(report: dict, run_id: str) -> set[str]:
    """The metrics check gates for one run of the baseline: a direction, a value, a gated area."""
    run = next(r for r in report["runs"] if r["id"] == run_id)
    return {name for name, m in run["metrics"].items()
            if gated(name) and m.get("higher_is_better") is not None and m.get("value") is not None}


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_junit_has_one_testcase_per_gated_metric_per_run_with_its_verdict(tmp_path: Path, capsys) -> None:
    new = _raised(tmp_path)
    xml_path = tmp_path / "check.xml"
    code, out, _ = _run(["check", str(new), "--baseline", str(V2), "--format", "junit", "--output", str(xml_path)],
                        capsys)
    assert code == 1
    assert "FAIL: 1 regression(s)" in out and "regressions" in out  # stdout keeps the tables for the CI log
    root = ET.parse(xml_path).getroot()
    assert root.tag == "testsuites"
    base = load_report(V2)
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == [f"rlbench check: {r['id']}" for r in base["runs"]]
    for suite in suites:
        run_id = suite.get("name").removeprefix("rlbench check: ")
        cases = suite.findall("testcase")
        names = [c.get("name") for c in cases]
        assert len(names) == len(set(names)), "one test case per metric"
        assert {n for n in names if not n.startswith("budget/")} == _gated_names(base, run_id)
        assert all(c.get("classname") == run_id for c in cases)
        assert int(suite.get("tests")) == len(cases)
        assert int(suite.get("failures")) == len(suite.findall("testcase/failure"))
        assert int(suite.get("skipped")) == len(suite.findall("testcase/skipped"))
        for case in cases:  # every case carries its verdict
            verdict = case.find("properties/property[@name='verdict']").get("value")
            assert verdict and case.find("system-out").text.startswith(verdict)
    failures = root.findall("testsuite/testcase/failure/..")
    assert [(c.get("classname"), c.get("name")) for c in failures] == [("grpo_zero/seed0", PEAK)]
    failure = failures[0].find("failure")
    # 356.0 MiB (373,256,192 bytes) x 1.2 = 427.2 MiB: +20.0% against a 2% threshold
    assert failure.get("type") == "regression"
    assert failure.get("message") == "worse: 356.0 MiB -> 427.2 MiB (+71.2 MiB, +20.0%); threshold 2%"
    assert int(root.get("failures")) == 1 and int(root.get("tests")) == sum(int(s.get("tests")) for s in suites)


def test_junit_skips_machine_bound_metrics_of_other_hardware_with_the_reason(tmp_path: Path, capsys) -> None:
    report = json.loads(V2.read_text())
    report["environment"]["hardware_class"] = "cpu-intel-xeon-avx512-amx"
    (tmp_path / "other.json").write_text(json.dumps(report))
    code, out, _ = _run(["check", str(tmp_path / "other.json"), "--baseline", str(V2), "--format", "junit"], capsys)
    assert code == 0
    root = ET.fromstring(out)  # stdout is the document alone
    skipped = root.findall("testsuite/testcase/skipped/..")
    assert skipped and all(not machine_independent(c.get("name")) for c in skipped)
    for case in skipped:
        assert "hardware differs (cpu-amd-epyc-avx2 in the baseline, cpu-intel-xeon-avx512-amx in the new report)" \
            in case.find("skipped").get("message")
    passed = [c for c in root.iter("testcase") if not list(c.iter("skipped")) and not list(c.iter("failure"))]
    assert passed and all(machine_independent(c.get("name")) for c in passed)  # static bytes, work counts


def test_json_carries_every_gated_metric_with_its_verdict(tmp_path: Path, capsys) -> None:
    new = _raised(tmp_path)
    code, out, err = _run(["check", str(new), "--baseline", str(V2), "--format", "json"], capsys)
    assert code == 1 and err == ""
    document = json.loads(out)
    assert document["verdict"] == "fail" and document["exit_code"] == 1
    assert document["thresholds"] == {"memory": "2%", "throughput": "200%", "accuracy": "0.02"}
    base = load_report(V2)
    for run in base["runs"]:
        checks = {c["metric"]: c for c in document["checks"] if c["run"] == run["id"]}
        assert _gated_names(base, run["id"]) <= set(checks)
        for name in _gated_names(base, run["id"]):
            assert checks[name]["outcome"] in ("passed", "failed", "skipped") and checks[name]["label"]
            assert checks[name]["baseline"] == run["metrics"][name]["value"]
    [failed] = [c for c in document["checks"] if c["outcome"] == "failed"]
    assert (failed["run"], failed["metric"], failed["label"]) == ("grpo_zero/seed0", PEAK, "worse")
    assert failed["relative_change"] == pytest.approx(0.2, abs=1e-8)  # int() of x1.2 rounds down by < 1 byte
    result = check_reports(load_report(new), base, thresholds_for(base, []))
    assert document["metrics_compared"] == result.metrics_compared
    assert document["counts"]["failed"] + document["counts"]["passed"] == result.metrics_compared


def test_markdown_renders_the_verdict_and_the_regression_table(tmp_path: Path, capsys) -> None:
    new = _raised(tmp_path)
    code, out, _ = _run(["check", str(new), "--baseline", str(V2), "--format", "md"], capsys)
    assert code == 1
    assert out.startswith("## rlbench check: FAIL: 1 regression(s), 0 improvement(s)\n")
    tokens = MarkdownIt().enable("table").parse(out)
    assert not [t for t in tokens if t.type in ("html_block", "html_inline")]
    headings = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open" and t.tag == "h3"]
    assert headings == ["regressions", "not gated or not comparable"]
    tables = [i for i, t in enumerate(tokens) if t.type == "table_open"]
    first = tokens[tables[0]:tables[1]]
    assert sum(t.type == "tr_open" for t in first) == 2  # the header and the one regression
    # the second: each run's process peaks shown beside the gated anonymous ones (total, and the rise)
    assert sum(t.type == "tr_open" for t in tokens[tables[1]:]) == 1 + 2 * 2
    assert "| grpo\\_zero/seed0 | memory/policy/anon\\_peak\\_bytes | 356.0 MiB | 427.2 MiB | +71.2 MiB, +20.0% " \
           "| worse | 2% |" in out


def test_quiet_prints_the_verdict_alone_and_output_writes_the_file(tmp_path: Path, capsys) -> None:
    new = _raised(tmp_path, factor=1.01)  # +1%: within the 2% threshold
    code, out, err = _run(["check", str(new), "--baseline", str(V2), "--quiet"], capsys)
    assert (code, out, err) == (0, "ok: no regression (0 improvement(s))\n", "")
    target = tmp_path / "check.json"
    code, out, _ = _run(["check", str(new), "--baseline", str(V2), "--format", "json", "--output", str(target),
                         "--quiet"], capsys)
    assert code == 0 and out == "ok: no regression (0 improvement(s))\n"
    assert json.loads(target.read_text())["verdict"] == "ok"
    code, out, _ = _run(["check", str(new), "--baseline", str(V2), "--output", str(tmp_path / "check.txt")], capsys)
    assert code == 0 and out.splitlines()[0] == "ok: no regression (0 improvement(s))"
    assert "rlbench check" in (tmp_path / "check.txt").read_text()  # the tables went to the file
    code, _, err = _run(["check", str(new), "--baseline", str(V2), "--output", str(tmp_path / "no" / "dir.xml"),
                         "--format", "junit"], capsys)
    assert code == 2 and err.count("\n") == 1 and "--output" in err and "Traceback" not in err


def test_setting_warnings_go_to_stderr(capsys) -> None:
    new, base = str(REPORTS / "ci_anon.json"), str(REPORTS / "ci_ok.json")
    code, out, err = _run(["check", new, "--baseline", base, "--allow-mismatch", "--format", "json"], capsys)
    assert code in (0, 1)
    assert "warning: the reports were run with different settings (2" in err
    document = json.loads(out)
    assert "budget.steps: 3 in the baseline, 1 in the new report" in document["setting_differences"]
    code, out, err = _run(["check", new, "--baseline", base, "--allow-mismatch", "--quiet"], capsys)
    assert err == "" and len(out.splitlines()) == 1


def test_json_stays_strict_json_when_a_figure_is_not_a_number(tmp_path: Path, capsys) -> None:
    report = json.loads(V2.read_text())
    report["runs"][0]["metrics"]["eval/accuracy"]["value"] = float("nan")
    (tmp_path / "nan.json").write_text(json.dumps(report))  # Python writes the NaN literal
    code, out, _ = _run(["check", str(tmp_path / "nan.json"), "--baseline", str(V2), "--format", "json"], capsys)

    def refuse(literal: str) -> None:
        raise AssertionError(f"{literal} is not JSON")

    document = json.loads(out, parse_constant=refuse)
    assert code == 1
    [failed] = [c for c in document["checks"] if c["outcome"] == "failed"]
    assert (failed["metric"], failed["label"], failed["new"]) == ("eval/accuracy", "not a finite number", None)
