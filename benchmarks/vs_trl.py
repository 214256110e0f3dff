"""rlbench's GRPO-Zero step against TRL's GRPOTrainer, side by side, on the same model and prompts.

Run:

    make vs-trl                                    # installs the `compare` extra (TRL) first
    .venv/bin/python benchmarks/vs_trl.py          # max_new_tokens 32 and 128, 20 timed steps each
    .venv/bin/python benchmarks/vs_trl.py --lengths 32 --steps 10 --threads 2
    .venv/bin/python benchmarks/vs_trl.py --scaling   # rlbench alone: G in {4, 8, 16} x max_new_tokens in {32, 64, 128}
    .venv/bin/python benchmarks/vs_trl.py --ablation  # rlbench alone: what each speed-up buys, step by step
    # at the 0.5B shape: one timed step each with glibc's default allocator (the first: it creates
    # AdamW's state), then one memory step each with the mmap threshold
    flock /tmp/rlbench-big.lock .venv/bin/python benchmarks/vs_trl.py --model shape:qwen2.5-0.5b --lengths 32 \
        --group 4 --completions 8 --threads 2 --warmup 0 --steps 1 --memory-steps 1

What is compared. Both frameworks load the same exported model and tokenizer (the cached SFT
checkpoint of the embedded model when one exists, else the freshly initialised embedded model;
`--model shape:<name>` loads a shape model's saved directory, random weights and the synthetic
tokenizer, in both), train on the same prompts in the same order, G = 8 completions per prompt, 64
completions per step (`--group`, `--completions`), temperature 1.0, beta 0.04 (so both hold a reference model), the DAPO/token-mean loss,
clip epsilon 0.2, AdamW at lr 1e-4, gradient clipping at 1.0, one update per batch, the same precision, the same
torch thread count, and the same reward: answer_correct + 0.1 format_strict (rlbench's rule
functions, called from TRL's reward function). TRL's trainer is configured so that one of its
steps is one generation of 64 completions and one optimizer step (per_device_train_batch_size 64,
num_generations 8, gradient_accumulation_steps 1, steps_per_generation 1, num_iterations 1), with
no vLLM, no gradient checkpointing and no reporting. Precision (`--precision`): fp32 (the default:
TRL's bf16/fp16 off, rlbench's model.precision fp32), or bf16-mixed: TRL with `bf16=True` (accelerate's
bf16 autocast over the fp32 model it loads, fp32 AdamW) against rlbench's bf16-mixed (fp32 master
weights and AdamW moments for the policy, bf16 autocast in every phase, the frozen reference held in
bf16: model.dtype bfloat16). Both then compute their matmuls in bf16; TRL's reference is an fp32
copy computed under autocast.

How it is timed. TRL runs its own training loop; a callback starts the clock at `on_step_begin`
and stops it at `on_step_end` (generation, scoring, reference log-probs, loss, backward, clipping,
optimizer step), then runs one rlbench step (`rlbench.train.Run.step`, the same loop `rlbench run`
uses) under its own clock. The two alternate step by step in one process, so drift in machine
load hits both; the first `--warmup` steps of each are dropped and the medians of the next
`--steps` are reported.

How memory is measured. The process is restarted with MALLOC_MMAP_THRESHOLD_=65536 (freed
memory goes back to the kernel). That setting makes every step slower (each large tensor is its
own mmap, zeroed by the kernel on each allocation), so `--allocator default` skips the restart:
use it for times, and the default for memory; the JSON records which (`settings.allocator`), and
the table says when its memory figures are not to be trusted. `--memory-steps N` does both in one
process, for models too slow to run twice: the warm-up and timed steps run with glibc's default
allocator, then the same threshold is set with glibc's `mallopt(M_MMAP_THRESHOLD, 65536)` (what the
environment variable sets at start-up), free heap pages are handed back (`malloc_trim(0)`), and N
more steps of each framework give the memory figures (their times are recorded, not used). Around each step the kernel's peak-RSS counter is reset
(/proc/self/clear_refs) and read back (VmHWM), giving the step's rise above the RSS it started
from: its activations, caches, logits and gradients. Both frameworks' models live in the one
process, so absolute RSS would count both; each framework's peak is therefore reported as its
own state (policy weights, optimizer state and reference model, counted from their tensors) plus
its largest step rise. rlbench's gradients are freed after each of its steps (TRL's trainer frees
its own), so neither step starts with the other's or its own gradients resident.

`--ablation` times rlbench's step with its speed-ups added one at a time, the variants taking
turns step by step: two torch threads (the default on a 2-core machine), the module's own forward
for sampling and training (as for an architecture the lean path does not cover); then one thread;
then the lean decoder for sampling; then the lean packed forward for reference log-probs and the
update (everything on: what `rlbench run` does with `threads: 1`).

Writes one JSON document (default results/vs_trl.json, scaling.json or ablation.json) and prints a table.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}
REWARD_WEIGHTS = {"answer_correct": 1.0, "format_strict": 0.1}
LR, BETA, CLIP_EPS, MAX_GRAD_NORM = 1e-4, 0.04, 0.2, 1.0
COMPLETIONS_PER_STEP = 64
TRAIN_SIZE = 4000


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 128], help="max_new_tokens values")
    parser.add_argument("--group", type=int, default=8, help="completions per prompt (G)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each framework")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each framework first")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both (1 is fastest for a 1M model)")
    parser.add_argument("--model", default=None,
                        help="shape:<name> or a saved causal LM directory (default: the cached SFT checkpoint of the "
                             "embedded model, else the fresh model)")
    parser.add_argument("--completions", type=int, default=COMPLETIONS_PER_STEP, help="completions per step")
    parser.add_argument("--allocator", choices=("mmap", "default"), default="mmap",
                        help="mmap: restart with MALLOC_MMAP_THRESHOLD_=65536 so that RSS figures can be trusted "
                             "(every step slower); default: glibc's own settings, for times")
    parser.add_argument("--memory-steps", type=int, default=0,
                        help="after the timed steps, set the mmap threshold in this process (mallopt) and run this "
                             "many more steps of each for the memory figures; no restart (times with the default "
                             "allocator)")
    parser.add_argument("--fresh-model", action="store_true",
                        help="use the freshly initialised embedded model (it rarely emits EOS, so every completion "
                             "runs to max_new_tokens)")
    parser.add_argument("--precision", choices=("fp32", "bf16-mixed"), default="fp32",
                        help="fp32, or bf16-mixed: TRL with bf16=True against rlbench's bf16-mixed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON output (default results/vs_trl.json; scaling.json or ablation.json for those modes)")
    parser.add_argument("--scaling", action="store_true",
                        help="rlbench alone: step time for G in --groups and max_new_tokens in --scaling-lengths")
    parser.add_argument("--ablation", action="store_true",
                        help="rlbench alone: step time with its speed-ups added one at a time, at each of --lengths")
    parser.add_argument("--groups", type=int, nargs="+", default=[4, 8, 16], help="G values for --scaling")
    parser.add_argument("--scaling-lengths", type=int, nargs="+", default=[32, 64, 128],
                        help="max_new_tokens values for --scaling")
    return parser.parse_args(argv)


# ---- measurement helpers ----------------------------------------------------------------------



class StepMemory:
    """Peak RSS rise of one step: clear_refs at start, VmHWM - VmRSS(start) at the end."""

    def __init__(self) -> None:
        from rlbench.measure.cpu_probe import read_proc_status, reset_peak_rss

        self._read, self._reset = read_proc_status, reset_peak_rss
        self.start = 0

    def begin(self) -> None:
        assert self._reset(), "cannot write /proc/self/clear_refs: the step peak needs it"
        self.start = self._read()["VmRSS"]

    def end(self) -> dict[str, int]:
        status = self._read()
        return {"rise_bytes": status["VmHWM"] - self.start, "peak_rss_bytes": status["VmHWM"],
                "start_rss_bytes": self.start}


def static_bytes(*pairs: tuple[Any, Any]) -> int:
    """Weights, gradients, optimizer state and buffers of (model, optimizer) pairs, storages counted once."""
    from rlbench.measure.static import role_static_bytes

    return sum(role_static_bytes(model, optimizer)["total"] for model, optimizer in pairs if model is not None)


def mmap_threshold_now(threshold: int = int(MALLOC_ENV["MALLOC_MMAP_THRESHOLD_"])) -> None:
    """Set glibc's mmap threshold in this process (as MALLOC_MMAP_THRESHOLD_ does at start-up: fixed,
    no dynamic adjustment) and hand free heap pages back, so that later RSS rises count what a step holds."""
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    m_mmap_threshold = -3  # glibc malloc.h
    assert libc.mallopt(m_mmap_threshold, threshold) == 1, "mallopt(M_MMAP_THRESHOLD) failed"
    gc.collect()
    libc.malloc_trim(0)


def summarize(times: list[float], memory: list[dict[str, int]], state_bytes: int,
              lengths: list[float]) -> dict[str, Any]:
    rise = max(m["rise_bytes"] for m in memory)
    return {
        "step_s_median": statistics.median(times),
        "step_s": [round(t, 4) for t in times],
        "peak_bytes": state_bytes + rise,
        "state_bytes": state_bytes,
        "step_rise_bytes_max": rise,
        "process_peak_rss_bytes_max": max(m["peak_rss_bytes"] for m in memory),
        "completion_tokens_mean": statistics.fmean(lengths) if lengths else None,
    }


# ---- the shared model and prompts -------------------------------------------------------------


def find_sft_checkpoint() -> Path | None:
    """The cached SFT output of the embedded model with the most SFT steps (a directory holding DONE)."""
    from rlbench.cache import cache_root

    roots = [cache_root() / "sft", *Path("/tmp").glob("rlcache*/sft")]
    found = [d for root in roots if root.is_dir() for d in root.iterdir() if (d / "DONE").exists()]

    def sft_steps(directory: Path) -> float:
        try:
            return float(json.loads((directory / "sft.json").read_text()).get("sft/steps", 0))
        except (OSError, ValueError):
            return 0.0

    return max(found, key=sft_steps) if found else None


def export_model(source: Path | None, into: Path, fresh: bool = False) -> tuple[Path, str]:
    """Save the model both frameworks load (through save_pretrained_pair) and say where it came from."""
    from rlbench.models.embedded import build_embedded, load_pretrained_pair, save_pretrained_pair

    if source is not None and str(source).startswith("shape:"):
        from rlbench.models.loading import resolve_base

        return resolve_base(str(source)), str(source)  # saved once in the cache: both load it from there
    source = None if fresh else Path(source) if source else find_sft_checkpoint()
    if source is not None:
        model, tokenizer = load_pretrained_pair(source)
        origin = str(source)
    else:
        model, tokenizer = build_embedded(0)
        origin = "embedded model, freshly initialised" + ("" if fresh else " (no SFT checkpoint in the cache)")
    return save_pretrained_pair(model, tokenizer, into), origin


def make_suite(max_new_tokens: int, group: int, threads: int, completions: int = COMPLETIONS_PER_STEP,
               precision: str = "fp32"):
    from rlbench.config import AlgorithmConfig, BudgetConfig, ModelConfig, RolloutConfig, Suite, TaskConfig

    return Suite(
        name="vs_trl",
        model=ModelConfig(dtype="bfloat16" if precision == "bf16-mixed" else "float32", precision=precision),
        task=TaskConfig(train_size=TRAIN_SIZE),
        algorithms=[AlgorithmConfig(name="grpo_zero", rewards=dict(REWARD_WEIGHTS),
                                    params={"lr": LR, "beta": BETA, "clip_eps": CLIP_EPS, "agg": "token_mean",
                                            "max_grad_norm": MAX_GRAD_NORM})],
        budget=BudgetConfig(steps=1_000_000),
        rollout=RolloutConfig(engine="hf", completions_per_step=completions, group_size=group,
                              max_new_tokens=max_new_tokens, temperature=1.0, top_p=1.0),
        threads=threads,
        probe="cpu",
    )


def make_run(model_dir: Path, max_new_tokens: int, group: int, threads: int, seed: int,
             completions: int = COMPLETIONS_PER_STEP, precision: str = "fp32"):
    import torch

    from rlbench.measure.probing import NullProbe
    from rlbench.train import Run

    suite = make_suite(max_new_tokens, group, threads, completions, precision)
    torch.manual_seed(seed)
    return Run.build(suite, suite.algorithms[0], seed, model_dir, None, NullProbe())


def rlbench_step(run) -> tuple[float, dict[str, int], float]:
    """One timed rlbench step: (seconds, memory, mean completion tokens)."""
    memory = StepMemory()
    memory.begin()
    start = time.perf_counter()
    metrics = run.step()
    seconds = time.perf_counter() - start
    used = memory.end()
    run.optimizer.zero_grad(set_to_none=True)
    return seconds, used, metrics["learning/completion_length"]


# ---- side by side -----------------------------------------------------------------------------


def compare_length(model_dir: Path, max_new_tokens: int, args: argparse.Namespace) -> dict[str, Any]:
    """Alternate TRL and rlbench steps in this process; medians and peaks of each."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlbench.catalog import rule_functions
    from rlbench.config import ModelConfig
    from rlbench.models.loading import load_tokenizer
    from rlbench.rewards import score_rules
    from rlbench.tasks import prompt_text

    run = make_run(model_dir, max_new_tokens, args.group, args.threads, args.seed, args.completions, args.precision)
    timed_end = args.warmup + args.steps
    total_steps = timed_end + args.memory_steps
    # The prompts rlbench's run will take, in its order, so both frameworks see the same ones each step.
    ordered = [run.train_problems[i] for i in run.order[:total_steps * run.prompts_per_step]]
    by_id = {p.id: p for p in ordered}
    dataset = Dataset.from_list([{"prompt": prompt_text(p), "problem_id": p.id} for p in ordered])
    trl_lengths: list[float] = []
    rules = rule_functions(REWARD_WEIGHTS)

    def rlbench_rules(completions: list[str], problem_id: list[str], completion_ids: list[list[int]],
                      **_: Any) -> list[float]:
        """answer_correct + 0.1 format_strict: rlbench's own rule functions."""
        trl_lengths.append(sum(len(c) for c in completion_ids) / len(completion_ids))
        return score_rules(completions, [by_id[i] for i in problem_id], REWARD_WEIGHTS, rules)[0]

    record: dict[str, list] = {"trl_s": [], "trl_mem": [], "rl_s": [], "rl_mem": [], "rl_len": []}
    memory_steps = args.memory_steps

    class Alternate(TrainerCallback):
        """Times each TRL step, then runs one rlbench step."""

        def __init__(self) -> None:
            self.memory = StepMemory()
            self.start = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            if memory_steps and len(record["trl_s"]) == timed_end:
                mmap_threshold_now()  # the memory steps: freed memory goes back to the kernel from here on
            self.memory.begin()
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            record["trl_s"].append(time.perf_counter() - self.start)
            record["trl_mem"].append(self.memory.end())
            seconds, used, length = rlbench_step(run)
            record["rl_s"].append(seconds)
            record["rl_mem"].append(used)
            record["rl_len"].append(length)
            print(f"  T={max_new_tokens} step {state.global_step:3d}: TRL {record['trl_s'][-1]:.3f} s, "
                  f"rlbench {seconds:.3f} s", flush=True)

    with tempfile.TemporaryDirectory(prefix="vs_trl_") as output_dir:
        config = GRPOConfig(
            output_dir=output_dir,
            per_device_train_batch_size=args.completions,
            num_generations=args.group,
            gradient_accumulation_steps=1,
            steps_per_generation=1,
            num_iterations=1,
            max_completion_length=max_new_tokens,
            temperature=1.0,
            top_p=1.0,
            beta=BETA,
            epsilon=CLIP_EPS,
            loss_type="dapo",  # token mean over the batch: rlbench's agg token_mean
            scale_rewards="group",
            learning_rate=LR,
            lr_scheduler_type="constant",
            warmup_steps=0,
            weight_decay=0.0,
            max_grad_norm=MAX_GRAD_NORM,
            max_steps=total_steps,
            use_vllm=False,
            gradient_checkpointing=False,
            bf16=args.precision == "bf16-mixed",
            fp16=False,
            use_cpu=True,
            report_to="none",
            logging_steps=10_000,
            save_strategy="no",
            shuffle_dataset=False,
            disable_tqdm=True,
            dataloader_num_workers=0,
            seed=args.seed,
            model_init_kwargs={"dtype": torch.float32},
        )
        trainer = GRPOTrainer(model=str(model_dir), reward_funcs=[rlbench_rules], args=config,
                              train_dataset=dataset, processing_class=load_tokenizer(model_dir, ModelConfig()), callbacks=[Alternate()])
        trainer.train()
        trl_state = static_bytes((trainer.model, trainer.optimizer), (trainer.ref_model, None))
    rl_state = static_bytes(*run.role_models().values())
    timed = slice(args.warmup, timed_end)
    measured = slice(timed_end, total_steps) if memory_steps else timed  # the steps whose memory is reported
    result = {
        "max_new_tokens": max_new_tokens,
        "rlbench": summarize(record["rl_s"][timed], record["rl_mem"][measured], rl_state, record["rl_len"][timed]),
        "trl": summarize(record["trl_s"][timed], record["trl_mem"][measured], trl_state, trl_lengths[timed]),
    }
    for name, key in (("rlbench", "rl_mem"), ("trl", "trl_mem")):
        result[name]["step_memory_all"] = record[key]  # every step's RSS rise, warm-up included
    result["rlbench"]["step_s_all"] = [round(t, 4) for t in record["rl_s"]]  # warm-up steps included
    result["trl"]["step_s_all"] = [round(t, 4) for t in record["trl_s"]]
    result["speedup"] = result["trl"]["step_s_median"] / result["rlbench"]["step_s_median"]
    result["peak_ratio"] = result["rlbench"]["peak_bytes"] / result["trl"]["peak_bytes"]
    return result


def print_comparison(results: list[dict[str, Any]], allocator: str = "mmap") -> None:
    mb = 1 / 2**20
    print()
    print(f"{'max_new_tokens':>14}  {'rlbench s/step':>14}  {'TRL s/step':>10}  {'speed-up':>8}  "
          f"{'rlbench peak MB':>15}  {'TRL peak MB':>11}  {'tokens/completion r|t':>21}")
    for r in results:
        rl, trl = r["rlbench"], r["trl"]
        print(f"{r['max_new_tokens']:>14}  {rl['step_s_median']:>14.3f}  {trl['step_s_median']:>10.3f}  "
              f"{r['speedup']:>7.2f}x  {rl['peak_bytes'] * mb:>15.1f}  {trl['peak_bytes'] * mb:>11.1f}  "
              f"{rl['completion_tokens_mean']:>10.1f} | {trl['completion_tokens_mean']:<8.1f}")
    print("peak MB = own state (weights, optimizer state, reference model) + the step's largest RSS rise")
    for r in results:
        print(f"T={r['max_new_tokens']}: every step, warm-up included: rlbench {r['rlbench']['step_s_all']} s, "
              f"TRL {r['trl']['step_s_all']} s; peak rlbench / TRL {r['peak_ratio']:.2f}")
    if allocator != "mmap":
        print("allocator: glibc's default (no MALLOC_MMAP_THRESHOLD_): times are the ones to read; freed memory "
              "may stay resident, so the peaks are not to be trusted")


# ---- scaling (rlbench alone) ------------------------------------------------------------------


def scaling(model_dir: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Step time for every (G, max_new_tokens), the configurations taking turns step by step."""
    runs = {(g, t): make_run(model_dir, t, g, args.threads, args.seed, args.completions)
            for g in args.groups for t in args.scaling_lengths}
    times: dict[tuple[int, int], list[float]] = {key: [] for key in runs}
    lengths: dict[tuple[int, int], list[float]] = {key: [] for key in runs}
    for step in range(args.warmup + args.steps):
        for key, run in runs.items():
            seconds, _, length = rlbench_step(run)
            if step >= args.warmup:
                times[key].append(seconds)
                lengths[key].append(length)
        print(f"  round {step + 1}/{args.warmup + args.steps}", flush=True)
    return [{"group_size": g, "max_new_tokens": t, "step_s_median": statistics.median(times[(g, t)]),
             "step_s": [round(s, 4) for s in times[(g, t)]],
             "completion_tokens_mean": statistics.fmean(lengths[(g, t)])} for g, t in runs]


def print_scaling(rows: list[dict[str, Any]], groups: list[int], lengths: list[int]) -> None:
    median = {(r["group_size"], r["max_new_tokens"]): r["step_s_median"] for r in rows}
    print()
    print("rlbench step time (s, median), 64 completions per step")
    corner = "G / max_new_tokens"
    print(f"{corner:>18}" + "".join(f"{t:>9}" for t in lengths) + "   growth per doubling of T")
    for g in groups:
        growth = [median[(g, b)] / median[(g, a)] for a, b in zip(lengths, lengths[1:]) if b == 2 * a]
        print(f"{g:>18}" + "".join(f"{median[(g, t)]:>9.3f}" for t in lengths)
              + "   " + ", ".join(f"x{x:.2f}" for x in growth))
    print(f"{'growth per doubling of G':>18}")
    for a, b in zip(groups, groups[1:]):
        if b == 2 * a:
            print(f"{f'{a} -> {b}':>18}" + "".join(f"{median[(b, t)] / median[(a, t)]:>8.2f}x" for t in lengths))


# ---- ablation (rlbench alone) -----------------------------------------------------------------

ABLATION = (  # (name, torch threads, lean decoder, lean training/scoring forward)
    ("module forward, 2 threads", 2, False, False),
    ("module forward, 1 thread", 1, False, False),
    ("+ lean decoder", 1, True, False),
    ("+ lean packed forward", 1, True, True),
)
PHASES = ("generate", "ref_logprobs", "update")


@contextmanager
def lean_forward(enabled: bool):
    """With enabled=False, reference log-probs and the update use the module's own forward, as they
    do for an architecture the lean path does not cover."""
    import rlbench.models.forward as forward

    original = forward.llama_parts
    if not enabled:
        forward.llama_parts = lambda model: None
    try:
        yield
    finally:
        forward.llama_parts = original


def ablation(model_dir: Path, max_new_tokens: int, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    runs = [make_run(model_dir, max_new_tokens, args.group, threads, args.seed, args.completions)
            for _, threads, _, _ in ABLATION]
    for run, (_, _, lean_decoder, _) in zip(runs, ABLATION):
        run.engine.lean = lean_decoder
    steps: list[list[dict[str, Any]]] = [[] for _ in ABLATION]
    for step in range(args.warmup + args.steps):
        for run, record, (_, threads, _, forward_on) in zip(runs, steps, ABLATION):
            torch.set_num_threads(threads)
            with lean_forward(forward_on):
                start = time.perf_counter()
                metrics = run.step()
                seconds = time.perf_counter() - start
            run.optimizer.zero_grad(set_to_none=True)
            if step >= args.warmup:
                record.append({"step": seconds, **{p: metrics.get(f"time/{p}_s", 0.0) for p in PHASES},
                               "tokens": metrics["learning/completion_length"]})
        print(f"  T={max_new_tokens} round {step + 1}/{args.warmup + args.steps}", flush=True)
    torch.set_num_threads(args.threads)
    variants = []
    for record, (name, threads, lean_decoder, forward_on) in zip(steps, ABLATION):
        variants.append({"variant": name, "threads": threads, "lean_decoder": lean_decoder,
                         "lean_forward": forward_on,
                         **{f"{key}_s_median": statistics.median(r[key] for r in record) for key in ("step", *PHASES)},
                         "completion_tokens_mean": statistics.fmean(r["tokens"] for r in record)})
    return {"max_new_tokens": max_new_tokens, "variants": variants}


def print_ablation(results: list[dict[str, Any]]) -> None:
    for result in results:
        print(f"\nmax_new_tokens {result['max_new_tokens']}: medians in seconds (speed-up over the row above)")
        print(f"{'variant':<28}{'step':>8}{'generate':>10}{'ref':>8}{'update':>8}{'gain':>8}")
        previous = None
        for v in result["variants"]:
            gain = f"x{previous / v['step_s_median']:.2f}" if previous else ""
            print(f"{v['variant']:<28}{v['step_s_median']:>8.3f}{v['generate_s_median']:>10.3f}"
                  f"{v['ref_logprobs_s_median']:>8.3f}{v['update_s_median']:>8.3f}{gain:>8}")
            previous = v["step_s_median"]


# ---- main -------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.allocator == "mmap" and not args.memory_steps and any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        # restart so that RSS figures can be trusted
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *argv], {**os.environ, **MALLOC_ENV,
                                                                                       "CUDA_VISIBLE_DEVICES": ""})
    import torch

    torch.set_num_threads(args.threads)
    from rlbench.environment import environment
    from rlbench.report.io import write_json_atomic

    load_before = os.getloadavg()
    started = time.time()
    mode = "scaling" if args.scaling else "ablation" if args.ablation else "vs_trl"
    with tempfile.TemporaryDirectory(prefix="vs_trl_model_") as tmp:
        model_dir, origin = export_model(args.model, Path(tmp), args.fresh_model)
        print(f"model: {origin}; precision: {args.precision}; threads: {args.threads}; load average: {load_before[0]:.2f}", flush=True)
        document: dict[str, Any] = {
            "benchmark": mode,
            "settings": {"completions_per_step": args.completions, "group_size": args.group,
                         "allocator": ("times: glibc default; memory: mmap threshold 65536 set by mallopt "
                                       f"for the last {args.memory_steps} step(s)" if args.memory_steps
                                       else "MALLOC_MMAP_THRESHOLD_=65536" if args.allocator == "mmap"
                                       else "glibc default"),
                         "memory_steps": args.memory_steps,
                         "temperature": 1.0, "beta": BETA, "clip_eps": CLIP_EPS, "lr": LR, "precision": args.precision,
                         "threads": args.threads, "steps": args.steps, "warmup": args.warmup,
                         "rewards": REWARD_WEIGHTS, "model": origin},
            "environment": {**environment(Path(__file__).resolve().parent.parent),
                            "trl": _version("trl"), "platform": platform.platform()},
        }
        if args.scaling:
            document["settings"].update(groups=args.groups, lengths=args.scaling_lengths)
            document["results"] = scaling(model_dir, args)
            print_scaling(document["results"], args.groups, args.scaling_lengths)
        elif args.ablation:
            document["settings"]["lengths"] = args.lengths
            document["results"] = [ablation(model_dir, max_new_tokens, args) for max_new_tokens in args.lengths]
            print_ablation(document["results"])
        else:
            document["settings"]["lengths"] = args.lengths
            document["results"] = []
            for max_new_tokens in args.lengths:
                document["results"].append(compare_length(model_dir, max_new_tokens, args))
                gc.collect()  # the finished pair's models go before the next pair loads
            print_comparison(document["results"], "mmap" if args.memory_steps else args.allocator)
    load_after = os.getloadavg()
    document["load_average"] = {"before": load_before, "after": load_after}
    document["wall_seconds"] = round(time.time() - started, 1)
    print(f"load average (1/5/15 min) before: {_loads(load_before)}, after: {_loads(load_after)}")
    out = args.out or Path("results") / f"{mode}.json"
    write_json_atomic(out, document)
    print(f"wrote {out}")
    return 0


def _loads(loads: tuple[float, float, float]) -> str:
    return " ".join(f"{x:.2f}" for x in loads)


def _version(package: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
