"""curves.png: the training curves of every run of a report, from each run's steps.jsonl.

One panel per quantity (optimised reward, gold reward, held-out accuracy, KL to the reference,
entropy, clip fraction, response length) against steps, with the suite's budget unit on the top
axis (or on the x axis when steps map to it differently per run); a light centred moving average
as the line, every step as a dot. Fractions are drawn in percent, as the tables show them. The
clip fraction of a run that takes one optimizer step per batch is 0 by construction (the policy
that is trained is the one that sampled: the ratio is 1), so such a run is left out of that panel,
which says so. A control arm (more SFT) optimises no reward and trains on gold demonstrations,
which score full reward by construction: it is left out of the two reward panels.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from rlbench.config.schema import BUDGET_LIMITS, MACHINE_BOUND_LIMITS
from rlbench.report.format import plot_text as plain
from rlbench.report.sanity import finite_number
from rlbench.report.tradeoffs import CONTROL_ARMS

# (steps.jsonl key, or "eval" for held-out evaluations; panel title; y label)
PANELS = (
    ("reward/mean", "optimised reward", "mean reward per step\n(rule reward or reward-model score)"),
    ("gold/accuracy", "gold reward", "% correct (answer checker)"),
    ("eval", "held-out accuracy", "greedy pass@1 % ± standard error"),
    ("kl/k1", "KL to the reference", "nats per token (k1 estimate)"),
    ("learning/entropy", "entropy", "nats per token"),
    ("clip_fraction", "clip fraction", "% of tokens clipped"),
    ("learning/completion_length", "response length", "tokens per completion"),
)
PERCENT = {"gold/accuracy", "eval", "clip_fraction"}
REWARDS = {"reward/mean", "gold/accuracy"}
"""Panels a control arm is left out of: it optimises no reward, and its gold demonstrations score in full."""
"""Fractions drawn in percent, as the tables show them."""
ONE_PASS = ("0 by construction: one update per batch\n(epochs x minibatches = 1), so the\n"
            "probability ratio is 1 and nothing is clipped")
UNIT_LABELS = {"completions": "completions consumed", "tokens": "tokens generated (mean length x completions)",
               "wall_seconds": "seconds of RL (sum of step times)", "flops": "model FLOPs (every role and phase)"}


def read_steps(report_dir: Path, run: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's per-step metrics from <report dir>/<run_dir>/steps.jsonl ([] when absent or
    unreadable). Rows are what a worker writes: numbers by name, `step` a whole number; anything
    else in a crafted or damaged file (text, lists, NaN, numbers beyond a float) is left out."""
    if not isinstance(run.get("run_dir"), str) or not run["run_dir"]:
        return []
    path = report_dir / run["run_dir"] / "steps.jsonl"
    try:
        lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    except OSError:  # absent, a directory, unreadable
        return []
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            break  # a line cut off by a crash ends the usable part
        if isinstance(row, dict):
            numbers = {k: v for k, v in row.items() if finite_number(v)}
            if isinstance(numbers.get("step"), int) or (finite_number(numbers.get("step")) and float(row["step"]).is_integer()):
                rows.append(dict(numbers, step=int(numbers["step"])))
    return rows


def budget_unit(report: dict[str, Any]) -> str:
    """The suite's budget unit: the first of completions, tokens, flops, wall_seconds it sets;
    completions (the default fairness unit) when it sets steps only."""
    budget = (report.get("suite") or {}).get("budget") or {}
    units = [k for k in BUDGET_LIMITS if k != "steps" and k not in MACHINE_BOUND_LIMITS] + list(MACHINE_BOUND_LIMITS)
    return next((k for k in units if budget.get(k) is not None), "completions")


def consumed(steps: list[dict[str, Any]], unit: str) -> list[float]:
    """The budget consumed after each step, in `unit`."""
    out, total, before = [], 0.0, 0.0
    for s in steps:
        if unit == "completions":
            total = float(s.get("completions", 0))
        elif unit == "tokens":
            now = float(s.get("completions", 0))
            total += (now - before) * float(s.get("learning/completion_length", 0.0))
            before = now
        elif unit == "flops":
            total = float(s.get("flops", 0))  # cumulative, as each step records it
        else:
            total += float(s.get("time/step_s", 0.0))
        out.append(total)
    return out


def shared_rate(runs_steps: list[list[dict[str, Any]]], unit: str) -> float | None:
    """Units per step when every run consumes the same amount each step (so one top axis fits all)."""
    rates = set()
    for steps in runs_steps:
        for s, value in zip(steps, consumed(steps, unit)):
            rates.add(round(value / s["step"], 6) if s["step"] else None)
    rates.discard(None)
    return rates.pop() if len(rates) == 1 else None


def smooth(values: list[float], window: int) -> list[float]:
    """Centred moving average over `window` points (odd), shorter at the ends."""
    half = window // 2
    return [sum(values[max(0, i - half):i + half + 1]) / len(values[max(0, i - half):i + half + 1])
            for i in range(len(values))]


def curves_figure(report: dict[str, Any], report_dir: Path) -> Figure:
    """One panel per training quantity (see PANELS), every run in each, against steps and budget."""
    fig = Figure(figsize=(17, 8.5))  # fixed margins: a constrained layout took 3x as long to draw
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 4, gridspec_kw={"left": 0.05, "right": 0.99, "top": 0.88, "bottom": 0.06,
                                           "wspace": 0.3, "hspace": 0.52}).flatten()
    runs = report["runs"]
    steps_of = [read_steps(report_dir, run) for run in runs]
    unit = budget_unit(report)
    rate = shared_rate([s for s in steps_of if s], unit)
    by_steps = rate is not None or not any(steps_of)
    longest = max([len(s) for s in steps_of] + [1])
    window = 2 * (longest // 20) + 1
    algorithms = (report.get("suite") or {}).get("algorithms") or []
    one_pass: list[str] = []  # runs whose clip fraction is 0 by construction, left out of its panel
    for i, (run, steps) in enumerate(zip(runs, steps_of)):
        colour = f"C{i % 10}"
        xs = [float(s["step"]) for s in steps] if by_steps else consumed(steps, unit)
        config = algorithms[run["algorithm_index"]] if run.get("algorithm_index") is not None and \
            run["algorithm_index"] < len(algorithms) else {}
        control = run.get("algorithm") in CONTROL_ARMS
        for ax, (key, _, _) in zip(axes, PANELS):
            if key == "eval":
                _eval_points(ax, run, steps, xs, by_steps, colour)
                continue
            if control and key in REWARDS:
                continue  # its demonstrations are gold: they score full reward by construction
            scale = 100.0 if key in PERCENT else 1.0
            points = [(x, s[key] * scale) for x, s in zip(xs, steps) if isinstance(s.get(key), (int, float))]
            if not points:
                continue
            if key == "clip_fraction" and updates_per_batch(config) == 1:
                one_pass.append(run["id"])
                continue
            px, py = zip(*points)
            ax.plot(px, py, linestyle="none", marker="o", markersize=2.5, alpha=0.35, color=colour)
            ax.plot(px, smooth(list(py), window), color=colour, linewidth=1.6)
        what = "control arm, no reward" if control else f"reward {config.get('reward', '?')}"
        axes[-1].plot([], [], color=colour, linewidth=2, label=plain(textwrap.fill(
            f"{run['id']}: {what}, {len(steps)} steps" + (
                "" if run.get("status") == "ok" else f" ({run.get('status')})"), 52)))
    xlabel = "step" if by_steps else UNIT_LABELS[unit]
    for ax, (key, title, ylabel) in zip(axes, PANELS):
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.grid(alpha=0.3)
        if key == "clip_fraction" and one_pass:
            _one_pass_note(ax, one_pass)
        if not ax.has_data():  # a panel with nothing drawn says why, with no axis to read
            if not (key == "clip_fraction" and one_pass):
                ax.text(0.5, 0.5, "not logged by these runs", ha="center", va="center", transform=ax.transAxes,
                        color="#777777")
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        if key in PERCENT:
            ax.set_ylim(-2.0, max(ax.get_ylim()[1], 10.0) * 1.05)
        if by_steps:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if by_steps and rate:
            top = ax.secondary_xaxis("top", functions=(lambda s, r=rate: s * r, lambda u, r=rate: u / r))
            top.set_xlabel(UNIT_LABELS[unit], fontsize=8)
            top.tick_params(labelsize=7)
        ax.tick_params(labelsize=7)
    legend_ax = axes[-1]
    legend_ax.axis("off")
    legend_ax.legend(loc="upper left", fontsize=8, frameon=False, title="runs", title_fontsize=9)
    smoothing = f"lines: centred moving average over {window} steps; dots: every step" if window > 1 \
        else "lines join every step (too few steps to smooth); dots: every step"
    legend_ax.text(0.0, 0.15, smoothing + ("" if by_steps else
                   f"\nx: {UNIT_LABELS[unit]} (steps map to it differently per run)"),
                   transform=legend_ax.transAxes, fontsize=8, va="top", wrap=True)
    fig.suptitle(f"{plain(report['suite']['name'])}: training curves against "
                 + ("steps (top axis: " + UNIT_LABELS[unit] + ")" if by_steps and rate else xlabel), fontsize=11)
    return fig


def updates_per_batch(config: dict[str, Any]) -> int | None:
    """Optimizer steps a run takes on each batch of completions: epochs (num_iterations, ppo_epochs)
    x num_minibatches; None for a recipe without them (sft_more). At 1 the policy that is trained
    is the one that sampled, so the probability ratio is exactly 1 and the clip fraction 0."""
    params = config.get("params") or {}
    epochs = params.get("num_iterations", params.get("ppo_epochs"))
    minibatches = params.get("num_minibatches")
    return None if epochs is None or minibatches is None else int(epochs) * int(minibatches)


def _one_pass_note(ax: Any, runs: list[str]) -> None:
    """Say in the clip-fraction panel which runs are left out of it, and why."""
    if ax.has_data():
        note = textwrap.fill(f"left out: {', '.join(runs)}; " + ONE_PASS.replace("\n", " "), 48)
        ax.text(0.02, 0.97, plain(note), transform=ax.transAxes, ha="left", va="top", fontsize=6.5,
                color="#555555", bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1.5})
    else:
        ax.text(0.5, 0.5, ONE_PASS + ("" if len(runs) > 3 else "\n(" + plain(", ".join(runs)) + ")"),
                ha="center", va="center", transform=ax.transAxes, fontsize=8, color="#555555")


def _eval_points(ax: Any, run: dict[str, Any], steps: list[dict[str, Any]], xs: list[float], by_steps: bool,
                 colour: str) -> None:
    curve = (run.get("accuracy") or {}).get("curve") or run.get("evals") or []
    points = [e for e in curve if isinstance(e.get("eval/accuracy"), (int, float)) and "step" in e]
    if not points:
        return
    if by_steps:
        x = [float(e["step"]) for e in points]
    else:  # the budget consumed at the evaluation's step (0 before the first)
        at = {float(s["step"]): v for s, v in zip(steps, xs)}
        x = [at.get(float(e["step"]), 0.0) for e in points]
    ax.errorbar(x, [e["eval/accuracy"] * 100 for e in points],
                yerr=[e.get("eval/accuracy_stderr_binomial", 0.0) * 100 for e in points],
                color=colour, marker="o", markersize=4, capsize=3, linewidth=1.4)
