"""A distributed run's ranks merged into the run's one result (reads JSON only; imports no torch).

Rank r of a run writes `rank{r}/result.json` (see rlbench/worker.py). The merged result is rank
0's: its budget, throughput, accuracy and learning figures are the whole run's, since ranks
gather each step's batch, reduce the budget and merge evaluations. Beside it, `distributed`:

    ranks                  per rank: status, pid, node rank, local rank, host, static bytes per
                           role, phase peaks and rises per role, process peak, collective bytes
                           per phase
    static_bytes_sum       per role, each static figure summed over ranks
    phase_peak_bytes_max   per role and phase, the highest peak of any rank, per probe
    phase_rise_bytes_max   per role and phase, the largest rise of any rank over all calls, per probe
    phase_steady_rise_bytes_max  the same over the calls after the first (None where a phase ran once)
    process_peak_bytes_max per probe, the highest process peak of any rank
    collective_bytes       per phase and kind, the most any rank joined
    measured_by            which probe or method measured each of these

Status: ok when every rank is ok. Otherwise one rank decides: a rank that left no result (killed;
its exit code is read from torchrun's failure summary; SIGKILL reads as oom only when the kernel's
OOM killer ran meanwhile, as for one process), else a rank out of memory, else torchrun's root
cause, else the first that failed. The others are collateral (their peer vanished mid-collective,
or torchrun stopped them); `interrupted` decides only when no rank failed.
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path
from typing import Any

STATIC_METHOD = ("computed from this rank's tensors: the local shard of every FSDP2 parameter, gradient and "
                 "optimizer state (padded to equal shards), replicated buffers in full")
PHASE_FIGURES = ("peak_bytes", "rise_bytes", "steady_rise_bytes")  # per role and phase, per rank and max
_FAILURE = re.compile(r"rank\s*:\s*(\d+)[^\n]*\n\s*exitcode\s*:\s*(-?\d+)")


def exit_codes(log: str) -> tuple[dict[int, int], int | None]:
    """({rank: exit code}, root-cause rank) from torchrun's failure summary in `log`."""
    codes = {int(rank): int(code) for rank, code in _FAILURE.findall(log)}
    root_at = log.rfind("Root Cause")
    root = _FAILURE.search(log, root_at) if root_at >= 0 else None
    return codes, int(root.group(1)) if root else None


def merge_ranks(run_dir: Path, world: int, log: str, oom_killed: bool = False) -> dict[str, Any]:
    """The run's result from its ranks' results ({} when no rank left one and torchrun reported none).
    `oom_killed`: the kernel's OOM killer ran during the run (see rlbench.process.exit_status)."""
    results: dict[int, dict[str, Any]] = {}
    for rank in range(world):
        path = run_dir / f"rank{rank}" / "result.json"
        try:
            results[rank] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
    codes, root = exit_codes(log)
    if not results and not codes:
        return {}
    statuses = {r: _rank_status(results.get(r), codes.get(r), oom_killed) for r in range(world)}
    merged = dict(results.get(0) or results[min(results)]) if results else {}
    failed = [r for r in range(world) if statuses[r][0] not in ("ok", "interrupted")]
    if not failed and all(s == "ok" for s, _ in statuses.values()):
        merged.update(status="ok", error=None)
    else:  # a rank that died decides, then one out of memory, then torchrun's root cause
        died = [r for r in failed if r not in results]
        oom = [r for r in failed if statuses[r][0] == "oom"]
        interrupted = [r for r in statuses if statuses[r][0] == "interrupted"]
        deciding = (died or oom or [r for r in [root] if r in failed] or failed or interrupted)[0]
        status, error = statuses[deciding]
        merged.update(status=status, error=f"rank {deciding}: {error}")
    merged["distributed"] = _distributed(results, statuses, world)
    _per_device_mfu(merged, world)
    return merged


def _rank_status(result: dict[str, Any] | None, code: int | None, oom_killed: bool) -> tuple[str, str | None]:
    if result is not None:
        return result.get("status", "failed"), result.get("error")
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        status = "oom" if -code == signal.SIGKILL and oom_killed else "failed"
        return status, f"killed by signal {-code} ({name}) before writing its result"
    return "failed", f"exited with code {code} before writing its result" if code is not None else "left no result"


def _distributed(results: dict[int, dict[str, Any]], statuses: dict[int, tuple[str, str | None]],
                 world: int) -> dict[str, Any]:
    ranks = []
    for rank in range(world):
        result = results.get(rank) or {}
        described = result.get("distributed") or {}
        roles = result.get("roles") or {}
        memory = result.get("memory") or {}
        ranks.append({
            "rank": rank, "status": statuses[rank][0], "error": statuses[rank][1], "pid": described.get("pid"),
            "node_rank": described.get("node_rank"), "local_rank": described.get("local_rank"),
            "host": described.get("host"),
            "static_bytes": {role: entry["static"] for role, entry in roles.items()},
            "peak_bytes": {role: entry.get("peak_bytes", {}) for role, entry in roles.items()},
            **{f"phase_{key}": _by_phase(roles, key) for key in PHASE_FIGURES},
            "process_peak_bytes": {probe: r["process_peak_bytes"]
                                   for probe, r in (memory.get("reconciliation") or {}).items()},
            "collective_bytes": described.get("collectives", {}),
        })
    static_sum: dict[str, dict[str, int]] = {}
    process_max: dict[str, int] = {}
    collectives: dict[str, dict[str, dict[str, int]]] = {}
    for entry in ranks:
        for role, static in entry["static_bytes"].items():
            for kind, value in static.items():
                static_sum.setdefault(role, {})[kind] = static_sum.get(role, {}).get(kind, 0) + value
        for probe, value in entry["process_peak_bytes"].items():
            process_max[probe] = max(process_max.get(probe, 0), value)
        for phase, kinds in entry["collective_bytes"].items():
            for kind, figures in kinds.items():
                slot = collectives.setdefault(phase, {}).setdefault(kind, {"calls": 0, "bytes": 0})
                slot["calls"], slot["bytes"] = max(slot["calls"], figures["calls"]), max(slot["bytes"], figures["bytes"])
    first = next((results[r] for r in sorted(results)), {})
    described = first.get("distributed") or {}
    probes = {p["probe"]: p.get("method", "") for p in (first.get("memory") or {}).get("probes", [])}
    return {
        "world_size": world, "strategy": described.get("strategy"), "backend": described.get("backend"),
        "ranks": ranks, "static_bytes_sum": static_sum,
        **{f"phase_{key}_max": _max_over_ranks(ranks, f"phase_{key}") for key in PHASE_FIGURES},
        "process_peak_bytes_max": process_max, "collective_bytes": collectives,
        "measured_by": {"static_bytes": STATIC_METHOD, "peak_bytes": probes,
                        "collective_bytes": described.get("collectives_method", "")},
        "notes": sorted({n for r in results.values() for n in (r.get("distributed") or {}).get("notes", [])}),
    }


def _by_phase(roles: dict[str, Any], key: str) -> dict[str, dict[str, dict[str, int] | None]]:
    """Per role and phase, one figure of a rank's result (`steady_rise_bytes` stays None for a phase
    called once, and is None in a result written before it existed)."""
    return {role: {phase: figures.get(key, None if key == "steady_rise_bytes" else {})
                   for phase, figures in (entry.get("phases") or {}).items()}
            for role, entry in roles.items()}


def _max_over_ranks(ranks: list[dict[str, Any]], key: str) -> dict[str, dict[str, dict[str, int] | None]]:
    """Per role and phase, the highest figure of any rank per probe (`key`: a per-rank figure by role
    and phase); None where no rank has one (a steady rise of a phase called once)."""
    out: dict[str, dict[str, dict[str, int] | None]] = {}
    for entry in ranks:
        for role, phases in entry[key].items():
            for phase, figures in phases.items():
                slot = out.setdefault(role, {}).setdefault(phase, None)
                if figures is None:
                    continue
                slot = out[role][phase] = dict(slot or {})
                for probe, value in figures.items():
                    slot[probe] = max(slot.get(probe, 0), value)
    return out


def _per_device_mfu(merged: dict[str, Any], world: int) -> None:
    """Model FLOPs of the whole run over `world` devices' peak (a rank's summary divides by one)."""
    throughput = merged.get("throughput") or {}
    if "throughput/mfu" in throughput:
        throughput["throughput/mfu"] /= world
        entry = (merged.get("metrics") or {}).get("throughput/mfu")
        if entry and entry.get("value") is not None:
            entry["value"] /= world
