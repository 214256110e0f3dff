"""What a finished suite leaves, under faults: crafted or damaged steps.jsonl files do not crash
`export` or `report` (the usable rows are kept), plots that cannot be written (a full disk) are a
warning naming the folder while the exit code stays the runs' own, and a rerun leaves no stale
error.log beside its result. Real objects: saved reports from tests/fixtures, their steps files,
/dev/full."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from rlbench.cli import main
from rlbench.report.curves import read_steps
from rlbench.report.export import export_runs
from rlbench.report.schema import load_report

REPORTS = Path(__file__).parent / "fixtures" / "reports"
ROOT = Path(__file__).resolve().parents[1]
CRAFTED = [
    '{"step": NaN, "reward/mean": 1.0}',
    '{"step": "3", "reward/mean": 1.0}',
    '{"step": 1e999, "reward/mean": 1.0}',
    '{"step": 100000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000'
    '0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000'
    '00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000'
    '000000000000000000000000000000000000000000000, "reward/mean": 1.0}',
    '{"step": 7, "reward/mean": "high", "kl/k1": [1, 2], "time/step_s": 1e999, "budget": 10' + "0" * 400 + "}",
    "[1, 2, 3]",
    '"text"',
]


def laid_out(tmp_path: Path, name: str = "ci_ok") -> tuple[Path, dict]:
    report = json.loads((REPORTS / f"{name}.json").read_text())
    for run in report["runs"]:
        steps = REPORTS / "steps" / name / f"{Path(run['run_dir']).name}.jsonl"
        (tmp_path / run["run_dir"]).mkdir(parents=True)
        shutil.copy(steps, tmp_path / run["run_dir"] / "steps.jsonl")
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    return path, report


def test_crafted_steps_rows_are_left_out_and_the_rest_kept(tmp_path: Path) -> None:
    path, report = laid_out(tmp_path)
    first, second = report["runs"]
    steps = tmp_path / first["run_dir"] / "steps.jsonl"
    good = [json.loads(line) for line in steps.read_text().splitlines()]
    steps.write_text("\n".join([*map(json.dumps, good), *CRAFTED]) + "\n")
    rows = read_steps(tmp_path, first)
    assert [r["step"] for r in rows] == [g["step"] for g in good] + [7]
    assert rows[-1] == {"step": 7}  # only the whole-number step of the last row; its text, list and overflow go
    (tmp_path / second["run_dir"] / "steps.jsonl").write_bytes(b'{"step": 1, "x": "\xff\xfe"}\n' + b"[" * 100_000)
    assert read_steps(tmp_path, second) == [{"step": 1}]  # not UTF-8, then nested past the parser: no crash
    exported = export_runs(load_report(path), tmp_path)
    # step 0: the evaluation before RL; step 7 kept nothing but its step, so it logs no scalar
    assert sorted(exported[0].scalars) == [0] + [g["step"] for g in good]


def test_export_and_report_commands_take_a_crafted_steps_file(tmp_path: Path, capsys) -> None:
    path, report = laid_out(tmp_path)
    first, second = report["runs"]
    (tmp_path / first["run_dir"] / "steps.jsonl").write_text("\n".join(CRAFTED) + "\n")
    (tmp_path / second["run_dir"] / "steps.jsonl").unlink()
    (tmp_path / second["run_dir"] / "steps.jsonl").mkdir()  # a folder where the file should be
    assert main(["export", str(path), "--to", "tensorboard"]) == 0
    assert main(["report", str(path), "--output", str(tmp_path / "views")]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_plots_on_a_full_disk_are_a_warning_and_the_exit_code_stays_the_runs(tmp_path: Path, capsys,
                                                                          monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    out = tmp_path / "results" / "ci" / "20261201T000000Z"
    out.mkdir(parents=True)
    report = load_report(REPORTS / "ci_v2.json")  # every run ok: a resume keeps them and draws the plots
    (out / "report.json").write_text(json.dumps(report))
    (out / "suite.resolved.yaml").write_text(yaml.safe_dump(report["suite"], sort_keys=False))
    (out / "memory_by_role.png").symlink_to("/dev/full")  # writing the plot: ENOSPC, as on a full disk
    code = main(["run", "--resume", str(out)])
    captured = capsys.readouterr()
    assert code == 0
    text = " ".join(captured.out.split())
    assert f"warning: plots and summary.md in {out} not written" in text and "No space left on device" in text
    assert json.loads((out / "report.json").read_text())["status"] == "complete"


def test_a_rank_the_watchdog_had_to_kill_is_reported_hung_not_crashed(tmp_path: Path) -> None:
    from rlbench.rank_results import merge_ranks
    from rlbench.runner import mark_timeout

    # rank 0 answered the watchdog's SIGTERM and wrote its result; rank 1, blocked in a collective,
    # did not, and torchrun's summary gives its end: SIGKILL (exit code -9).
    (tmp_path / "rank0").mkdir()
    (tmp_path / "rank0" / "result.json").write_text(json.dumps(
        {"status": "interrupted", "error": "interrupted by the user", "distributed": {"pid": 10}}))
    log = ("torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\nFailures:\n[1]:\n  time : x\n"
           "  host : h\n  rank : 1 (local_rank: 1)\n  exitcode : -9 (pid: 11)\n")
    result = merge_ranks(tmp_path, 2, log)
    assert "killed by signal 9 (SIGKILL)" in result["distributed"]["ranks"][1]["error"]  # what was reported
    mark_timeout(result, 30.0)
    assert result["status"] == "timeout"
    assert result["error"] == ("stopped by the watchdog after 30 s (its time limit: run_timeout_s, or derived from "
                               "the budget); rank 1 hung")
    first, second = result["distributed"]["ranks"]
    assert first["status"] == "interrupted"
    assert second["status"] == "timeout" and second["error"].startswith("hung: no answer to the watchdog's SIGTERM")
