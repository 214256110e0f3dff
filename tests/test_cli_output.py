"""Output for machines and for quiet logs: `ls --json`, `validate --json/--quiet`, `report --output DIR`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rlbench.catalog import ALGORITHMS, REGISTRIES
from rlbench.cli import main
from rlbench.commands import allowed_values

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "data" / "tiny.yaml"
REPORTS = REPO / "tests" / "fixtures" / "reports"


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_ls_json_lists_every_registry_and_the_params(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = _run(["ls", "--params", "--json"], capsys)
    assert code == 0
    data = json.loads(out)
    for registry in REGISTRIES:
        assert [e["name"] for e in data[f"{registry.kind}s"]] == [e.name for e in registry.entries()]
    assert set(data["params"]) == {e.name for e in ALGORITHMS.entries()}
    ppo = {p["param"]: p for p in data["params"]["ppo"]}
    assert ppo["value_init"]["allowed"] == "auto | reward | policy" and ppo["lr"]["allowed"] == "0 < x < 1"
    assert isinstance(ppo["lr"]["default"], float) and ppo["lr"]["help"]
    assert allowed_values({"ge": 1}) == "x ≥ 1"
    assert "params" not in json.loads(_run(["ls", "--json"], capsys)[1])


def test_validate_json_reports_each_suite_with_its_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.read_text().replace("budget: {steps: 2}", "budget: {steps: -1}"))
    code, out, err = _run(["validate", str(TINY), str(bad), "--json"], capsys)
    assert code == 2 and err.startswith("error: ")  # the errors are on stderr too, one line each
    data = json.loads(out)
    assert data["valid"] is False
    good, broken = data["suites"]
    assert good == {"path": str(TINY), "valid": True, "suite": "tiny", "runs": 1, "algorithms": ["grpo_zero"],
                    "seeds": [0], "warnings": []}
    assert broken["valid"] is False and any("budget.steps" in e for e in broken["errors"])
    code, out, _ = _run(["validate", str(TINY), "--json", "--explain"], capsys)
    fields = {f["field"]: f for f in json.loads(out)["fields"]}
    assert code == 0 and fields["seeds"]["default"] == [0] and fields["budget.steps"]["help"]


def test_validate_quiet_is_one_line(capsys: pytest.CaptureFixture) -> None:
    assert _run(["validate", str(TINY), str(TINY), "--quiet"], capsys) == (0, "ok: 2 suite(s) valid\n", "")


def test_report_output_writes_the_figures_there_and_nothing_beside_the_report(tmp_path: Path, capsys) -> None:
    source = tmp_path / "results"
    source.mkdir()
    shutil.copy(REPORTS / "ci_ok.json", source / "report.json")
    for steps in (REPORTS / "steps" / "ci_ok").glob("*.jsonl"):
        (source / "runs" / steps.stem).mkdir(parents=True)
        shutil.copy(steps, source / "runs" / steps.stem / "steps.jsonl")
    code, out, _ = _run(["report", str(source / "report.json"), "--output", str(tmp_path / "figures")], capsys)
    assert code == 0
    written = {p.name for p in (tmp_path / "figures").iterdir()}
    assert written == {"memory_by_role.png", "curves.png", "tradeoffs.png", "summary.md"}
    assert {p.name for p in source.iterdir()} == {"report.json", "runs"}
    assert f"wrote: {tmp_path / 'figures' / 'curves.png'}" in out
