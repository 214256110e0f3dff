"""Plots and summary.md next to report.json: views of the report, re-rendered by `rlbench report`.

- memory_by_role.png: one stacked bar per run (per rank when the run carries per-rank memory),
  adding up to the measured process peak: the baseline (what the process held before any model
  was loaded: interpreter, libraries), each role's static bytes (weights, gradients, optimizer
  state, computed from its tensors; solid, in the role's colour), the transient of the phase
  where the process peaked (activations, logits, temporaries: its rise above the phase's start;
  hatched, in the colour of the role that phase belongs to) and the rest ("other": allocator
  slack, caches, memory no role accounts for). Two marks on the bar's left edge give the training
  peak (the highest phase that is not an evaluation; solid) and the evaluation peak (dashed;
  rlbench/report/peaks.py), their values and phases in the bar's label below the axis. The other phases' peaks are short ticks at the bar's right
  edge, each labelled with the phase and its transient. This is the lecture's PPO vs
  GRPO vs GRPO-Zero memory picture, measured.
  Per-rank memory: a run entry may carry `ranks`, a list of {"rank": int, "roles": ...,
  "memory": ...} shaped like the run's own `roles` and `memory`; each rank is then its own bar.
- curves.png: the training curves from each run's steps.jsonl: rlbench/report/curves.py.
- tradeoffs.png: what each algorithm buys (Δ held-out accuracy with its 95% interval) for what it
  costs (FLOPs, training seconds, training peak memory): rlbench/report/tradeoff_plot.py; left out,
  with one line saying why, when no run measured held-out accuracy (shape models).
- summary.md: rlbench/report/summary.py.

Text from the report (suite name, labels, phases) is drawn literally: `$` is escaped so mathtext
never parses it. matplotlib draws with the Agg backend through `Figure` objects: no display, no
global state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from rlbench.report.curves import budget_unit, consumed, curves_figure, read_steps, shared_rate, smooth
from rlbench.report.format import ROLE_SHORT, primary_probe
from rlbench.report.format import plot_text as plain
from rlbench.report.peaks import split_peak
from rlbench.report.summary import _roles_in_order, role_segments, summary_markdown

__all__ = ["budget_unit", "consumed", "curves_figure", "plain", "read_steps", "role_segments", "shared_rate",
           "smooth"]  # the curves (rlbench/report/curves.py) and the per-role segments shared with summary.md

ROLE_COLOURS = {"policy": "#1f77b4", "reference": "#7f7f7f", "reward": "#d62728", "value": "#2ca02c",
                "rollout": "#9467bd"}
BASELINE_COLOUR, OTHER_COLOUR = "#e3e3e3", "#fdf1d6"
MIB = 2**20
BAR_WIDTH = 0.5  # of the 1 between bars: the rest holds the labels of the other phases' peaks
SPLIT_LINES = {"training": ("training peak: the highest phase\nthat is not an evaluation", "#b35806", "-"),
               "evaluation": ("evaluation peak", "#542788", "--")}
"""How memory_by_role.png draws the training and the evaluation peak: legend label, colour, line style."""


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
    training: tuple[str, int] | None = None  # (phase, bytes): the training peak (rlbench/report/peaks.py)
    evaluation: tuple[str, int] | None = None  # (phase, bytes): the evaluation peak

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
    bar.training, bar.evaluation = split_peak(entry, probe, False), split_peak(entry, probe, True)
    marked = {peak_phase, *(found[0] for found in (bar.training, bar.evaluation) if found)}
    for role in _roles_in_order(roles):
        for phase, ph in (roles[role].get("phases") or {}).items():
            peak = (ph.get("peak_bytes") or {}).get(probe)
            if phase not in marked and peak is not None:
                bar.markers.append((phase, int(peak), int((ph.get("rise_bytes") or {}).get(probe, 0))))
    return bar


def memory_figure(report: dict[str, Any]) -> Figure:
    """Stacked bars adding up to each run's process peak, by role (see the module docstring)."""
    probe = primary_probe(report)
    bars = [bar for run in report["runs"] for bar in memory_bars(run, probe)]
    tallest = max([b.peak or sum(s for _, s in b.statics) for b in bars] + [1])
    unit, scale = ("GiB", 2**30) if tallest >= 4 * 2**30 else ("MiB", MIB)
    fig = Figure(figsize=(max(9.0, 3.0 * len(bars) + 4.5), 6.2), layout="constrained")  # room for the ticks' labels
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
            ax.bar(x, height, bottom=bottom, width=BAR_WIDTH, color=colour, hatch=hatch, linewidth=0.6,
                   edgecolor="#555555" if hatch else "black", alpha=0.55 if hatch == "//" else 1.0)
            short = height <= 0.07 * top
            if text and (not short or hatch == "//"):  # the peak phase is always named, on one line if need be
                ax.text(x, bottom + height / 2, plain(text.replace("\n", " ") if short else text), ha="center",
                        va="center", fontsize=7 if short else 8,
                        bbox={"facecolor": "white", "alpha": 0.75, "edgecolor": "none", "pad": 1.5})
            bottom += height
        if bar.reconciled:
            ax.text(x - BAR_WIDTH / 2 + 0.01, bar.baseline / scale / 2, f"baseline\n{bar.baseline / scale:,.1f}", ha="left",
                    va="center", fontsize=7, color="#444444")
            ax.hlines(bar.peak / scale, x - BAR_WIDTH / 2 - 0.02, x + BAR_WIDTH / 2 + 0.02, colors="black", linewidth=2.0)
            _phase_markers(ax, x, bar, scale, top)
            _split_peaks(ax, x, bar, scale)
        head = f"{bar.peak / scale:,.1f} {unit} peak" if bar.reconciled else f"static {bottom:,.1f} {unit}"
        ax.text(x, (bar.peak / scale if bar.reconciled else bottom) + 0.012 * top,
                plain(head if bar.status == "ok" else f"{head}\n({bar.status})" if bottom else bar.status),
                ha="center", va="bottom", fontsize=9, fontweight="bold", color="black" if bar.status == "ok" else "red")
    ticks = [plain(_tick(bar, unit, scale)) for bar in bars]
    ax.set_xticks(range(len(bars)), ticks, fontsize=9)
    ax.set_xlim(-0.6, len(bars) - 0.1)
    ax.set_ylim(0, top * 1.12)
    ax.set_xlabel("run (label/seed; roles held; training and evaluation peaks)")
    ax.set_ylabel(f"memory at the process peak ({unit})")
    ax.set_title(f"{plain(report['suite']['name'])}: process peak memory by role ({plain(probe)} probe)\n"
                 "each bar adds up to the measured process peak;\nmarks on its left: the training peak (the highest "
                 "phase but evaluation) and the evaluation peak;\nticks on the right: the other phases' peaks "
                 "(phase +transient)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    handles = [Patch(facecolor=BASELINE_COLOUR, edgecolor="black", label="baseline: before any model loaded")]
    handles += [Patch(facecolor=ROLE_COLOURS.get(r, "#8c564b"), edgecolor="black", label=f"{plain(r)}: static bytes")
                for r in roles_seen]
    handles += [Patch(facecolor="white", edgecolor="#555555", hatch="//",
                      label="transient of the peak phase\n(role's colour)"),
                Patch(facecolor=OTHER_COLOUR, edgecolor="#555555", hatch="..",
                      label="other: not attributed\n(allocator slack, caches)")]
    handles += [Line2D([], [], color=colour, linestyle=style, linewidth=2.0, label=label)
                for label, colour, style in SPLIT_LINES.values()]
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
        ax.hlines(peak / scale, x + 0.1, x + BAR_WIDTH / 2 + 0.02, colors="#222222", linewidth=1.2)
        ax.plot([x + BAR_WIDTH / 2 + 0.02, x + BAR_WIDTH / 2 + 0.07], [peak / scale, y - shift], color="#888888",
                linewidth=0.6)
        ax.text(x + BAR_WIDTH / 2 + 0.08, y - shift, plain(f"{phase} +{rise / scale:,.1f}"), ha="left", va="center", fontsize=7)


def _split_peaks(ax: Any, x: float, bar: MemoryBar, scale: float) -> None:
    """The training and evaluation peaks as short marks on the bar's left edge (their values are in
    the bar's tick label: `_tick`), so that no mark crosses a label drawn inside the bar."""
    for kind, found in (("training", bar.training), ("evaluation", bar.evaluation)):
        if found:
            _, colour, style = SPLIT_LINES[kind]
            ax.hlines(found[1] / scale, x - BAR_WIDTH / 2 - 0.03, x - BAR_WIDTH / 2 + 0.05, colors=colour,
                      linestyles=style, linewidth=2.5)


def _tick(bar: MemoryBar, unit: str = "MiB", scale: float = MIB) -> str:
    """The bar's label: run, roles held, and its training and evaluation peaks with their phases."""
    held = "+".join(ROLE_SHORT.get(r, r[:3]) for r, _ in bar.statics)
    peaks = [f"{name} {found[1] / scale:,.1f} {unit} ({found[0]})"
             for name, found in (("train", bar.training), ("eval", bar.evaluation)) if found]
    return (bar.label + (f"\n{held}" if held else "") + "".join(f"\n{p}" for p in peaks)
            + ("" if bar.status == "ok" else f"\n({bar.status})"))


def write_plots(report: dict[str, Any], out_dir: str | Path, report_dir: str | Path | None = None,
                skipped: Callable[[str], None] | None = None) -> list[Path]:
    """Render memory_by_role.png, curves.png, tradeoffs.png and summary.md into `out_dir`; each run's
    run_dir is found under `report_dir` (default: `out_dir`, the report's own directory). A report
    with no held-out accuracy gets no tradeoffs.png: `skipped` is told why. Returns the paths written."""
    from rlbench.report.accuracy_view import sft_curve_points
    from rlbench.report.tradeoff_plot import tradeoff_figure
    from rlbench.report.tradeoffs import no_accuracy_reason, tradeoffs

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = [("memory_by_role.png", memory_figure(report)),
               ("curves.png", curves_figure(report, Path(report_dir or out_dir)))]
    if sft_curve_points(report):
        figures.append(("sft_curve.png", sft_curve_figure(report)))
    rows = tradeoffs(report)
    why = no_accuracy_reason(rows)
    if why is None:
        figures.append(("tradeoffs.png", tradeoff_figure(report, rows)))
    elif skipped is not None:
        skipped(why)
    paths = []
    for name, fig in figures:
        fig.savefig(out_dir / name, dpi=110)
        paths.append(out_dir / name)
    summary = out_dir / "summary.md"
    summary.write_text(summary_markdown(report))
    paths.append(summary)
    return paths


def sft_curve_figure(report: dict[str, Any]) -> Figure:
    """Dev accuracy and training loss of the SFT stage on a fixed demonstration set against its
    step, the kept step marked (`stages.sft`)."""
    sft = report["stages"]["sft"]
    curve = sft["sft/curve"]
    steps = [p["step"] for p in curve]
    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(steps, [p["dev_accuracy"] * 100 for p in curve], "o-", color="C0", label="dev accuracy %")
    ax.axvline(sft["sft/best_step"], color="C2", linestyle="--", label=f"kept step {sft['sft/best_step']}")
    ax.set_xlabel(f"SFT step ({curve[-1]['epoch']:.0f} epochs over the demonstrations at step {steps[-1]})")
    ax.set_ylabel("dev accuracy %")
    loss = ax.twinx()
    loss.plot(steps, [p["train_loss"] for p in curve], "s:", color="C1", label="train loss")
    loss.set_ylabel("train loss (mean since the last evaluation)")
    handles = ax.get_legend_handles_labels()[0] + loss.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="center right", fontsize=8)
    ax.set_title(f"SFT on {sft['sft/demonstrations']} demonstrations: stopped at step {sft['sft/stopped_step']} "
                 f"by {sft['sft/stopped_by']}", fontsize=10)
    fig.tight_layout()
    return fig
