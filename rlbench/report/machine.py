"""Which machine made a report, and which of its figures another machine would repeat.

    hardware_difference(new, base)   None when both reports ran on one hardware class with the
                                     same torch threads, else why not, in words
    machine_independent(name)        whether a gated metric is the same on every machine
    fixed_work(run, suite)           the counts of a run's work its settings fix on every machine
    fingerprint_text(environment)    one line naming the machine, for summary.md, compare and check

Pure functions on report dicts (no torch): the fingerprint itself is taken when a suite runs
(rlbench/environment.py, which also gives the rule of the hardware class).

Machine-independent, so gated against a baseline from any machine:
- static bytes per role (memory/<role>/{weights,master,gradients,optimizer,total}_bytes): counted
  from the tensors' shapes and dtypes, which the settings fix;
- the counts of work a run's settings fix (`fixed_work`): steps, completions and prompts of a run
  that stopped at its step or completion budget; and, when every completion of both runs ran to
  max_new_tokens (fixed-length rollouts: a shape model), the generated and trained tokens and the
  model FLOPs (integer arithmetic on token counts and shapes, rlbench/measure/flops.py). Where
  completions end at an end-of-sequence token, their lengths follow the sampled tokens, which
  follow the floats: those counts are machine-bound, and not gated at all (an outcome, like the
  completion length).
Machine-bound, so gated only against a baseline of the same hardware class and torch threads:
times and throughput (the CPU's or GPU's speed), MFU (measured peak), memory peaks (allocator,
kernels' scratch space, library pages) and accuracy (other kernels sum in another order: the
quickstart starts at 37.1% on an AVX2 AMD EPYC and 39.1% on an AMX Intel Xeon with the same code).
"""

from __future__ import annotations

from typing import Any

FIXED_BY_SETTINGS = ("steps", "completions", "prompts")
FIXED_BY_LENGTHS = ("tokens_generated", "tokens_trained", "flops")
STATIC_KINDS = ("weights", "master", "gradients", "optimizer", "total")


def machine_independent(name: str) -> bool:
    """Static bytes of a role and the `budget/<count>` work counts (see the module docstring)."""
    parts = name.split("/")
    if len(parts) == 3 and parts[0] == "memory":
        return parts[2].removesuffix("_bytes") in STATIC_KINDS
    return parts[0] == "budget"


def fixed_work(run: dict[str, Any], suite: dict[str, Any]) -> dict[str, int]:
    """`budget/<count>` -> value for each count of the run's work that its settings fix (see above);
    {} for a run stopped by anything but its steps or completions (wall-clock time, tokens, FLOPs)."""
    budget = run.get("budget") or {}
    if run.get("stopped_by") not in ("steps", "completions"):
        return {}
    counts = [k for k in FIXED_BY_SETTINGS if isinstance(budget.get(k), int)]
    max_new = (suite.get("rollout") or {}).get("max_new_tokens")
    completions = budget.get("completions")
    if isinstance(max_new, int) and completions and budget.get("tokens_generated") == completions * max_new:
        counts += [k for k in FIXED_BY_LENGTHS if isinstance(budget.get(k), int)]
    return {f"budget/{k}": budget[k] for k in counts}


def hardware(report: dict[str, Any]) -> tuple[str | None, int | None]:
    """(hardware class, torch threads) of a report; a class of None: written before schema 2."""
    env = report.get("environment") or {}
    return env.get("hardware_class"), env.get("torch_threads")


def hardware_difference(new: dict[str, Any], base: dict[str, Any]) -> str | None:
    """Why machine-bound figures of `new` cannot be set against `base`, or None when they can: the
    same hardware class and, unless both suites fix `threads`, the same torch threads. A report
    without a class (schema 1) cannot be shown to match any machine."""
    (new_class, new_threads), (base_class, base_threads) = hardware(new), hardware(base)
    unknown = [side for side, c in (("the baseline", base_class), ("the new report", new_class)) if c is None]
    if unknown:
        return f"{' and '.join(unknown)} record{'s' if len(unknown) == 1 else ''} no hardware class (written " \
               "before schema 2)"
    if new_class != base_class:
        return f"{base_class} in the baseline, {new_class} in the new report"
    threads_set = all((r.get("suite") or {}).get("threads") for r in (new, base))
    if not threads_set and new_threads != base_threads:
        return f"{base_class} with {base_threads} torch threads in the baseline, {new_threads} in the new report"
    return None


def fingerprint_text(env: dict[str, Any]) -> str:
    """'cpu-amd-epyc-avx2: AMD EPYC (AuthenticAMD; avx2 fma; torch AVX2 kernels), MKL 2024.2, oneDNN
    3.12.0; torch 2.13.0+cpu, transformers 5.25.0; 2 threads; 23.5 GiB RAM' (what is recorded of it)."""
    packages = env.get("packages") or {}
    gpu = env.get("gpu") or {}
    libraries = env.get("math_libraries") or {}
    if gpu.get("name"):
        device = (f"{gpu['name']} (compute {gpu.get('compute_capability') or '?'}, driver {gpu.get('driver') or '?'}, "
                  f"CUDA {gpu.get('cuda') or '?'}); host {env.get('cpu') or 'unknown CPU'}")
    else:
        cpu = "; ".join(part for part in (
            env.get("cpu_vendor"), " ".join(env.get("cpu_features") or ()) or None,
            f"torch {env['cpu_capability']} kernels" if env.get("cpu_capability") else None) if part)
        device = f"{env.get('cpu') or 'unknown CPU'}" + (f" ({cpu})" if cpu else "")
    libs = ", ".join(f"{name} {libraries[key]}" for key, name in (("mkl", "MKL"), ("onednn", "oneDNN"))
                     if libraries.get(key))
    limits = " ".join(f"{k}={v}" for k, v in (env.get("numeric_env") or {}).items() if v is not None)
    parts = [device + (f", {libs}" if libs else ""),
             ", ".join(f"{p} {packages[p]}" for p in ("torch", "transformers") if packages.get(p)),
             f"{env.get('torch_threads', '?')} threads" + (f" ({limits})" if limits else ""),
             f"{env['ram_bytes'] / 2**30:.1f} GiB RAM" if env.get("ram_bytes") else ""]
    head = env.get("hardware_class") or "hardware class unknown (schema 1)"
    return f"{head}: " + "; ".join(p for p in parts if p)


def peak_text(run: dict[str, Any]) -> str | None:
    """'bf16 peak 3,025.0 GFLOP/s (measured)': what the run's MFU divides by; None where not recorded."""
    peak = run.get("mfu_peak")
    if not peak:
        return None
    return f"{peak['dtype']} peak {peak['flops_per_s'] / 1e9:,.1f} GFLOP/s ({peak['source']})"
