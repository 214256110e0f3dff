"""Every command's exit codes: listed in its --help, and each one produced by a real invocation.

Covered elsewhere (they need a real suite run that is stopped or an estimate on fake tensors):
run 130 by test_e2e.py (SIGTERM to `rlbench run`) and test_faults_runner.py (Ctrl-C twice);
estimate 0 by test_estimate.py::test_cli_estimate_json_with_a_card; export 0 and 2 (a writer
whose extra is missing) by test_export.py. The rest are here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from rlbench.cli import EXIT_CODES, build_parser, main

REPO = Path(__file__).resolve().parents[1]
REPORTS = REPO / "tests" / "fixtures" / "reports"
TINY = REPO / "tests" / "data" / "tiny.yaml"
V2 = REPORTS / "ci_v2.json"


def _code(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_error_line(err: str) -> bool:
    lines = err.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err


@pytest.mark.parametrize("command", sorted(EXIT_CODES))
def test_help_lists_the_exit_codes(command: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    codes = text.split("\nexit codes:\n")[1].splitlines()
    listed = {int(line.split()[0]) for line in codes if line[2:3].isdigit()}  # wrapped lines start with spaces
    assert listed == set(EXIT_CODES[command]) | {130}, command
    assert set(EXIT_CODES) == set(build_parser()._subparsers._group_actions[0].choices)


def test_run_exit_codes_0_1_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # 2: an invalid suite, one line
    code, out, err = _code(["run", str(TINY), "--set", "budget.steps=-1", "--output", str(tmp_path)], capsys)
    assert code == 2 and _one_error_line(err) and "budget.steps" in err
    # 1: a run that did not end ok (its watchdog stops it after 1 s); --quiet: one line saying so
    code, out, err = _code(["run", str(TINY), "--set", "run_timeout_s=1", "--output", str(tmp_path), "--quiet"],
                           capsys)
    assert code == 1, err
    [line] = out.splitlines()
    assert line.startswith("FAIL: 0 of 1 run(s) ended ok (grpo_zero/seed0 timeout: stopped by the watchdog after 1 s")
    # 0: every run ended ok (a finished suite resumed: nothing to rerun, the tables and plots again)
    finished = tmp_path / "finished"
    finished.mkdir()
    report = json.loads(V2.read_text())
    (finished / "report.json").write_text(json.dumps(report))
    (finished / "suite.resolved.yaml").write_text(yaml.safe_dump(report["suite"], sort_keys=False))
    code, out, err = _code(["run", "--resume", str(finished), "--quiet"], capsys)
    assert code == 0, err
    assert out == f"ok: 2 of 2 run(s) ended ok; report: {finished / 'report.json'}\n"
    assert (finished / "tradeoffs.png").stat().st_size > 0


def test_validate_exit_codes_and_warnings_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, err = _code(["validate", str(TINY)], capsys)
    assert code == 0 and out.startswith("ok ") and err == ""
    gpu = REPO / "suites" / "gpu-memory.yaml"
    code, out, err = _code(["validate", str(gpu)], capsys)
    if "warning:" in err:  # no NVIDIA GPU here: the warning goes to stderr, stdout keeps the ok line
        assert code == 0 and "warning:" not in out and "this machine cannot run it yet" in err
    code, out, err = _code(["validate", str(TINY), "--set", "budget.steps=-1", "--set", "eval.size=0"], capsys)
    assert code == 2 and out == "" and err.count("error: ") == 2


def test_ls_exits_0(capsys: pytest.CaptureFixture) -> None:
    assert _code(["ls"], capsys)[0] == 0


def test_compare_exits_0_whatever_changed_and_2_on_unusable_input(tmp_path: Path, capsys) -> None:
    a, b = str(REPORTS / "three_a.json"), str(REPORTS / "three_b.json")
    assert _code(["compare", a, b, "--changed"], capsys)[0] == 0
    other = json.loads(V2.read_text())
    for run in other["runs"]:  # the same runs under other seeds: nothing to match
        run["seed"] += 10
    (tmp_path / "other.json").write_text(json.dumps(other))
    for argv, words in ((["compare", a], "at least two reports"),
                        (["compare", a, str(tmp_path / "missing.json")], "no such report"),
                        (["compare", str(V2), str(tmp_path / "other.json")], "no runs in common")):
        code, _, err = _code(argv, capsys)
        assert code == 2 and _one_error_line(err) and words in err, argv


def test_check_exits_0_1_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert _code(["check", str(V2), "--baseline", str(V2), "--quiet"], capsys)[0] == 0
    assert _code(["check", str(REPORTS / "ci_failed_run.json"), "--baseline", str(REPORTS / "ci_ok.json"),
                  "--quiet"], capsys)[0] == 1
    code, _, err = _code(["check", str(V2), "--baseline", str(V2), "--threshold", "speed:5%"], capsys)
    assert code == 2 and _one_error_line(err)


def test_report_exits_0_and_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    shutil.copy(V2, tmp_path / "report.json")
    assert _code(["report", str(tmp_path / "report.json"), "--output", str(tmp_path / "figures")], capsys)[0] == 0
    code, _, err = _code(["report", str(tmp_path / "missing.json")], capsys)
    assert code == 2 and _one_error_line(err)
    (tmp_path / "a-file").write_text("")
    code, _, err = _code(["report", str(tmp_path / "report.json"), "--output", str(tmp_path / "a-file")], capsys)
    assert code == 2 and _one_error_line(err) and "--output" in err


def test_estimate_and_export_exit_2_on_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, _, err = _code(["estimate", str(TINY), "--dtype", "float8"], capsys)
    assert code == 2 and _one_error_line(err)
    code, _, err = _code(["export", str(tmp_path / "missing.json"), "--to", "tensorboard"], capsys)
    assert code == 2 and _one_error_line(err)
