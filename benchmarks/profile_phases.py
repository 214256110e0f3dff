"""Where a GRPO-Zero step's time goes, phase by phase, at a real shape: torch.profiler's top operators
of generate, reference log-probs and update, and each phase's time against its floor.

Run (minutes at the 0.5B shape on 2 cores; random weights, no hub):

    nice -n 10 .venv/bin/python benchmarks/profile_phases.py --precision fp32 bf16-mixed
    .venv/bin/python benchmarks/profile_phases.py --model embedded --precision fp32 --steps 3

For each precision: one warm-up step (AdamW creates its state), `--steps` timed steps (phase times
from the loop's own timers), then one step with every phase under torch.profiler (its times are
inflated by the profiler; only its operator tables are used). The floor of each phase is
rlbench/measure/roofline.py's, from the step's counted FLOPs and bytes, this machine's measured
peak in the compute dtype and its measured read bandwidth.

With `--compare REF`, the lean forward and decoder of git revision REF (rlbench/models/lean_llama.py,
forward.py, rollout/hf.py as they were there) run in the same process, step for step alternating
with the working tree's: per phase, the median time of each and their ratio (measured side by side,
so load on a shared machine hits both alike).

Prints one table per precision and writes one JSON document (default results/profile_phases.json).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PHASES = ("generate", "ref_logprobs", "update")
ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="shape:qwen2.5-0.5b", help="shape:<name> or embedded")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16-mixed"], choices=("fp32", "bf16-mixed"))
    parser.add_argument("--completions", type=int, default=8)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=1, help="timed steps after the warm-up")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=10, help="operators listed per phase")
    parser.add_argument("--no-profile", action="store_true", help="phase times only")
    parser.add_argument("--compare", default=None, help="a git revision whose lean forward runs side by side")
    parser.add_argument("--logprob-head", type=int, default=0, metavar="TOKENS",
                        help="with --compare: only the LM-head part of reference log-probs and of the update "
                             "(log-probs, entropy, backward) for TOKENS tokens at the model's hidden size and "
                             "vocabulary, REF's code against the working tree's, alternating, --steps rounds")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "profile_phases.json")
    return parser.parse_args(argv)


def make_run(model: str, precision: str, completions: int, group: int, max_new_tokens: int, threads: int):
    from rlbench.config import AlgorithmConfig, BudgetConfig, ModelConfig, RolloutConfig, Suite, TaskConfig
    from rlbench.measure.probing import NullProbe
    from rlbench.models.loading import resolve_base
    from rlbench.train import Run

    dtype = "bfloat16" if precision == "bf16-mixed" else "float32"
    suite = Suite(name="profile", model=ModelConfig(name=model, dtype=dtype, precision=precision),
                  task=TaskConfig(name="synthetic", min_steps=1, max_steps=1, max_number=12, train_size=200),
                  algorithms=[AlgorithmConfig(name="grpo_zero", rewards={"answer_correct": 1.0, "format_strict": 0.1},
                                              params={"lr": 1e-6, "beta": 0.04})],
                  budget=BudgetConfig(steps=1_000_000),
                  rollout=RolloutConfig(engine="hf", completions_per_step=completions, group_size=group,
                                        max_new_tokens=max_new_tokens, temperature=1.0, top_p=1.0),
                  threads=threads, probe="cpu")
    return Run.build(suite, suite.algorithms[0], 0, resolve_base(model), None, NullProbe())


def load_revision(revision: str) -> dict[str, Any]:
    """lean_llama, forward and hf as they are at `revision`, imported under other names."""
    modules = {}
    with tempfile.TemporaryDirectory(prefix="profile_rev_") as tmp:
        for name, path in (("lean_llama", "rlbench/models/lean_llama.py"), ("forward", "rlbench/models/forward.py"),
                           ("hf", "rlbench/rollout/hf.py")):
            text = subprocess.run(["git", "show", f"{revision}:{path}"], cwd=ROOT, check=True, capture_output=True,
                                  text=True).stdout
            text = text.replace("from rlbench.models.lean_llama import", "from _rev_lean_llama import")
            file = Path(tmp) / f"_rev_{name}.py"
            file.write_text(text)
            spec = importlib.util.spec_from_file_location(f"_rev_{name}", file)
            module = importlib.util.module_from_spec(spec)
            sys.modules[f"_rev_{name}"] = module
            spec.loader.exec_module(module)
            modules[name] = module
    return modules


@contextmanager
def code_of(run, modules: dict[str, Any] | None):
    """Run's sampling and log-prob forwards from `modules` (load_revision), or as they are when None."""
    import rlbench.train.run as run_module

    if modules is None:
        yield
        return
    saved = (run.engine.decoder_factory, run_module.completion_logprobs, run_module.completion_logprobs_and_entropy)
    run.engine.decoder_factory = modules["hf"].make_decoder
    run_module.completion_logprobs = modules["forward"].completion_logprobs
    run_module.completion_logprobs_and_entropy = modules["forward"].completion_logprobs_and_entropy
    try:
        yield
    finally:
        run.engine.decoder_factory, run_module.completion_logprobs, run_module.completion_logprobs_and_entropy = saved


def profiled_step(run, top: int) -> dict[str, list[dict[str, Any]]]:
    """One step with each phase under torch.profiler: its top operators by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    tables: dict[str, list[dict[str, Any]]] = {}
    original = run.phase

    @contextmanager
    def phase(name: str):
        with original(name), profile(activities=[ProfilerActivity.CPU]) as prof:
            yield
        if name in PHASES:
            events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
            total = sum(e.self_cpu_time_total for e in events) or 1
            tables[name] = [{"op": e.key, "calls": e.count, "self_s": e.self_cpu_time_total / 1e6,
                             "share": e.self_cpu_time_total / total} for e in events[:top]]

    run.phase = phase
    try:
        run.step()
    finally:
        del run.phase
    run.optimizer.zero_grad(set_to_none=True)
    return tables


def timed_step(run) -> dict[str, float]:
    metrics = run.step()
    run.optimizer.zero_grad(set_to_none=True)
    return {p: metrics.get(f"time/{p}_s", 0.0) for p in PHASES} | {"step": metrics["time/step_s"]}


def floors(run, steps: int) -> dict[str, Any]:
    """Each phase's floor per step (roofline.py) from the run's counted FLOPs and bytes."""
    from rlbench.cache import cache_root
    from rlbench.measure.flops import cpu_read_bandwidth, peak_flops
    from rlbench.measure.roofline import phase_floor

    peak = peak_flops("cpu", run.precision.compute_dtype or run.precision.dtype, cache_root())
    bandwidth = cpu_read_bandwidth(cache_root())
    b = run.budget
    out = {p: phase_floor(b.flops_by_phase.get(p, 0) / b.steps, b.bytes_by_phase.get(p, 0) / b.steps,
                          peak.flops_per_s, bandwidth) for p in PHASES}
    return {"peak": peak.as_dict(), "read_bytes_per_s": bandwidth, "phases": out}


def profile_precision(args: argparse.Namespace, precision: str, revision: dict[str, Any] | None) -> dict[str, Any]:
    run = make_run(args.model, precision, args.completions, args.group, args.max_new_tokens, args.threads)
    print(f"[{precision}] warm-up step", flush=True)
    timed_step(run)
    variants = {"now": None, **({"before": revision} if revision else {})}
    times: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for i in range(args.steps):
        for name in (variants if i % 2 == 0 else list(variants)[::-1]):  # alternate who goes first
            with code_of(run, variants[name]):
                times[name].append(timed_step(run))
            print(f"[{precision}] step {i}, {name}: " + ", ".join(f"{k} {v:.2f} s" for k, v in times[name][-1].items()),
                  flush=True)
    result: dict[str, Any] = {"precision": precision, "floors": floors(run, run.budget.steps),
                              "median_s": {v: {k: statistics.median(t[k] for t in ts) for k in ts[0]}
                                           for v, ts in times.items()},
                              "times": times}
    if not args.no_profile:
        for name, modules in variants.items():
            with code_of(run, modules):
                result.setdefault("top_ops", {})[name] = profiled_step(run, args.top)
    return result


def logprob_head(args: argparse.Namespace, revision: dict[str, Any]) -> dict[str, Any]:
    """Seconds of the LM-head part of reference log-probs (no gradient) and of the update (with the
    backward pass) at the model's hidden size and vocabulary: REF's token_logprobs against now."""
    import torch

    import rlbench.models.forward as now
    from rlbench.models.shape import shape_config

    config = shape_config(args.model.removeprefix("shape:")) if args.model.startswith("shape:") else {
        "hidden_size": 128, "vocab_size": 398}
    hidden, vocab, n = config["hidden_size"], config["vocab_size"], args.logprob_head
    generator = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(hidden, vocab, bias=False)
    scores = torch.randn(n, hidden, generator=generator)
    tokens = torch.randint(0, vocab, (n,), generator=generator)
    calls = {
        "ref_logprobs before": lambda: revision["forward"].token_logprobs(scores, tokens, 1.0, head, vocab),
        "ref_logprobs now": lambda: now.token_logprobs(scores, tokens, 1.0, head, vocab, entropy=False),
        "update before": lambda: revision["forward"].token_logprobs(scores.requires_grad_(), tokens, 1.0, head, vocab),
        "update now": lambda: now.token_logprobs(scores.requires_grad_(), tokens, 1.0, head, vocab),
    }
    times: dict[str, list[float]] = {k: [] for k in calls}
    for i in range(args.steps):
        for name in (calls if i % 2 == 0 else list(calls)[::-1]):
            start = time.perf_counter()
            if name.startswith("update"):
                calls[name]()[0].sum().backward()
                head.weight.grad = scores.grad = None
            else:
                with torch.no_grad():
                    calls[name]()
            times[name].append(time.perf_counter() - start)
    median = {k: statistics.median(v) for k, v in times.items()}
    for phase in ("ref_logprobs", "update"):
        print(f"{phase} LM-head part, {n} tokens x {hidden} -> {vocab}: before {median[phase + ' before']:.3f} s, "
              f"now {median[phase + ' now']:.3f} s, now/before {median[phase + ' now'] / median[phase + ' before']:.3f} "
              f"(per round: {[round(a / b, 3) for a, b in zip(times[phase + ' now'], times[phase + ' before'])]})")
    return {"tokens": n, "hidden": hidden, "vocab": vocab, "median_s": median, "times": times}


def print_result(result: dict[str, Any]) -> None:
    median, fl = result["median_s"], result["floors"]
    peak = fl["peak"]
    print(f"\n{result['precision']}: peak {peak['dtype']} {peak['flops_per_s'] / 1e9:,.1f} GFLOP/s (measured), "
          f"read bandwidth {fl['read_bytes_per_s'] / 1e9:,.1f} GB/s")
    print(f"{'phase':<14}{'floor s':>9} {'bound':<8}" + "".join(f"{v + ' s':>11}{'/floor':>8}" for v in median)
          + ("   now/before" if "before" in median else ""))
    for p in PHASES:
        floor = fl["phases"][p]
        line = f"{p:<14}{floor['floor_s']:>9.3f} {floor['bound']:<8}"
        line += "".join(f"{m[p]:>11.2f}{m[p] / floor['floor_s']:>8.1f}" for m in median.values())
        if "before" in median:
            line += f"   {median['now'][p] / median['before'][p]:>10.3f}"
        print(line)
    for variant, tables in (result.get("top_ops") or {}).items():
        for p in PHASES:
            print(f"  top operators ({variant}) {p}: " + "; ".join(
                f"{t['op']} {t['self_s']:.2f} s ({t['share']:.0%}, {t['calls']} calls)" for t in tables.get(p, [])[:6]))


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from rlbench.environment import environment
    from rlbench.report.io import write_json_atomic

    revision = load_revision(args.compare) if args.compare else None
    load_before = os.getloadavg()
    results = []
    if args.logprob_head:
        assert revision is not None, "--logprob-head compares with --compare REF"
        results.append(logprob_head(args, revision))
    for precision in [] if args.logprob_head else args.precision:
        results.append(profile_precision(args, precision, revision))
        print_result(results[-1])
    document = {"benchmark": "profile_phases", "settings": {k: str(v) for k, v in vars(args).items()},
                "environment": environment(ROOT), "load_average": {"before": load_before, "after": os.getloadavg()},
                "results": results, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_json_atomic(args.out, document)
    print(f"load average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
