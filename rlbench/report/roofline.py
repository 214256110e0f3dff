"""Views of a run's `roofline` entry (rlbench/measure/roofline.py): each phase against its floor.

    floor_ratio(run)        # measured over floor, summed over the phases with a floor: 3.1
    roofline_markdown(report)  # summary.md's section: one row per run and phase
"""

from __future__ import annotations

from typing import Any

from rlbench.report.format import PHASE_ORDER, markdown_table, md_text, num


def floor_ratio(run: dict[str, Any]) -> float | None:
    """How far the run's phases are from their floors together: their measured seconds over the
    sum of their floors (None where the report has no roofline)."""
    phases = (run.get("roofline") or {}).values()
    floor = sum(p["floor_s"] for p in phases)
    return sum(p["measured_s"] for p in phases) / floor if floor else None


def _ordered(roofline: dict[str, Any]) -> list[str]:
    return [p for p in PHASE_ORDER if p in roofline] + [p for p in roofline if p not in PHASE_ORDER]


def roofline_markdown(report: dict[str, Any]) -> list[str]:
    """summary.md's lines: per run and phase, the floor, what binds it, the measured time, the ratio."""
    rows = []
    for run in report["runs"]:
        roofline = run.get("roofline") or {}
        for phase in _ordered(roofline):
            p = roofline[phase]
            rows.append([run["id"], phase, num(p.get("compute_s"), "{:.3f}"), num(p.get("memory_s"), "{:.3f}"),
                         num(p["floor_s"], "{:.3f}"), p["bound"], num(p["measured_s"], "{:.2f}"),
                         num(p["ratio"], "{:.1f}")])
        if roofline:
            rows.append([run["id"], "all phases", "", "", num(sum(p["floor_s"] for p in roofline.values()), "{:.3f}"),
                         "", num(sum(p["measured_s"] for p in roofline.values()), "{:.2f}"),
                         num(floor_ratio(run), "{:.1f}")])
    if not rows:
        return []
    bandwidths = sorted({f"{r['read_bytes_per_s'] / 1e9:,.1f} GB/s" for r in report["runs"] if r.get("read_bytes_per_s")})
    return ["", "## each phase against its floor", "",
            markdown_table(["run", "phase", "compute floor s", "memory floor s", "floor s", "bound", "measured s",
                            "measured / floor"], rows), "",
            md_text("Floors on this hardware over the whole run: compute = model FLOPs over the peak of the compute "
                    "dtype (see MFU); memory = the least bytes the phase reads (weights per decoding step and the "
                    "KV cache for generation; weights once per forward, twice per trained minibatch) over the "
                    "measured read bandwidth" + (f" ({'; '.join(bandwidths)})" if bandwidths else "")
                    + "; the floor is the larger. A ratio of 1 would be the machine's limit.")]
