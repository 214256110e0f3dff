"""summary.md's per-rank section: where each rank of a distributed run ran, and its memory.

One table of the ranks (node rank, local rank, host, status, static MiB per role, process peak),
then one of each rank's phases: the peak, the rise over all calls and the rise over the calls after
the first (`steady_rise_bytes`: a phase's first call also pages in library code and makes one-time
heap, so this is the figure a per-rank estimate meets; `rlbench/estimate/check.py`). A report
written before node ranks or steady rises were recorded shows "-" for them.
"""

from __future__ import annotations

from typing import Any

from rlbench.report.format import PHASE_ORDER, ROLE_ORDER, markdown_table, md_text, mib


def _text(value: Any) -> str:
    return "-" if value is None else str(value)


def _phase_key(phase: str) -> tuple[int, str]:
    return (PHASE_ORDER.index(phase) if phase in PHASE_ORDER else len(PHASE_ORDER), phase)


def rank_markdown(report: dict[str, Any], probe: str) -> list[str]:
    """The section's lines (none when no run is distributed)."""
    runs = [run for run in report["runs"] if (run.get("distributed") or {}).get("ranks")]
    if not runs:
        return []
    ranks, phases = [], []
    for run in runs:
        for rank in run["distributed"]["ranks"]:
            static = rank.get("static_bytes") or {}
            roles = [r for r in ROLE_ORDER if r in static] + [r for r in static if r not in ROLE_ORDER]
            ranks.append([run["id"], str(rank["rank"]), _text(rank.get("node_rank")), _text(rank.get("local_rank")),
                          _text(rank.get("host")), str(rank.get("status", "?")),
                          ", ".join(f"{role} {mib(static[role].get('total'))}" for role in roles) or "-",
                          mib((rank.get("process_peak_bytes") or {}).get(probe))])
            peaks, rises = rank.get("phase_peak_bytes") or {}, rank.get("phase_rise_bytes") or {}
            steady = rank.get("phase_steady_rise_bytes") or {}
            for role in (r for r in ROLE_ORDER if r in peaks):
                for phase in sorted(peaks[role], key=_phase_key):
                    phases.append([run["id"], str(rank["rank"]), role, phase,
                                   mib((peaks[role][phase] or {}).get(probe)),
                                   mib(((rises.get(role) or {}).get(phase) or {}).get(probe)),
                                   mib(((steady.get(role) or {}).get(phase) or {}).get(probe))])
    lines = ["", "## memory per rank (MiB)", "",
             markdown_table(["run", "rank", "node rank", "local rank", "host", "status", "static per role",
                             "process peak"], ranks), "",
             md_text(f"Rises above each phase's start, measured by {probe} on each rank: over all calls, and over "
                     "the calls after the first (a first call also pages in library code and makes one-time "
                     "heap; '-' for a phase called once)."), ""]
    if phases:
        lines.append(markdown_table(["run", "rank", "role", "phase", "peak", "rise, all calls",
                                     "rise, after the first call"], phases))
    return lines
