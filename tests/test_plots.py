"""Plots, summary.md and `rlbench report` on real reports of suites/ci.yaml, with the runs'
steps.jsonl files copied next to them the way the runner lays them out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from matplotlib.image import imread
from rich.console import Console

from rlbench.report.plots import curves_figure, memory_figure, read_steps, role_segments, write_plots
from rlbench.report.views import report_command

REPORTS = Path(__file__).parent / "fixtures" / "reports"


def _laid_out(name: str, tmp_path: Path) -> tuple[dict, Path]:
    """The fixture report as report.json in a run directory, with its runs' steps.jsonl files."""
    report = json.loads((REPORTS / f"{name}.json").read_text())
    (tmp_path / "report.json").write_text(json.dumps(report))
    for steps in sorted((REPORTS / "steps" / name).glob("*.jsonl")):
        run_dir = tmp_path / "runs" / steps.stem
        run_dir.mkdir(parents=True)
        shutil.copy(steps, run_dir / "steps.jsonl")
    return report, tmp_path


def test_write_plots_renders_images_that_open(tmp_path: Path) -> None:
    report, out = _laid_out("ci_ok", tmp_path)
    paths = write_plots(report, out)
    assert [p.name for p in paths] == ["memory_by_role.png", "curves.png", "summary.md"]
    for png in paths[:2]:
        image = imread(png)
        assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 600


def test_memory_figure_axes_legend_and_title() -> None:
    report = json.loads((REPORTS / "ci_ok.json").read_text())
    ax = memory_figure(report).axes[0]
    assert ax.get_ylabel() == "memory (MiB)"
    assert ax.get_xlabel() == "run (label/seed, roles held)"
    assert "cpu probe" in ax.get_title()
    assert [t.get_text().splitlines()[0] for t in ax.get_xticklabels()] == ["grpo_zero/seed0", "ppo_rules/seed0"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["policy: static", "reference: static", "value: static", "transient of the role's peak phase",
                      "process peak above baseline"]


def test_role_segments_are_static_plus_the_peak_phase_rise() -> None:
    report = json.loads((REPORTS / "ci_ok.json").read_text())
    ppo = report["runs"][1]
    segments = role_segments(ppo, "cpu")
    assert [s[0] for s in segments] == ["policy", "reference", "value"]
    for role, static, transient, phase in segments:
        entry = ppo["roles"][role]
        assert static == entry["static"]["total"]
        # the phase named is where the role's measured peak is, and the transient is its rise
        assert entry["phases"][phase]["peak_bytes"]["cpu"] == entry["peak_bytes"]["cpu"]
        assert transient == entry["phases"][phase]["rise_bytes"]["cpu"]
    assert segments[0][3] in ("generate", "update", "eval")
    assert segments[1][3] == "ref_logprobs"
    assert segments[2][3] in ("values", "value_update")


def test_curves_figure_reads_steps_and_evals(tmp_path: Path) -> None:
    report, out = _laid_out("ci_ok", tmp_path)
    train_ax, eval_ax = curves_figure(report, out).axes
    assert train_ax.get_xlabel() == eval_ax.get_xlabel() == "completions consumed"
    assert train_ax.get_ylabel() == "per-step mean (reward; fraction correct)"
    assert eval_ax.get_ylabel() == "held-out accuracy (greedy pass@1)"
    steps = read_steps(out, report["runs"][0])
    assert len(steps) == report["runs"][0]["budget"]["steps"]
    # one proxy and one gold line per run, x = completions consumed after each step
    lines = train_ax.get_lines()
    assert len(lines) == 4
    assert list(lines[0].get_xdata()) == [s["completions"] for s in steps]
    assert list(lines[0].get_ydata()) == [s["reward/mean"] for s in steps]
    labels = [t.get_text() for t in eval_ax.get_legend().get_texts()]
    assert labels == ["grpo_zero/seed0", "ppo_rules/seed0"]


def test_failed_run_report_still_plots(tmp_path: Path) -> None:
    report, out = _laid_out("ci_failed_run", tmp_path)
    paths = write_plots(report, out)
    ax = memory_figure(report).axes[0]
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks[0].startswith("grpo_zero/seed0") and "(failed)" in ticks[0]
    summary = paths[2].read_text()
    assert "## runs that did not end ok" in summary and "worker exited with code" in summary


def test_summary_markdown_tables(tmp_path: Path) -> None:
    report, out = _laid_out("ci_ok", tmp_path)
    summary = write_plots(report, out)[2].read_text()
    assert summary.startswith("# rlbench: ci")
    assert "| run | status | stopped by | roles |" in summary
    assert "| ppo_rules/seed0 | ok | steps | policy, reference, value |" in summary
    assert "| run | role | weights | grads | optimizer | static | peak phase | phase transient | phase peak |" in summary
    assert "![memory by role](memory_by_role.png)" in summary


def test_report_command_reprints_and_rerenders(tmp_path: Path) -> None:
    _, out = _laid_out("ci_ok", tmp_path)
    console = Console(record=True, width=250, color_system=None)
    assert report_command(str(out / "report.json"), console) == 0
    text = console.export_text()
    assert "memory by role" in text and "ppo_rules/seed0" in text
    for name in ("memory_by_role.png", "curves.png", "summary.md"):
        assert (out / name).stat().st_size > 0


@pytest.mark.parametrize("name", ["ci_ok", "ci_failed_run"])
def test_steps_fixtures_match_their_reports(name: str) -> None:
    report = json.loads((REPORTS / f"{name}.json").read_text())
    for steps in (REPORTS / "steps" / name).glob("*.jsonl"):
        assert any(r.get("run_dir") == f"runs/{steps.stem}" for r in report["runs"])
