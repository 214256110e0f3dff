"""Sampling speed: rlbench's `hf` engine against transformers' `model.generate`, same model, same rows.

Run:

    .venv/bin/python benchmarks/decode.py                                  # embedded model
    flock /tmp/rlbench-big.lock .venv/bin/python benchmarks/decode.py --model shape:qwen2.5-0.5b
    .venv/bin/python benchmarks/decode.py --model shape:qwen2.5-0.5b --profile   # torch.profiler table too

Both sample `--rows` completions (`--group` per prompt, as a GRPO step does) of exactly
`--new-tokens` tokens at temperature 1 with top-p `--top-p`, in fp32, with `--threads` torch
threads. EOS is suppressed in both (transformers: `min_new_tokens`; rlbench: a model with random
weights rarely emits it, and the benchmark checks that every completion ran to the end), so both
generate the same number of tokens. The two alternate call by call; the first `--warmup` calls of
each are dropped and medians of the next `--repeats` are reported as generated tokens per second,
with the median of each back-to-back pair's ratio (the figure least moved by load that drifts).
Writes results/decode.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded", help="'embedded', shape:<name> or a model directory")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--group", type=int, default=4, help="completions per prompt")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's top operators of one call each")
    parser.add_argument("--out", type=Path, default=Path("results/decode.json"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import torch

    from rlbench.config import TaskConfig
    from rlbench.models.batching import left_pad
    from rlbench.models.embedded import load_pretrained_pair
    from rlbench.models.loading import resolve_base
    from rlbench.rollout import SamplingParams
    from rlbench.rollout.hf import HFEngine
    from rlbench.tasks import encode_prompts
    from rlbench.tasks.synthetic import load_synthetic

    torch.set_num_threads(args.threads)
    model, tokenizer = load_pretrained_pair(resolve_base(args.model))
    model.eval()
    problems = load_synthetic(TaskConfig(), "train", args.rows // args.group, seed=0)
    prompts = encode_prompts(tokenizer, problems)
    params = SamplingParams(args.new_tokens, temperature=1.0, top_p=args.top_p)
    engine = HFEngine(model, tokenizer)
    ids, mask = left_pad([p for p in prompts for _ in range(args.group)], tokenizer.pad_token_id)

    def rlbench_call(seed: int) -> int:
        rollout = engine.generate(prompts, args.group, params, seed=seed)
        return rollout.num_tokens

    @torch.no_grad()
    def transformers_call(seed: int) -> int:
        torch.manual_seed(seed)
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=args.top_p,
                             top_k=0, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                             pad_token_id=tokenizer.pad_token_id)
        return (out.shape[1] - ids.shape[1]) * out.shape[0]

    calls = {"rlbench": rlbench_call, "transformers": transformers_call}
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    tokens: dict[str, int] = {}
    for i in range(args.warmup + args.repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            tokens[name] = call(i)
            elapsed = time.perf_counter() - start
            if i >= args.warmup:
                seconds[name].append(elapsed)
            print(f"  call {i + 1}/{args.warmup + args.repeats} {name}: {elapsed:.3f} s"
                  f"{'' if i >= args.warmup else ' (warm-up)'}", flush=True)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for name, call in calls.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                call(0)
            print(f"\n== {name}: top operators by self CPU time ==")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    expected = args.rows * args.new_tokens
    result = {"model": args.model, "parameters": sum(p.numel() for p in model.parameters()),
              "vocab_size": model.config.vocab_size, "rows": args.rows, "group": args.group,
              "new_tokens": args.new_tokens, "top_p": args.top_p, "threads": args.threads,
              "cpu_count": os.cpu_count(), "tokens": tokens, "all_ran_to_max_new_tokens": tokens["rlbench"] == expected,
              "seconds": seconds,
              "tokens_per_s": {name: tokens[name] / statistics.median(s) for name, s in seconds.items()}}
    result["speedup"] = result["tokens_per_s"]["rlbench"] / result["tokens_per_s"]["transformers"]
    # Each timed call's pair (rlbench then transformers, back to back) shares the machine's load of
    # the moment: the median of the per-pair ratios is the figure least moved by load that drifts.
    result["pair_speedups"] = [t / r for r, t in zip(seconds["rlbench"], seconds["transformers"])]
    result["pair_speedup_median"] = statistics.median(result["pair_speedups"])
    print(f"{args.model}: {args.rows} rows x {args.new_tokens} new tokens, {args.threads} threads (median of "
          f"{args.repeats})")
    for name, rate in result["tokens_per_s"].items():
        print(f"  {name:<13} {rate:10.1f} tokens/s   {statistics.median(seconds[name]):8.3f} s per call")
    print(f"  rlbench / transformers: {result['speedup']:.2f}x (ratio of medians), "
          f"{result['pair_speedup_median']:.2f}x (median of back-to-back pairs)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
