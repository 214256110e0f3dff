"""A run's training peak and evaluation peak: the two memory questions a process peak mixes up.

The process peak answers "does the whole run fit", but it is often reached while evaluating (a batch
of eval.batch_size problems generated at once), the same for every algorithm, so it hides what the
algorithms' training steps need. So a run's memory is also given as two peaks:

- the training peak: the highest peak of any phase that is not an evaluation (generate, score,
  ref_logprobs, values, update, ...), with the phase that reached it;
- the evaluation peak: the highest peak of an evaluation phase (EVAL_PHASES).

Both are read from the per-phase figures (`roles.<role>.phases.<phase>.peak_bytes` and, cpu probe,
`anon_peak_bytes`; for a distributed run also the highest over ranks,
`distributed.phase_peak_bytes_max`), for one probe. As metrics (PEAK_METRICS): the total figures
memory/training_peak_bytes and memory/eval_peak_bytes (RSS or device memory, like
memory/process_peak_bytes), and the anonymous ones memory/training_anon_peak_bytes and
memory/eval_anon_peak_bytes (RssAnon, like memory/process_anon_peak_bytes), which `check` gates by
default. The worker writes them (`peak_metrics`); a report written before they existed gets them
from the same per-phase figures when it is read (`add_peak_metrics`, called by schema.load_report),
so an older baseline gates them too.
"""

from __future__ import annotations

from typing import Any

from rlbench.report.format import mib
from rlbench.report.metrics import metric

EVAL_PHASES = ("eval",)
"""Phases that evaluate rather than train: the evaluation peak's, left out of the training peak."""
PEAK_METRICS = {("training", "peak_bytes"): "memory/training_peak_bytes",
                ("eval", "peak_bytes"): "memory/eval_peak_bytes",
                ("training", "anon_peak_bytes"): "memory/training_anon_peak_bytes",
                ("eval", "anon_peak_bytes"): "memory/eval_anon_peak_bytes"}
"""(which peak, per-phase figure) -> the metric name it is reported under."""


def phase_peaks(run: dict[str, Any], probe: str, figure: str = "peak_bytes") -> dict[str, int]:
    """Each phase's highest `figure` ('peak_bytes' or 'anon_peak_bytes') as `probe` measured it, over
    the roles it is attributed to and, for a distributed run, over ranks."""
    out: dict[str, int] = {}

    def add(phase: str, value: Any) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[phase] = max(out.get(phase, int(value)), int(value))

    for role in (run.get("roles") or {}).values():
        for phase, figures in (role.get("phases") or {}).items():
            add(phase, (figures.get(figure) or {}).get(probe))
    if figure == "peak_bytes":
        per_rank = (run.get("distributed") or {}).get("phase_peak_bytes_max") or {}
        for phases in per_rank.values():
            for phase, peaks in phases.items():
                add(phase, (peaks or {}).get(probe))
    return out


def split_peak(run: dict[str, Any], probe: str, evaluation: bool, figure: str = "peak_bytes") -> tuple[str, int] | None:
    """(phase, bytes) of the run's evaluation peak (`evaluation`) or training peak; None when no
    such phase was measured."""
    peaks = {p: v for p, v in phase_peaks(run, probe, figure).items() if (p in EVAL_PHASES) == evaluation}
    if not peaks:
        return None
    phase = max(peaks, key=peaks.__getitem__)
    return phase, peaks[phase]


def training_peak_bytes(run: dict[str, Any], probe: str) -> int | None:
    """The run's training peak (total figure) as `probe` measured it; None when not measured."""
    found = split_peak(run, probe, evaluation=False)
    return found[1] if found else None


def peak_metrics(run: dict[str, Any], probe: str) -> dict[str, dict[str, Any]]:
    """The PEAK_METRICS a run's per-phase figures give for `probe` (those it has)."""
    out = {}
    for (which, figure), name in PEAK_METRICS.items():
        found = split_peak(run, probe, evaluation=which == "eval", figure=figure)
        if found is not None:
            out[name] = metric(name, found[1], probe=probe)
    return out


def add_peak_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """Give each run with metrics the PEAK_METRICS it lacks, from its per-phase figures as measured
    by the run's primary probe (a report written before they existed); in place, returns `report`."""
    for run in report.get("runs") or []:
        metrics, probe = run.get("metrics"), (run.get("memory") or {}).get("primary")
        if not isinstance(metrics, dict) or not metrics or not isinstance(probe, str):
            continue
        for name, value in peak_metrics(run, probe).items():
            metrics.setdefault(name, value)
    return report


def peak_cell(found: tuple[str, int] | None) -> str:
    """'520.3 (update)': a split_peak in MiB with the phase that reached it; '-' when not measured."""
    return "-" if found is None else f"{mib(found[1])} ({found[0]})"
