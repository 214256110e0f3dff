"""The estimate's operator memo (`rlbench.estimate.opmemo`) against FakeTensorMode alone: same
figures, and the CPU time of each, side by side in one process.

    python benchmarks/estimate_memo_vs_fake.py --model shape:qwen2.5-7b --algos grpo_zero --ranks 8 \
        [--depth 4] [--repeats 2] [--out-json OUT]

For each algorithm, one traced run (`simulate.trace_run`, the model cut to `--depth` decoder
layers) with the memo and one without, alternated `--repeats` times (the first pair also warms
imports and caches; the machine may be loaded, so compare the ratio of the later pairs). Every
region peak, phase start and end and the end state must be identical: exit 1 if one differs.
Printed: a table of CPU seconds per trace and the memo's hit rate, and one JSON document.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time

import torch

from rlbench.estimate import opmemo
from rlbench.estimate.command import add_arguments, build_suite
from rlbench.estimate.ranks import suite_ranks
from rlbench.estimate.simulate import trace_run
from rlbench.estimate.source import longest_prompt, resolve_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--depth", type=int, default=4, help="decoder layers traced (default 4, as the estimate does)")
    parser.add_argument("--repeats", type=int, default=2, help="pairs of traces per algorithm (default 2)")
    parser.add_argument("--out-json", help="write the JSON document here too")
    args = parser.parse_args(argv)
    suite = build_suite(args)
    ranks = suite_ranks(suite, args.ranks)
    model = resolve_model(suite.model.name)
    prompt_tokens = args.prompt_tokens or longest_prompt(suite, model.tokenizer)[0]
    rows, same = [], True
    for algo in suite.algorithms:
        seen = {}
        for repeat in range(args.repeats):
            for memo in (False, True):
                hits, calls = opmemo.stats["hits"], opmemo.stats["calls"]
                cpu = time.process_time()
                with contextlib.nullcontext() if memo else opmemo.disabled():
                    trace = trace_run(suite, algo, model.config, args.depth, prompt_tokens, torch.device("cpu"),
                                      ranks=ranks)
                seconds = time.process_time() - cpu
                figures = (trace.peaks, trace.starts, trace.ends, trace.end)
                same = same and seen.setdefault("figures", figures) == figures
                asked = opmemo.stats["calls"] - calls
                rows.append({"algorithm": algo.label or algo.name, "repeat": repeat, "memo": memo,
                             "cpu_seconds": round(seconds, 2),
                             "hit_rate": round((opmemo.stats["hits"] - hits) / asked, 3) if memo and asked else None})
                print(f"{rows[-1]['algorithm']:>10}  repeat {repeat}  memo {'on ' if memo else 'off'}  "
                      f"{seconds:7.2f} s CPU" + (f"  hit rate {rows[-1]['hit_rate']:.1%}" if memo else ""),
                      flush=True)
    later = [r for r in rows if r["repeat"] > 0] or rows
    off = sum(r["cpu_seconds"] for r in later if not r["memo"])
    on = sum(r["cpu_seconds"] for r in later if r["memo"])
    print(f"figures identical: {same}; CPU with the memo / without: {on / off:.2f} (later repeats)")
    doc = {"model": suite.model.name, "ranks": ranks, "depth": args.depth, "prompt_tokens": prompt_tokens,
           "rows": rows, "identical": same, "ratio": round(on / off, 3)}
    print(json.dumps(doc))
    if args.out_json:
        with open(args.out_json, "w") as f:
            json.dump(doc, f, indent=1)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
