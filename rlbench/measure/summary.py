"""Turn a finished (or failed) run into its report entry: roles, memory, throughput, accuracy.

Memory per role, for every probe the run used:
- `static`: bytes computed from the role's tensors (weights, gradients, optimizer state, buffers).
- `load_bytes`: how much the probe's reading rose while the role was loaded.
- `phases`: the peak (absolute) and the rise above the phase's start, for each phase attributed
  to the role (generate, update -> policy; ref_logprobs -> reference; score -> reward; values,
  value_update -> value).
Reconciliation: the process peak is set against what is attributed at the phase that reached it
(every role's static bytes when that phase's peak call ended, plus that call's transient rise, net
of the gradients and optimizer state it created: those are static, counted once); the rest,
libraries and allocator slack included, is reported as `other`, never dropped:
baseline + static + transient + other = process peak.
Anonymous memory (`memory.anon`, cpu probe only): RssAnon sampled every period_ms, the pages the
code allocates without the file-backed pages of libraries and mapped weights (see
rlbench/measure/cpu_probe.py): per phase, per role (its highest phase), the process peak and its
rise above the reading before loading. Metrics memory/<role>/anon_peak_bytes and
memory/process_anon_peak_bytes (the peaks `check` gates by default), memory/process_anon_rise_bytes.
"""

from __future__ import annotations

import math
from statistics import fmean
from typing import Any, Protocol

from rlbench.measure.budget import Budget
from rlbench.measure.hacking import PAIRED_INTERVAL, STDERR_SUM, reward_hacking
from rlbench.measure.phases import PhaseStats
from rlbench.measure.probing import RunProbe
from rlbench.models.precision import Precision
from rlbench.report.metrics import metric
from rlbench.report.peaks import peak_metrics
from rlbench.rollout import RolloutEngine

# Which role a phase's memory and time are attributed to.
PHASE_ROLE = {
    "generate": "policy",
    "old_logprobs": "policy",
    "update": "policy",
    "ref_logprobs": "reference",
    "score": "reward",
    "values": "value",
    "value_update": "value",
    "eval": "policy",
    "sync_weights": "rollout",
}
ENGINE_PHASES = ("generate", "eval")
"""Phases an engine with its own weights (vLLM) runs on its copy: attributed to the rollout role."""


class Run(Protocol):
    """What a summary reads of a finished run (rlbench.train.Run provides it; measure/ knows no recipe)."""

    suite: Any
    budget: Budget
    phases: PhaseStats
    step_metrics: list[dict[str, Any]]
    role_load_bytes: dict[str, dict[str, int]]
    engine: RolloutEngine
    policy: Any
    passes: int  # optimisation passes over each batch
    precision: Precision  # resolved once for the run

    def role_models(self) -> dict[str, tuple[Any, Any]]: ...


def summarize_run(run: Run, probe: RunProbe, result: dict[str, Any]) -> dict[str, Any]:
    roles = _roles(run)
    memory = _memory(run, probe, roles, result.get("baseline_bytes") or {})
    peak = _peak_flops(run)
    throughput = _throughput(run, peak)
    accuracy = _accuracy(result.get("evals") or [], run.suite.model.name, result.pop("paired_accuracy", None))
    learning = _learning(run.step_metrics)
    heldout, noise = heldout_witness(accuracy)
    hacking = reward_hacking([m["reward/mean"] for m in run.step_metrics], [m["gold/accuracy"] for m in run.step_metrics],
                             heldout=heldout, weak_reward_model=result.get("reward_model_warning"), heldout_noise=noise)
    return {
        "roles": roles,
        "memory": memory,
        "budget": run.budget.consumed(),
        "throughput": throughput,
        **({"mfu_peak": peak.as_dict()} if peak and "throughput/mfu" in throughput else {}),
        **_roofline(run, peak),
        "accuracy": accuracy,
        "learning": learning,
        "reward_hacking": hacking,
        "metrics": _flat_metrics(roles, memory, throughput, accuracy, learning),
    }


def heldout_witness(accuracy: dict[str, Any]) -> tuple[tuple[float, float] | None, str]:
    """((change of held-out accuracy, the noise it must exceed downwards) or None when not measured,
    what that noise is) for the hacking flag: the half-width of the paired 95% interval where the run
    kept per-problem outcomes (a fall then means the whole interval is below zero), else the sum of
    the two standard errors."""
    paired = accuracy.get("paired") or {}
    low, high = paired.get("ci95") or (math.nan, math.nan)
    if "delta" in accuracy and math.isfinite(low) and math.isfinite(high):
        return (paired["delta"], (high - low) / 2), PAIRED_INTERVAL
    if "delta" in accuracy:
        return (accuracy["delta"], accuracy["delta_stderr_sum"]), STDERR_SUM
    return None, STDERR_SUM


def _roles(run: Run) -> dict[str, Any]:
    roles: dict[str, Any] = {}
    from rlbench.measure.static import role_static_bytes

    for role, (model, optimizer) in run.role_models().items():
        roles[role] = {"static": role_static_bytes(model, optimizer, run.precision.compute_dtype)}
    engine_bytes = run.engine.memory_bytes()
    phase_roles = PHASE_ROLE
    if engine_bytes:
        roles["rollout"] = {"static": dict(engine_bytes, total=sum(engine_bytes.values()))}
        if hasattr(run.engine, "describe"):
            roles["rollout"]["engine"] = run.engine.describe()
        if getattr(run.engine, "has_own_weights", False):
            phase_roles = {**PHASE_ROLE, **dict.fromkeys(ENGINE_PHASES, "rollout")}
    for role, entry in roles.items():
        entry["load_bytes"] = run.role_load_bytes.get(role, {})
        phases = {}
        for phase, phase_role in phase_roles.items():
            if phase_role != role or phase not in run.phases.calls:
                continue
            phases[phase] = {
                "seconds": run.phases.seconds[phase],
                "calls": run.phases.calls[phase],
                "peak_bytes": {p: v[phase] for p, v in run.phases.peak_bytes.items() if phase in v},
                "rise_bytes": {p: v[phase] for p, v in run.phases.rise_bytes.items() if phase in v},
                "steady_rise_bytes": ({p: v[phase] for p, v in run.phases.steady_rise_bytes.items() if phase in v}
                                      if run.phases.calls[phase] > 1 else None),
            }
        entry["phases"] = phases
        probes = {p for ph in phases.values() for p in ph["peak_bytes"]}
        entry["peak_bytes"] = {p: max(ph["peak_bytes"].get(p, 0) for ph in phases.values()) for p in probes}
    return roles


def _memory(run: Run, probe: RunProbe, roles: dict[str, Any], baseline: dict[str, int]) -> dict[str, Any]:
    described = probe.describe()
    out: dict[str, Any] = {"probe": probe.name, "primary": probe.primary, "probes": described["probes"],
                           "baseline_bytes": baseline, "reconciliation": {}, "notes": run.phases.notes}
    anon = probe.anon_memory()
    if anon:
        out["anon"] = anon
        for entry in roles.values():
            for phase, figures in entry["phases"].items():
                peaks = {p: a["phase_peak_bytes"][phase] for p, a in anon.items() if phase in a["phase_peak_bytes"]}
                if peaks:
                    figures["anon_peak_bytes"] = peaks
            entry["anon_peak_bytes"] = {p: max(ph["anon_peak_bytes"][p] for ph in entry["phases"].values()
                                               if p in ph.get("anon_peak_bytes", {}))
                                        for p in anon if any(p in ph.get("anon_peak_bytes", {})
                                                             for ph in entry["phases"].values())}
    children = {p.name: figures for p in getattr(probe, "probes", []) if hasattr(p, "children_memory")
                and (figures := p.children_memory()) is not None}
    if children and "rollout" in roles:  # the engine's processes: its weight copy, KV cache and workspace
        out["engine_processes"] = children
        roles["rollout"]["resident_bytes"] = {name: sum(c["resident_bytes"].values()) for name, c in children.items()}
    process_peaks = probe.process_peak_bytes()
    static_total = sum(r["static"]["total"] for r in roles.values())
    engine_total = roles.get("rollout", {}).get("static", {}).get("total", 0)
    for name, peaks in run.phases.peak_bytes.items():
        if not peaks:
            continue
        peak_phase = max(peaks, key=peaks.get)
        process_peak = max(peaks[peak_phase], process_peaks.get(name, 0))
        # The call that reached the peak: its transient (net of the gradients and optimizer state it
        # created, which are static) and the static bytes held when it ended.
        call = run.phases.peak_call.get(name, {}).get(peak_phase)
        static = call["static_bytes"] + engine_total if call else static_total
        transient = call["rise_bytes"] if call else run.phases.rise_bytes[name].get(peak_phase, 0)
        base = baseline.get(name, 0)
        # Child processes (the engine's) at the peak call's start, beyond the engine's weights and KV cache:
        # their interpreters, libraries and workspace, the rollout role's too.
        engine_call = (children.get(name) or {}).get("peak_call", {}).get(peak_phase)
        workspace = engine_call["start_bytes"] - engine_total if engine_call else 0
        attributed = static + transient + workspace
        out["reconciliation"][name] = {
            "process_peak_bytes": process_peak,
            "peak_phase": peak_phase,
            "baseline_bytes": base,
            "static_bytes": static,
            "peak_phase_transient_bytes": transient,
            **({"engine_processes_bytes": engine_call["start_bytes"], "engine_workspace_bytes": workspace}
               if engine_call else {}),
            "attributed_bytes": attributed,
            "other_bytes": process_peak - base - attributed,
        }
    return out


def _throughput(run: Run, peak: Any = None) -> dict[str, float]:
    b, seconds = run.budget, run.phases.seconds
    rl_seconds = max(b.seconds, 1e-9)
    out = {f"time/{phase}_s": s for phase, s in seconds.items() if phase != "eval"}
    out["time/rl_s"] = b.seconds
    if b.steps:
        out["time/step_s"] = b.seconds / b.steps
        out["throughput/completions_per_s"] = b.completions / rl_seconds
        out["throughput/tokens_per_s"] = b.tokens / rl_seconds
    if seconds.get("generate"):
        out["throughput/gen_tokens_per_s"] = b.tokens / seconds["generate"]
    if seconds.get("update"):
        out["throughput/trained_tokens_per_s"] = b.trained_tokens / seconds["update"]
    if "eval" in seconds:
        out["time/eval_s"] = seconds["eval"]
    flops = _rl_flops(run)
    if flops and b.steps:
        out["throughput/model_flops_per_s"] = flops / rl_seconds
        if peak:
            out["throughput/mfu"] = flops / rl_seconds / peak.flops_per_s
    return out


def _rl_flops(run: Run) -> float:
    """Model FLOPs of the steps, as the budget counted them phase by phase (Run.step_flops):
    forward passes for generation, reward, reference and values, forward+backward for each
    optimisation pass of the policy and the value model."""
    return run.budget.flops


def _peak_flops(run: Run) -> Any:
    """The peak of the policy's device in the dtype its matmuls run in (flops.peak_flops): bf16
    under bf16-mixed autocast, else the parameters' dtype."""
    from rlbench.cache import cache_root
    from rlbench.measure.flops import peak_flops

    if not run.budget.steps:
        return None
    device = next(run.policy.parameters()).device
    reached = run.budget.flops / max(run.budget.seconds, 1e-9)  # a cached peak below this was measured under load
    return peak_flops(device, run.precision.compute_dtype or run.precision.dtype, cache_root(), at_least=reached)


def _roofline(run: Run, peak: Any) -> dict[str, Any]:
    """{"roofline": each phase against its floor (measure/roofline.py), "read_bytes_per_s": the
    bandwidth used} for a run that counted its FLOPs or bytes; the bandwidth is measured on a CPU only."""
    from rlbench.cache import cache_root
    from rlbench.measure.flops import cpu_read_bandwidth
    from rlbench.measure.roofline import roofline

    if not run.budget.steps or not (run.budget.flops_by_phase or run.budget.bytes_by_phase):
        return {}
    on_cpu = next(run.policy.parameters()).device.type == "cpu"
    bandwidth = cpu_read_bandwidth(cache_root()) if on_cpu else None
    phases = roofline(dict(run.phases.seconds), run.budget.flops_by_phase, run.budget.bytes_by_phase,
                      peak.flops_per_s if peak else None, bandwidth)
    return {"roofline": phases, **({"read_bytes_per_s": bandwidth} if bandwidth else {})} if phases else {}


def _accuracy(evals: list[dict[str, Any]], model_name: str = "", paired: dict[str, Any] | None = None) -> dict[str, Any]:
    """Before, after and the curve; the change with the sum of the two binomial standard errors;
    and, where the per-problem outcomes were kept (`evaluation.paired_accuracy`), `outcomes` and
    `paired` (McNemar p-value, clustered standard error and 95% interval of the change)."""
    from rlbench.models.shape import MEANINGLESS_ACCURACY, is_shape

    if is_shape(model_name):
        return {"meaningless": MEANINGLESS_ACCURACY}
    if not evals:
        return {}
    before, after = evals[0], evals[-1]
    out: dict[str, Any] = {"before": before, "after": after, "curve": evals}
    if len(evals) > 1:
        delta = after["eval/accuracy"] - before["eval/accuracy"]
        noise = after["eval/accuracy_stderr_binomial"] + before["eval/accuracy_stderr_binomial"]
        out.update(delta=delta, delta_stderr_sum=noise, significant=abs(delta) > noise)
        if paired:
            out.update(paired)
    return out


def _learning(steps: list[dict[str, Any]]) -> dict[str, float]:
    """Means over the last quarter of the run's steps (where the run ended up)."""
    if not steps:
        return {}
    tail = steps[-max(1, len(steps) // 4):]
    keys = [k for k in tail[-1] if k.split("/")[0] in ("reward", "gold", "learning", "kl", "loss")]
    return {k: fmean(s[k] for s in tail if k in s) for k in keys}


def _flat_metrics(roles, memory, throughput, accuracy, learning) -> dict[str, Any]:
    primary = memory["primary"]
    out: dict[str, Any] = {}
    for role, entry in roles.items():
        static = entry["static"]
        for kind in ("weights", "master", "gradients", "optimizer", "total"):
            if kind in static:
                out[f"memory/{role}/{kind}_bytes"] = metric(f"memory/{role}/{kind}_bytes", static[kind], probe="static")
        if primary in entry["peak_bytes"]:
            out[f"memory/{role}/peak_bytes"] = metric(f"memory/{role}/peak_bytes", entry["peak_bytes"][primary],
                                                      probe=primary)
    out.update(peak_metrics({"roles": roles}, primary))  # the training and evaluation peaks
    recon = memory["reconciliation"].get(primary)
    if recon:
        out["memory/process_peak_bytes"] = metric("memory/process_peak_bytes", recon["process_peak_bytes"], probe=primary)
    anon = (memory.get("anon") or {}).get(primary)
    if anon:
        for role, entry in roles.items():
            if primary in entry.get("anon_peak_bytes", {}):
                out[f"memory/{role}/anon_peak_bytes"] = metric(f"memory/{role}/anon_peak_bytes",
                                                               entry["anon_peak_bytes"][primary], probe=primary)
        for kind in ("peak", "rise"):
            name = f"memory/process_anon_{kind}_bytes"
            out[name] = metric(name, anon[f"{kind}_bytes" if kind == "rise" else "process_peak_bytes"], probe=primary)
    for name, value in throughput.items():
        out[name] = metric(name, value)
    if "after" in accuracy:
        # standard errors clustered by the task's key where the per-problem outcomes were kept
        after, before, paired = accuracy["after"], accuracy["before"], accuracy.get("paired") or {}
        by = f"clustered by {paired.get('cluster_by', 'problem')}"
        out["eval/accuracy"] = metric("eval/accuracy", after["eval/accuracy"],
                                      **_or(paired.get("after_stderr"), by, after["eval/accuracy_stderr_binomial"], "binomial"))
        out["eval/accuracy_before"] = metric("eval/accuracy_before", before["eval/accuracy"],
                                             **_or(paired.get("before_stderr"), by,
                                                  before["eval/accuracy_stderr_binomial"], "binomial"))
        if "delta" in accuracy:
            out["eval/accuracy_delta"] = metric("eval/accuracy_delta", accuracy["delta"],
                                                **_or(paired.get("stderr"), by, accuracy["delta_stderr_sum"],
                                                     "sum of the two binomial standard errors"))
        for name, part in [*(accuracy.get("scorings") or {}).items(), *(accuracy.get("chains") or {}).items()]:
            key = f"eval/accuracy_delta_{name}"  # each scoring's change, and the headline's on seen / unseen chains
            out[key] = metric(key, part["delta"], part.get("stderr"), stderr_kind=by)
        for key, value in after.items():
            if key.startswith("eval/") and "_stderr" not in key and key not in out and key != "eval/accuracy":
                se = after.get(f"{key}_stderr_binomial")
                out[key] = metric(key, value, se, stderr_kind=None if se is None else "binomial")
    for name, value in learning.items():
        out[name] = metric(name, value)
    return out


def _or(value: float | None, kind: str, fallback: float, fallback_kind: str) -> dict[str, Any]:
    """metric()'s stderr and stderr_kind: `value` where there is one, else the fallback."""
    return {"stderr": fallback, "stderr_kind": fallback_kind} if value is None else {"stderr": value, "stderr_kind": kind}
