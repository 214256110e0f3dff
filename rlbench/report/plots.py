"""Plots and summary.md next to report.json: views of the report, re-rendered by `rlbench report`.

- memory_by_role.png: one stacked bar per run (per rank when the run carries per-rank memory),
  adding up to the measured process peak: the baseline (what the process held before any model
  was loaded: interpreter, libraries), each role's static bytes (weights, gradients, optimizer
  state, computed from its tensors; solid, in the role's colour), the transient of the phase
  where the process peaked (activations, logits, temporaries: its rise above the phase's start;
  hatched, in the colour of the role that phase belongs to) and the rest ("other": allocator
  slack, caches, memory no role accounts for). The other phases' peaks are short ticks at the
  bar's right edge, each labelled with the phase and its transient. This is the lecture's PPO vs
  GRPO vs GRPO-Zero memory picture, measured.
  Per-rank memory: a run entry may carry `ranks`, a list of {"rank": int, "roles": ...,
  "memory": ...} shaped like the run's own `roles` and `memory`; each rank is then its own bar.
- curves.png: one panel per quantity (optimised reward, gold reward, held-out accuracy, KL to the
  reference, entropy, clip fraction, response length) from each run's steps.jsonl and evaluations,
  against steps, with the suite's budget unit on the top axis (or on the x axis when steps map to
  it differently per run); a light centred moving average as the line, every step as a dot.
- summary.md: rlbench/report/summary.py.

Text from the report (suite name, labels, phases) is drawn literally: `$` is escaped so mathtext
never parses it. matplotlib draws with the Agg backend through `Figure` objects: no display, no
global state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from rlbench.config.schema import BUDGET_LIMITS, MACHINE_BOUND_LIMITS
from rlbench.report.format import ROLE_SHORT, primary_probe
from rlbench.report.summary import _roles_in_order, role_segments, summary_markdown

__all__ = ["role_segments"]  # per-role static and peak-phase transient, shared with summary.md

ROLE_COLOURS = {"policy": "#1f77b4", "reference": "#7f7f7f", "reward": "#d62728", "value": "#2ca02c",
                "rollout": "#9467bd"}
BASELINE_COLOUR, OTHER_COLOUR = "#e3e3e3", "#fdf1d6"
MIB = 2**20


def plain(text: Any) -> str:
    """Report text for matplotlib, shown literally: every `$` escaped, so no mathtext is parsed."""
    return str(text).replace("$", r"\$")


# ---- memory -------------------------------------------------------------------------------------


@dataclass
class MemoryBar:
    """One bar of the memory figure. When `reconciled`, baseline + statics + transient + other is the
    process peak; otherwise only the static bytes are known (a run that did not finish)."""

    label: str
    status: str
    statics: list[tuple[str, int]]
    baseline: int = 0
    transient: tuple[str, str, int] | None = None  # (role, phase, bytes) of the phase where the process peaked
    other: int = 0
    peak: int | None = None
    markers: list[tuple[str, int, int]] = field(default_factory=list)  # (phase, its peak, its transient)

    @property
    def reconciled(self) -> bool:
        return self.peak is not None


def memory_bars(run: dict[str, Any], probe: str) -> list[MemoryBar]:
    """The run's bar, or one bar per rank when the run carries per-rank memory (`ranks`)."""
    ranks = run.get("ranks") or []
    if ranks:
        return [_bar(f"{run['id']}\nrank {entry.get('rank', i)}", run.get("status", "?"), entry, probe)
                for i, entry in enumerate(ranks)]
    return [_bar(run["id"], run.get("status", "?"), run, probe)]


def _bar(label: str, status: str, entry: dict[str, Any], probe: str) -> MemoryBar:
    roles = entry.get("roles") or {}
    bar = MemoryBar(label, str(status), [(r, int(roles[r]["static"]["total"])) for r in _roles_in_order(roles)])
    recon = ((entry.get("memory") or {}).get("reconciliation") or {}).get(probe)
    if not recon:
        return bar
    peak_phase = recon["peak_phase"]
    owner = next((r for r in roles if peak_phase in (roles[r].get("phases") or {})), "")
    bar.baseline, bar.other, bar.peak = recon["baseline_bytes"], recon["other_bytes"], recon["process_peak_bytes"]
    bar.transient = (owner, peak_phase, recon["peak_phase_transient_bytes"])
    for role in _roles_in_order(roles):
        for phase, ph in (roles[role].get("phases") or {}).items():
            peak = (ph.get("peak_bytes") or {}).get(probe)
            if phase != peak_phase and peak is not None:
                bar.markers.append((phase, int(peak), int((ph.get("rise_bytes") or {}).get(probe, 0))))
    return bar


def memory_figure(report: dict[str, Any]) -> Figure:
    """Stacked bars adding up to each run's process peak, by role (see the module docstring)."""
    probe = primary_probe(report)
    bars = [bar for run in report["runs"] for bar in memory_bars(run, probe)]
    tallest = max([b.peak or sum(s for _, s in b.statics) for b in bars] + [1])
    unit, scale = ("GiB", 2**30) if tallest >= 4 * 2**30 else ("MiB", MIB)
    fig = Figure(figsize=(max(9.0, 2.3 * len(bars) + 4.5), 6.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    top = tallest / scale
    roles_seen: list[str] = []
    for x, bar in enumerate(bars):
        segments = [(bar.baseline, BASELINE_COLOUR, None, "")] if bar.reconciled else []
        segments += [(s, ROLE_COLOURS.get(r, "#8c564b"), None, "") for r, s in bar.statics]
        roles_seen += [r for r, _ in bar.statics if r not in roles_seen]
        if bar.transient:
            role, phase, size = bar.transient
            segments.append((max(size, 0), ROLE_COLOURS.get(role, "#8c564b"), "//",
                             f"{phase} (peak phase)\ntransient +{size / scale:,.1f}"))
        if bar.reconciled:
            segments.append((max(bar.other, 0), OTHER_COLOUR, "..", f"other\n{bar.other / scale:,.1f}"))
        bottom = 0.0
        for size, colour, hatch, text in segments:
            height = size / scale
            ax.bar(x, height, bottom=bottom, width=0.55, color=colour, hatch=hatch, linewidth=0.6,
                   edgecolor="#555555" if hatch else "black", alpha=0.55 if hatch == "//" else 1.0)
            short = height <= 0.07 * top
            if text and (not short or hatch == "//"):  # the peak phase is always named, on one line if need be
                ax.text(x, bottom + height / 2, plain(text.replace("\n", " ") if short else text), ha="center",
                        va="center", fontsize=7 if short else 8,
                        bbox={"facecolor": "white", "alpha": 0.75, "edgecolor": "none", "pad": 1.5})
            bottom += height
        if bar.reconciled:
            ax.text(x - 0.26, bar.baseline / scale / 2, f"baseline\n{bar.baseline / scale:,.1f}", ha="left",
                    va="center", fontsize=7, color="#444444")
            ax.hlines(bar.peak / scale, x - 0.3, x + 0.3, colors="black", linewidth=2.0)
            _phase_markers(ax, x, bar, scale, top)
        head = f"{bar.peak / scale:,.1f} {unit} peak" if bar.reconciled else f"static {bottom:,.1f} {unit}"
        ax.text(x, (bar.peak / scale if bar.reconciled else bottom) + 0.012 * top,
                plain(head if bar.status == "ok" else f"{head}\n({bar.status})" if bottom else bar.status),
                ha="center", va="bottom", fontsize=9, fontweight="bold", color="black" if bar.status == "ok" else "red")
    ticks = [plain(_tick(bar)) for bar in bars]
    ax.set_xticks(range(len(bars)), ticks, fontsize=9)
    ax.set_xlim(-0.6, len(bars) - 0.1)
    ax.set_ylim(0, top * 1.12)
    ax.set_xlabel("run (label/seed; roles held)")
    ax.set_ylabel(f"memory at the process peak ({unit})")
    ax.set_title(f"{plain(report['suite']['name'])}: process peak memory by role ({plain(probe)} probe)\n"
                 "each bar adds up to the measured peak;\nticks on the right: the other phases' peaks "
                 "(phase +transient)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    handles = [Patch(facecolor=BASELINE_COLOUR, edgecolor="black", label="baseline: before any model loaded")]
    handles += [Patch(facecolor=ROLE_COLOURS.get(r, "#8c564b"), edgecolor="black", label=f"{plain(r)}: static bytes")
                for r in roles_seen]
    handles += [Patch(facecolor="white", edgecolor="#555555", hatch="//",
                      label="transient of the peak phase\n(role's colour)"),
                Patch(facecolor=OTHER_COLOUR, edgecolor="#555555", hatch="..",
                      label="other: not attributed\n(allocator slack, caches)")]
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def _phase_markers(ax: Any, x: float, bar: MemoryBar, scale: float, top: float) -> None:
    """Ticks at the other phases' peaks on the bar's right edge, labels spread so none overlap."""
    marks = sorted(bar.markers, key=lambda m: m[1])
    gap, ys = 0.035 * top, []
    for _, peak, _ in marks:
        ys.append(max(peak / scale, ys[-1] + gap if ys else 0.0))
    shift = max(0.0, (ys[-1] if ys else 0) - (top * 1.1))
    for (phase, peak, rise), y in zip(marks, ys):
        ax.hlines(peak / scale, x + 0.12, x + 0.3, colors="#222222", linewidth=1.2)
        ax.plot([x + 0.3, x + 0.36], [peak / scale, y - shift], color="#888888", linewidth=0.6)
        ax.text(x + 0.37, y - shift, plain(f"{phase} +{rise / scale:,.1f}"), ha="left", va="center", fontsize=7)


def _tick(bar: MemoryBar) -> str:
    held = "+".join(ROLE_SHORT.get(r, r[:3]) for r, _ in bar.statics)
    return bar.label + (f"\n{held}" if held else "") + ("" if bar.status == "ok" else f"\n({bar.status})")


# ---- curves -------------------------------------------------------------------------------------

# (steps.jsonl key, or "eval" for held-out evaluations; panel title; y label)
PANELS = (
    ("reward/mean", "optimised reward", "mean reward per step\n(rule reward or reward-model score)"),
    ("gold/accuracy", "gold reward", "fraction correct (answer checker)"),
    ("eval", "held-out accuracy", "greedy pass@1 ± standard error"),
    ("kl/k1", "KL to the reference", "nats per token (k1 estimate)"),
    ("learning/entropy", "entropy", "nats per token"),
    ("clip_fraction", "clip fraction", "fraction of tokens clipped"),
    ("learning/completion_length", "response length", "tokens per completion"),
)
FRACTIONS = {"gold/accuracy", "eval", "clip_fraction"}
UNIT_LABELS = {"completions": "completions consumed", "tokens": "tokens generated (mean length x completions)",
               "wall_seconds": "seconds of RL (sum of step times)", "flops": "model FLOPs (every role and phase)"}


def read_steps(report_dir: Path, run: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's per-step metrics from <report dir>/<run_dir>/steps.jsonl ([] when absent)."""
    if not run.get("run_dir"):
        return []
    path = report_dir / run["run_dir"] / "steps.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut off by a crash ends the usable part
    return [r for r in rows if isinstance(r, dict) and isinstance(r.get("step"), (int, float))]


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
    for i, (run, steps) in enumerate(zip(runs, steps_of)):
        colour = f"C{i % 10}"
        xs = [float(s["step"]) for s in steps] if by_steps else consumed(steps, unit)
        for ax, (key, _, _) in zip(axes, PANELS):
            if key == "eval":
                _eval_points(ax, run, steps, xs, by_steps, colour)
                continue
            points = [(x, s[key]) for x, s in zip(xs, steps) if isinstance(s.get(key), (int, float))]
            if not points:
                continue
            px, py = zip(*points)
            ax.plot(px, py, linestyle="none", marker="o", markersize=2.5, alpha=0.35, color=colour)
            ax.plot(px, smooth(list(py), window), color=colour, linewidth=1.6)
        config = algorithms[run["algorithm_index"]] if run.get("algorithm_index") is not None and \
            run["algorithm_index"] < len(algorithms) else {}
        axes[-1].plot([], [], color=colour, linewidth=2, label=plain(
            f"{run['id']}: reward {config.get('reward', '?')}, {len(steps)} steps" + (
                "" if run.get("status") == "ok" else f" ({run.get('status')})")))
    xlabel = "step" if by_steps else UNIT_LABELS[unit]
    for ax, (key, title, ylabel) in zip(axes, PANELS):
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.grid(alpha=0.3)
        if not ax.has_data():
            ax.text(0.5, 0.5, "not logged by these runs", ha="center", va="center", transform=ax.transAxes,
                    color="#777777")
        elif key in FRACTIONS:
            ax.set_ylim(-0.02, max(ax.get_ylim()[1], 0.1) * 1.05)
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
    ax.errorbar(x, [e["eval/accuracy"] for e in points], yerr=[e.get("eval/accuracy_stderr_binomial", 0.0) for e in points],
                color=colour, marker="o", markersize=4, capsize=3, linewidth=1.4)


def write_plots(report: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Render memory_by_role.png, curves.png and summary.md into `out_dir` (the report's directory,
    where each run's run_dir is found); returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in (("memory_by_role.png", memory_figure(report)), ("curves.png", curves_figure(report, out_dir))):
        fig.savefig(out_dir / name, dpi=110)
        paths.append(out_dir / name)
    summary = out_dir / "summary.md"
    summary.write_text(summary_markdown(report))
    paths.append(summary)
    return paths
