"""Plots, summary.md and `rlbench report` on real reports of suites/ci.yaml, with the runs'
steps.jsonl files copied next to them the way the runner lays them out; accuracy_five.json is a
real five-run report of suites/accuracy.yaml (its five arms, shortened: `--set budget.flops=null
--set budget.steps=3 --set eval.size=64 --set rollout.completions_per_step=32 --set
rollout.max_new_tokens=32 --set model.reward_model.prompts=100 --set model.reward_model.steps=20
--set model.reward_model.batch_size=16`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from matplotlib.image import imread
from rich.console import Console

from rlbench.report.curves import ONE_PASS, updates_per_batch
from rlbench.report.plots import (
    budget_unit,
    curves_figure,
    memory_bars,
    memory_figure,
    read_steps,
    role_segments,
    smooth,
    write_plots,
)
from rlbench.report.schema import load_report
from rlbench.report.summary import summary_markdown
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
    assert [p.name for p in paths] == ["memory_by_role.png", "curves.png", "tradeoffs.png", "summary.md"]
    for png in paths[:3]:
        image = imread(png)
        assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 600


def _bars(ax) -> dict[float, list[float]]:
    """Heights of the bar segments drawn at each x, bottom to top."""
    from matplotlib.patches import Rectangle

    out: dict[float, list[float]] = {}
    for patch in ax.patches:
        if isinstance(patch, Rectangle) and patch.get_width() < 1:
            out.setdefault(round(patch.get_x() + patch.get_width() / 2, 6), []).append(patch.get_height())
    return out


def test_memory_bars_add_up_to_the_measured_process_peak() -> None:
    report = json.loads((REPORTS / "ci_ok.json").read_text())
    ax = memory_figure(report).axes[0]
    assert ax.get_ylabel() == "memory at the process peak (MiB)"
    assert ax.get_xlabel() == "run (label/seed; roles held; training and evaluation peaks)"
    assert "ci: process peak memory by role (cpu probe)" in ax.get_title()
    # training peak: the highest phase but eval (grpo_zero's update 520,196,096 B = 496.1 MiB); eval's own
    assert [t.get_text().splitlines() for t in ax.get_xticklabels()] == [
        ["grpo_zero/seed0", "pol+ref", "train 496.1 MiB (update)", "eval 479.1 MiB (eval)"],
        ["ppo_rules/seed0", "pol+ref+val", "train 524.7 MiB (update)", "eval 493.1 MiB (eval)"]]
    bars = _bars(ax)
    for x, run in enumerate(report["runs"]):
        recon = run["memory"]["reconciliation"]["cpu"]
        segments = bars[float(x)]
        # baseline, each role's static bytes, the peak phase's transient, other: in that order
        assert len(segments) == 1 + len(run["roles"]) + 2
        assert segments[0] == pytest.approx(recon["baseline_bytes"] / 2**20)
        assert segments[-1] == pytest.approx(recon["other_bytes"] / 2**20)
        assert sum(segments) == pytest.approx(recon["process_peak_bytes"] / 2**20)
    texts = [t.get_text() for t in ax.texts]
    assert "524.7 MiB peak" in texts  # ppo_rules' process peak, 550,227,968 bytes
    # PPO peaked in update (policy); its other phases are ticks labelled with their transients
    ppo = report["runs"][1]["roles"]
    assert "update (peak phase)\ntransient +126.9" in texts
    for phase, role in (("generate", "policy"), ("ref_logprobs", "reference"), ("values", "value"),
                        ("value_update", "value")):
        rise = ppo[role]["phases"][phase]["rise_bytes"]["cpu"] / 2**20
        assert f"{phase} +{rise:,.1f}" in texts
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["baseline: before any model loaded", "policy: static bytes", "reference: static bytes",
                      "value: static bytes", "transient of the peak phase\n(role's colour)",
                      "other: not attributed\n(allocator slack, caches)",
                      "training peak: the highest phase\nthat is not an evaluation", "evaluation peak"]


def test_memory_figure_draws_a_bar_per_rank_when_a_run_has_them() -> None:
    report = json.loads((REPORTS / "ci_ok.json").read_text())
    run = report["runs"][1]
    # two ranks shaped like the run's own entry (the second with the value model's bytes left out)
    second = {"rank": 1, "roles": {k: v for k, v in run["roles"].items() if k != "value"}, "memory": run["memory"]}
    run["ranks"] = [{"rank": 0, "roles": run["roles"], "memory": run["memory"]}, second]
    bars = memory_bars(run, "cpu")
    assert [b.label for b in bars] == ["ppo_rules/seed0\nrank 0", "ppo_rules/seed0\nrank 1"]
    assert [len(b.statics) for b in bars] == [3, 2]
    ax = memory_figure(report).axes[0]
    assert len(ax.get_xticklabels()) == 3 and len(_bars(ax)) == 3


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


def test_curves_figure_has_a_panel_per_quantity_against_steps_and_completions(tmp_path: Path) -> None:
    report, out = _laid_out("ci_ok", tmp_path)
    fig = curves_figure(report, out)
    axes = fig.axes[:8]
    titles = [ax.get_title() for ax in axes[:7]]
    assert titles == ["optimised reward", "gold reward", "held-out accuracy", "KL to the reference", "entropy",
                      "clip fraction", "response length"]
    assert all(ax.get_xlabel() == "step" for ax in axes[:7])
    # ci.yaml's budget is steps: the top axis is completions, 32 per step for both runs
    tops = [child for ax in axes for child in ax.child_axes]
    assert len(tops) == 7 and all(a.get_xlabel() == "completions consumed" for a in tops)
    steps = read_steps(out, report["runs"][0])
    assert len(steps) == report["runs"][0]["budget"]["steps"]
    # per run and panel: the raw points, then the smoothed line (3 steps: nothing to smooth)
    reward_lines = axes[0].get_lines()
    assert len(reward_lines) == 4
    assert list(reward_lines[0].get_xdata()) == [s["step"] for s in steps]
    assert list(reward_lines[0].get_ydata()) == [s["reward/mean"] for s in steps]
    assert reward_lines[0].get_linestyle() == "None" and reward_lines[1].get_linestyle() == "-"
    kl = axes[3].get_lines()[0]
    assert list(kl.get_ydata()) == [s["kl/k1"] for s in steps]
    labels = [t.get_text() for t in axes[7].get_legend().get_texts()]
    assert labels == ["grpo_zero/seed0: reward rules, 3 steps", "ppo_rules/seed0: reward rules, 3 steps"]


def test_curves_against_seconds_when_steps_map_differently(tmp_path: Path) -> None:
    report, out = _laid_out("ci_ok", tmp_path)
    report["suite"]["budget"] = {"steps": None, "completions": None, "tokens": None, "wall_seconds": 300}
    axes = curves_figure(report, out).axes
    assert not [child for ax in axes for child in ax.child_axes]  # no top axis: each run has its own seconds per step
    assert axes[0].get_xlabel() == "seconds of RL (sum of step times)"
    steps = read_steps(out, report["runs"][1])
    seconds = [sum(s["time/step_s"] for s in steps[:i + 1]) for i in range(len(steps))]
    assert list(axes[0].get_lines()[2].get_xdata()) == pytest.approx(seconds)


def test_smoothing_is_a_centred_moving_average() -> None:
    assert smooth([0.0, 3.0, 6.0, 9.0], 3) == [1.5, 3.0, 6.0, 7.5]
    assert smooth([1.0, 5.0], 1) == [1.0, 5.0]
    assert budget_unit({"suite": {"budget": {"steps": 3, "tokens": 1000}}}) == "tokens"
    assert budget_unit({"suite": {"budget": {"steps": 3}}}) == "completions"


def test_failed_run_report_still_plots(tmp_path: Path) -> None:
    report, out = _laid_out("ci_failed_run", tmp_path)
    paths = write_plots(report, out)
    ax = memory_figure(report).axes[0]
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks[0].startswith("grpo_zero/seed0") and "(failed)" in ticks[0]
    summary = paths[-1].read_text()
    assert "## runs that did not end ok" in summary and "worker exited with code" in summary


def test_summary_markdown_tables() -> None:
    report = load_report(REPORTS / "ci_ok.json")  # schema 1, read under today's key names
    summary = summary_markdown(report)
    assert summary.startswith("# rlbench: ci")
    assert ("| run | status | stopped by | roles | completions | prompts | FLOPs | train peak MiB | eval peak MiB "
            "| acc before % | acc after % | Δ acc (pts) \\[95% CI\\] | p | hacking |") in summary
    # Δ accuracy in points as in the terminal tables: 1.6% -> 0.0% is -1.6 points, marked *
    # training peak: the update's 550,227,968 B (524.7 MiB); evaluation's 493.1 MiB
    assert ("| ppo\\_rules/seed0 | ok | steps | policy, reference, value | 96 | 96 | - | 524.7 (update) | 493.1 (eval) "
            "| 1.6±1.6 | 0.0±0.0 "
            "| -1.6 \\* | - | no |") in summary
    assert ("| run | step s | generate s | score s | ref\\_logprobs s | values s | advantages s | update s "
            "| value\\_update s | eval s | gen tok/s | trained tok/s | completions/s | MFU % |") in summary
    tp = report["runs"][1]["throughput"]
    assert f"| {tp['time/step_s']:.3f} | {tp['time/generate_s']:.2f} |" in summary
    assert f"| {tp['throughput/mfu'] * 100:.1f} |" in summary
    assert "| run | role | weights | grads | optimizer | static | peak phase | phase transient | phase peak |" in summary
    assert "| **process peak** |" in summary
    assert "![memory by role](memory_by_role.png)" in summary


def test_report_command_reprints_and_rerenders(tmp_path: Path) -> None:
    _, out = _laid_out("ci_ok", tmp_path)
    console = Console(record=True, width=250, color_system=None)
    assert report_command(str(out / "report.json"), console) == 0
    text = console.export_text()
    assert "memory by role" in text and "ppo_rules/seed0" in text
    for name in ("memory_by_role.png", "curves.png", "summary.md"):
        assert (out / name).stat().st_size > 0


@pytest.mark.parametrize("name", ["ci_ok", "ci_failed_run", "three_a", "accuracy_five"])
def test_steps_fixtures_match_their_reports(name: str) -> None:
    report = json.loads((REPORTS / f"{name}.json").read_text())
    for steps in (REPORTS / "steps" / name).glob("*.jsonl"):
        assert any(r.get("run_dir") == f"runs/{steps.stem}" for r in report["runs"])


def test_curves_draw_fractions_in_percent_as_the_tables_do(tmp_path: Path) -> None:
    report, out = _laid_out("ci_ok", tmp_path)
    axes = curves_figure(report, out).axes
    steps = read_steps(out, report["runs"][0])
    gold = axes[1].get_lines()[0]
    assert axes[1].get_ylabel() == "% correct (answer checker)"
    assert list(gold.get_ydata()) == pytest.approx([100 * s["gold/accuracy"] for s in steps])  # 0.03125 -> 3.125
    accuracy = axes[2].get_lines()[0]
    curve = report["runs"][0]["accuracy"]["curve"]
    assert list(accuracy.get_ydata()) == pytest.approx([100 * e["eval/accuracy"] for e in curve])
    assert axes[2].get_ylim()[1] >= 10  # a percent axis, not 0..1


def test_clip_fraction_of_one_update_per_batch_is_left_out_and_said_why(tmp_path: Path) -> None:
    report, out = _laid_out("ci_ok", tmp_path)
    grpo, ppo = report["suite"]["algorithms"]
    assert updates_per_batch(grpo) == 1 and updates_per_batch(ppo) == 4  # 1 x 1; ppo_epochs 2 x 2 minibatches
    assert updates_per_batch({"name": "sft_more", "params": {"lr": 1e-4}}) is None
    clip = curves_figure(report, out).axes[5]
    assert clip.get_title() == "clip fraction" and clip.get_ylabel() == "% of tokens clipped"
    steps = read_steps(out, report["runs"][1])
    [points, _] = clip.get_lines()  # PPO's alone: its dots and its line
    assert list(points.get_ydata()) == pytest.approx([100 * s["clip_fraction"] for s in steps])
    [note] = [t.get_text() for t in clip.texts]
    assert note.startswith("left out: grpo_zero/seed0; 0 by construction")
    ppo["params"]["ppo_epochs"], ppo["params"]["num_minibatches"] = 1, 1
    clip = curves_figure(report, out).axes[5]
    assert not clip.get_lines()
    assert [t.get_text() for t in clip.texts] == [ONE_PASS + "\n(grpo_zero/seed0, ppo_rules/seed0)"]


def _collisions(fig) -> list[tuple[str, str]]:
    """Pairs of drawn texts (labels, tick labels) whose rendered boxes overlap, and texts crossed by
    a horizontal line segment (a bar's peak, a phase's tick) drawn in another place."""
    from matplotlib.collections import LineCollection
    from matplotlib.transforms import Bbox

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = []
    for ax in fig.axes:
        if not ax.axison:
            continue
        ticks = [tick.label1 for axis, (low, high) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim()))
                 for tick in axis.get_major_ticks() if min(low, high) <= tick.get_loc() <= max(low, high)]
        texts = [t for t in ax.texts + ticks if t.get_text().strip() and t.get_visible()]  # as drawn
        boxes += [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
        for collection in ax.collections:
            if isinstance(collection, LineCollection):
                for segment in collection.get_segments():
                    ends = ax.transData.transform(segment)
                    boxes.append(("line", Bbox([ends.min(0), ends.max(0)])))
    found = []
    for i, (a, box_a) in enumerate(boxes):
        for b, box_b in boxes[i + 1:]:
            if "line" in (a, b) and a == b:
                continue
            if box_a.overlaps(box_b):
                both = Bbox.intersection(box_a, box_b)
                if both is not None and both.width > 0.5 and both.height > 0.5:
                    found.append((a, b))
    return found


def test_five_runs_draw_without_overlapping_labels(tmp_path: Path) -> None:
    from rlbench.report.tradeoff_plot import tradeoff_figure

    report, out = _laid_out("accuracy_five", tmp_path)
    assert len(report["runs"]) == 5
    assert _collisions(memory_figure(report)) == []
    assert _collisions(curves_figure(report, out)) == []
    assert _collisions(tradeoff_figure(report)) == []


def test_a_control_arm_is_left_out_of_the_reward_panels(tmp_path: Path) -> None:
    report, out = _laid_out("accuracy_five", tmp_path)
    axes = curves_figure(report, out).axes
    # sft_more trains on gold demonstrations (reward 1.1, 100% correct at every step): not a reward it optimised
    assert len(axes[0].get_lines()) == len(axes[1].get_lines()) == 2 * 4  # dots and line of each RL run
    assert len(axes[4].get_lines()) == 2 * 5  # entropy: every run
    labels = [t.get_text() for t in axes[7].get_legend().get_texts()]
    assert labels[-1] == "sft_more/seed0: control arm, no reward, 3 steps"
