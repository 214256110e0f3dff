"""tradeoffs.png: what each algorithm buys (Δ held-out accuracy) for what it costs.

Three panels side by side, one point per label (rlbench/report/tradeoffs.py): Δ held-out accuracy
in points with its 95% interval (vertical bar) against model FLOPs, training seconds and training
peak memory. RL recipes are filled circles, control arms (more SFT) hollow squares; the dashed
line is no change. Up is better, left is cheaper: a point up and to the left of another bought
more for less. A panel whose cost the report does not record says so.
"""

from __future__ import annotations

import math
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from rlbench.report.format import plot_text as _plain
from rlbench.report.format import primary_probe
from rlbench.report.tradeoffs import Tradeoff, delta_text, tradeoffs

# (Tradeoff attribute, x label, scale divisor)
COSTS = (
    ("flops", "model FLOPs (every role and phase)", 1.0),
    ("wall_seconds", "training seconds (the training loop, this machine)", 1.0),
    ("peak_bytes", "training peak memory (MiB; highest non-evaluation phase)", 2.0**20),
)


def tradeoff_figure(report: dict[str, Any], rows: list[Tradeoff] | None = None) -> Figure:
    """The figure of `tradeoffs(report)` (see the module docstring); rows without Δ are left out."""
    rows = [r for r in (tradeoffs(report) if rows is None else rows) if r.delta is not None]
    fig = Figure(figsize=(16, 5.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3, gridspec_kw={"left": 0.05, "right": 0.76, "top": 0.88, "bottom": 0.12,
                                           "wspace": 0.3})
    seeds = max((len(r.seeds) for r in rows), default=1)
    for ax, (attr, xlabel, scale) in zip(axes, COSTS):
        if attr == "flops":  # in units of a power of ten named in the label (no offset text to collide with it)
            scale, xlabel = _power_of_ten([r.flops for r in rows if r.flops], xlabel)
        drawn = 0
        for i, row in enumerate(rows):
            x = getattr(row, attr)
            if x is None:
                continue
            y = row.delta * 100
            yerr = None if row.ci95 is None else [[y - row.ci95[0] * 100], [row.ci95[1] * 100 - y]]
            colour = f"C{i % 10}"
            ax.errorbar([x / scale], [y], yerr=yerr, fmt="s" if row.control else "o", color=colour, markersize=8,
                        markerfacecolor="white" if row.control else colour, markeredgewidth=1.8, capsize=5,
                        elinewidth=1.6)
            drawn += 1
        ax.set_xlabel(xlabel, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))  # equal budgets put every point in a narrow range
        if not drawn:
            ax.text(0.5, 0.5, "not recorded in this report", ha="center", va="center", transform=ax.transAxes,
                    color="#777777")
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        ax.axhline(0.0, color="#777777", linestyle="--", linewidth=1)
        ax.set_ylabel("Δ held-out accuracy (points, 95% interval)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        ax.margins(x=0.2, y=0.15)
    handles = [Line2D([], [], marker="s" if r.control else "o", color=f"C{i % 10}", linestyle="none", markersize=8,
                      markerfacecolor="white" if r.control else f"C{i % 10}", markeredgewidth=1.8,
                      label=_plain(f"{r.label}: {delta_text(r)}" + (" (control)" if r.control else "")))
               for i, r in enumerate(rows)]
    handles.append(Line2D([], [], color="#777777", linestyle="--", label="no change"))
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.775, 0.88), fontsize=9, frameon=False,
               title="label: Δ acc (points) [95% CI]", title_fontsize=9, alignment="left")
    interval = ("the 95% interval over seeds\n(mean, Student's t)" if seeds > 1 else
                "the paired 95% interval over\nthe held-out problems (one seed)")
    fig.text(0.78, 0.12, _plain(f"bars: {interval}\nhollow squares: control arms\n(the same budget spent without RL)\n"
                                f"up: more accuracy; left: cheaper\nmemory probe: {primary_probe(report)}"),
             fontsize=8, va="bottom")
    fig.suptitle(_plain(f"{report['suite']['name']}: what each algorithm buys (Δ held-out accuracy) for what "
                        "it costs" + (f", mean over {seeds} seeds" if seeds > 1 else "")), fontsize=11)
    return fig


def _power_of_ten(values: list[float], label: str) -> tuple[float, str]:
    """(10^k, label naming it) for the largest of `values`: FLOPs of 2.6e11 are drawn as 2.6 'x 1e11'."""
    if not values:
        return 1.0, label
    exponent = math.floor(math.log10(max(values)))
    return 10.0**exponent, label.replace("FLOPs", f"FLOPs (x 1e{exponent})", 1)
