"""`rlbench run SUITE --smoke`: the suite's runs cut to 2 steps and 32 held-out problems, the
report marked, and `check` refusing it as a baseline (one line, exit 2). A smoke run end to end:
test_e2e.py (its suite is run with --smoke)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlbench.cli import main
from rlbench.config import SMOKE_EVAL_SIZE, SMOKE_STEPS, load_suite, smoke_suite

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "data" / "tiny.yaml"
V2 = REPO / "tests" / "fixtures" / "reports" / "ci_v2.json"


def test_smoke_cuts_steps_and_problems_and_nothing_else() -> None:
    suite = load_suite(REPO / "suites" / "quickstart.yaml")  # completions 6400, eval.size 4096
    smoke = smoke_suite(suite)
    assert (SMOKE_STEPS, SMOKE_EVAL_SIZE) == (2, 32)
    assert smoke.budget.steps == 2 and smoke.budget.completions == suite.budget.completions
    assert smoke.eval.size == 32 and smoke.eval.batch_size == suite.eval.batch_size
    assert smoke.model == suite.model and smoke.algorithms == suite.algorithms  # the cached SFT's key
    small = load_suite(TINY, ["budget.steps=1", "eval.size=16"])
    assert smoke_suite(small).budget.steps == 1 and smoke_suite(small).eval.size == 16  # never longer


def test_check_refuses_a_smoke_baseline(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    report = json.loads(V2.read_text())
    report["smoke"] = True
    baseline = tmp_path / "smoke.json"
    baseline.write_text(json.dumps(report))
    assert main(["check", str(V2), "--baseline", str(baseline)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "smoke run" in err[0]
    # as the report under test it is only checked like any other (here: against itself, no regression)
    assert main(["check", str(baseline), "--baseline", str(V2), "--quiet"]) == 0


def test_resume_takes_no_smoke(capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "--resume", "results/x", "--smoke"]) == 2
    assert "--smoke" in capsys.readouterr().err
