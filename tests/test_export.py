"""Export of a finished report (report.json + each run's steps.jsonl) to TensorBoard, read back with
the tensorboard package's own EventAccumulator; the wandb mode decision, which never goes online
unless the user configured wandb; and the `export` command and `run --log-to` hook."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from rlbench.cli import main
from rlbench.report.export import export_report, export_runs, flat_config, wandb_mode

REPORTS = Path(__file__).parent / "fixtures" / "reports"


def _laid_out(name: str, tmp_path: Path) -> Path:
    report = json.loads((REPORTS / f"{name}.json").read_text())
    for run in report["runs"]:
        steps = REPORTS / "steps" / name / f"{Path(run['run_dir']).name}.jsonl"
        if steps.exists():
            (tmp_path / run["run_dir"]).mkdir(parents=True)
            shutil.copy(steps, tmp_path / run["run_dir"] / "steps.jsonl")
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    return path


def _accumulator(logdir: Path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def test_tensorboard_files_hold_every_step_metric_evaluation_and_config(tmp_path: Path) -> None:
    path = _laid_out("ci_ok", tmp_path)
    written = export_report(path, ["tensorboard"])
    assert written == {"tensorboard": tmp_path / "tensorboard"}
    report = json.loads(path.read_text())
    assert sorted(p.name for p in (tmp_path / "tensorboard").iterdir()) == ["grpo_zero-seed0", "ppo_rules-seed0"]
    run = report["runs"][1]
    steps = [json.loads(line) for line in (tmp_path / run["run_dir"] / "steps.jsonl").read_text().splitlines()]
    events = _accumulator(tmp_path / "tensorboard" / "ppo_rules-seed0")
    tags = set(events.Tags()["scalars"])
    assert {k for k in steps[0] if k not in ("step", "completions")} <= tags
    for tag in ("reward/mean", "kl/k1", "clip_fraction", "learning/entropy", "time/update_s"):
        scalars = events.Scalars(tag)
        assert [e.step for e in scalars] == [s["step"] for s in steps]
        assert [e.value for e in scalars] == pytest.approx([s[tag] for s in steps], rel=1e-6, abs=1e-12)
    assert [e.value for e in events.Scalars("budget/completions")] == [32, 64, 96]
    # held-out accuracy at the steps it was evaluated (before RL at 0, after at 3)
    accuracy = events.Scalars("eval/accuracy")
    assert [(e.step, e.value) for e in accuracy] == [
        (e["step"], pytest.approx(e["eval/accuracy"])) for e in run["accuracy"]["curve"]]
    # the final report metrics, and the run's configuration as text
    assert events.Scalars("final/memory/process_peak_bytes")[0].value == pytest.approx(
        run["metrics"]["memory/process_peak_bytes"]["value"], rel=1e-6)
    config = events.Tensors("config")[0].tensor_proto.string_val[0].decode()
    assert '"label": "ppo_rules"' in config and '"ppo_epochs": 2' in config
    # and as hyper-parameters for TensorBoard's HParams dashboard
    from tensorboard.plugins.hparams import metadata as hparams_metadata

    [content] = events.PluginTagToContent("hparams").values()
    start = hparams_metadata.parse_session_start_info_plugin_data(content)
    assert start.hparams["algorithm.params.ppo_epochs"].number_value == 2
    assert start.hparams["run"].string_value == "ppo_rules/seed0"


def test_exporting_again_replaces_the_event_files(tmp_path: Path) -> None:
    path = _laid_out("ci_failed_run", tmp_path)
    assert main(["export", str(path), "--to", "tensorboard"]) == 0
    first = sorted((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))
    assert main(["export", str(path), "--to", "tensorboard"]) == 0
    second = sorted((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))
    assert len(second) == len(first) > 0
    # the failed run logged one step before its worker was killed; its scalars are there once
    events = _accumulator(tmp_path / "tensorboard" / "grpo_zero-seed0")
    assert [e.step for e in events.Scalars("reward/mean")] == [1]


def test_export_runs_and_flat_config() -> None:
    report = json.loads((REPORTS / "ci_ok.json").read_text())
    runs = export_runs(report, REPORTS / "nowhere")  # no steps.jsonl: evaluations and final metrics only
    assert [r.name for r in runs] == ["grpo_zero/seed0", "ppo_rules/seed0"]
    assert [r.folder for r in runs] == ["grpo_zero-seed0", "ppo_rules-seed0"]
    assert set(runs[0].scalars) == {0, 3} and "eval/accuracy" in runs[0].scalars[3]
    flat = flat_config(runs[1].config)
    assert flat["algorithm.params.ppo_epochs"] == 2 and flat["algorithm.label"] == "ppo_rules"
    assert flat["budget.completions"] == "none" and flat["algorithm.rewards.format_strict"] == 0.1
    assert all(isinstance(v, (bool, int, float, str)) for v in flat.values())


def test_wandb_goes_online_only_when_configured(tmp_path: Path) -> None:
    no_netrc = tmp_path / "absent"
    assert wandb_mode({}, no_netrc) == "offline"
    assert wandb_mode({"WANDB_API_KEY": "x"}, no_netrc) == "online"
    assert wandb_mode({"WANDB_MODE": "disabled", "WANDB_API_KEY": "x"}, no_netrc) == "disabled"
    netrc = tmp_path / "netrc"
    netrc.write_text("machine example.com login a password b\n")
    assert wandb_mode({}, netrc) == "offline"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password key\n")
    assert wandb_mode({}, netrc) == "online"


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")
def test_wandb_without_the_extra_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _laid_out("ci_ok", tmp_path)
    assert main(["export", str(path), "--to", "wandb"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --to/--log-to wandb: the wandb package is not installed; install the extra: "
                   "pip install 'rlbench[wandb]'"]
    assert not (tmp_path / "wandb").exists()


def test_run_log_to_exports_the_report_the_runner_wrote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hook: after `run_suite` returns its report, `--log-to` exports that report. The runner is
    stood in for by one that returns a real saved report (the runner itself is tested end to end)."""
    import rlbench.runner

    path = _laid_out("ci_ok", tmp_path)
    calls = []

    def finished_run(suite, overrides, output, console):
        calls.append(suite)
        return path, 0

    monkeypatch.setattr(rlbench.runner, "run_suite", finished_run)
    assert main(["run", "tests/data/tiny.yaml", "--log-to", "tensorboard"]) == 0
    assert calls == ["tests/data/tiny.yaml"]
    assert {p.name for p in (tmp_path / "tensorboard").iterdir()} == {"grpo_zero-seed0", "ppo_rules-seed0"}
    if importlib.util.find_spec("wandb") is None:  # a missing writer is reported before anything runs
        calls.clear()
        assert main(["run", "tests/data/tiny.yaml", "--log-to", "wandb"]) == 2
        assert calls == []


def test_export_command_says_where_it_wrote(tmp_path: Path) -> None:
    from rlbench.report.export import export_command

    path = _laid_out("ci_ok", tmp_path)
    console = Console(record=True, width=300, color_system=None)
    assert export_command(str(path), ["tensorboard"], console) == 0
    assert f"tensorboard: wrote {tmp_path / 'tensorboard'}; view: tensorboard --logdir" in console.export_text()
