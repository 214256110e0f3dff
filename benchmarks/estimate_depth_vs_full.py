"""The estimate's depth extrapolation against a trace of every decoder layer, figure by figure.

    python benchmarks/estimate_depth_vs_full.py --model shape:qwen2.5-0.5b --algos grpo_zero --ranks 2 \
        --precision bf16-mixed --precision fp32 [--out-json OUT]

For each (algorithm, precision), `rlbench estimate`'s own figures (`predict.estimate_algorithm`:
traces of the model cut to 3 and 4 decoder layers, extrapolated to its real depth) against the
same run traced at the full depth (`simulate.trace_run` at every layer; the decode loop
fast-forwarded in both, which tests/test_estimate.py holds equal to every step). Compared: every
role's static weights, gradients and optimizer state; every phase's peak, rise, transient and
its peak's bytes by role and kind; the process peak. Printed: the largest relative error and every
figure that differs; exit 1 when one is off by more than `--tolerance` (default 1%).
`--full-from` reuses the full traces of an earlier `--out-json` (after a change to the short
traces). The schema's default step (the estimate's: 64 completions in groups of 4, 48 new tokens) unless
`--set` changes it; prompts of `--prompt-tokens` (default 41).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch

from rlbench.estimate.command import add_arguments, build_suite
from rlbench.estimate.predict import assemble, estimate_algorithm
from rlbench.estimate.simulate import trace_run
from rlbench.estimate.source import resolve_model


def figures(algo: Any) -> dict[str, int]:
    """Every figure of an AlgorithmEstimate, flat: name -> bytes."""
    out = {"process_peak": algo.process_peak_bytes}
    for role, kinds in algo.static.items():
        out |= {f"static/{role}/{kind}": value for kind, value in kinds.items()}
    for name, phase in algo.phases.items():
        out |= {f"{name}/peak": phase.peak_bytes, f"{name}/rise": phase.rise_bytes,
                f"{name}/transient": phase.transient_bytes}
        for role, kinds in phase.by_role.items():
            out |= {f"{name}/at_peak/{role}/{kind}": value for kind, value in kinds.items()}
    return out


def compare(line: dict[str, int], full: dict[str, int]) -> dict[str, Any]:
    rows = {}
    for key in sorted(set(line) | set(full)):
        a, b = line.get(key, 0), full.get(key, 0)
        rows[key] = {"extrapolated": a, "full": b, "error": 0.0 if a == b else (a - b) / b if b else float("inf")}
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", action="append", default=[], help="model.precision (repeatable)")
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--out-json", dest="out", help="write every figure here")
    parser.add_argument("--full-from", help="an earlier --out-json: compare with its full traces instead of tracing again")
    add_arguments(parser)
    args = parser.parse_args(argv)
    results, worst = [], 0.0
    earlier = json.loads(open(args.full_from).read()) if args.full_from else []
    for precision in args.precision or [None]:
        args_p = argparse.Namespace(**vars(args))
        dtype = {"fp32": ["model.dtype=float32"], "bf16-mixed": ["model.dtype=bfloat16"]}.get(precision, [])
        args_p.overrides = list(args.overrides) + ([f"model.precision={precision}", *dtype] if precision else [])
        suite = build_suite(args_p)
        model = resolve_model(suite.model.name)
        depth, ranks, tokens = model.config.num_hidden_layers, args.ranks or 1, args.prompt_tokens or 41
        cpu = torch.device("cpu")
        for algo in suite.algorithms:
            t0 = time.process_time()
            line = estimate_algorithm(suite, algo, model.config, tokens, cpu, ranks=ranks)
            t1 = time.process_time()
            known = [r for r in earlier if (r["model"], r["precision"], r["algorithm"], r["ranks"])
                     == (suite.model.name, precision, algo.name, ranks)]
            if known:
                full_figures = {k: r["full"] for k, r in known[0]["figures"].items() if r["full"]}
            else:
                full_figures = figures(assemble(algo.label or algo.name, algo, [
                    trace_run(suite, algo, model.config, depth, tokens, cpu, True, None, ranks)], depth))
            t2 = time.process_time()
            rows = compare(figures(line), full_figures)
            off = {k: r for k, r in rows.items() if r["error"]}
            largest = max((abs(r["error"]) for r in rows.values()), default=0.0)
            worst = max(worst, largest)
            print(f"{suite.model.name} {precision} {algo.name} ranks {ranks}: {len(rows)} figures, {len(off)} differ, "
                  f"largest error {largest:.2e}; cpu {t1 - t0:.0f} s for {line.traced_depths} layers, "
                  f"{t2 - t1:.0f} s for {depth}", flush=True)
            for key, r in off.items():
                print(f"  {key}: {r['extrapolated']:,} vs {r['full']:,} ({r['error']:+.2e})", flush=True)
            results.append({"model": suite.model.name, "precision": precision, "algorithm": algo.name,
                            "ranks": ranks, "depth": depth, "traced_depths": list(line.traced_depths),
                            "cpu_seconds": {"extrapolated": round(t1 - t0, 1), "full": round(t2 - t1, 1)},
                            "largest_error": largest, "figures": rows})
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 1 if worst > args.tolerance else 0


if __name__ == "__main__":
    sys.exit(main())
