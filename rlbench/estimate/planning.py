"""The planning table of docs/planning.md: per-rank peak for the catalog's shapes, generated.

    python -m rlbench.estimate.planning --output docs/planning.md [--cache planning.json]

For each shape (Qwen2.5-0.5B, 1.5B, 7B, Llama-3.1-8B) x algorithm (PPO, GRPO, GRPO-Zero) x
precision (fp32, bf16-mixed) x rank count (1, 2, 4, 8), the per-rank process peak that
`rlbench estimate --ranks N` predicts at one stated step (`SETTINGS`), and the smallest of those
rank counts whose peak fits an 80 GB card (H100-80GB, with the 20% margin and the device overhead
of `rlbench.estimate.fit`). Every figure is an estimate on fake tensors: nothing is loaded; a
cell (three algorithms at one rank count) takes minutes of CPU at this step (512 new tokens,
micro-batches of 8, checkpointing; the measured times are in docs/results/ranks.md); `--cache`
keeps finished cells, so an interrupted table resumes, and `--models`
with `--merge` shares it between processes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

MODELS = ("shape:qwen2.5-0.5b", "shape:qwen2.5-1.5b", "shape:qwen2.5-7b", "shape:llama-3.1-8b")
ALGORITHMS = ("ppo", "grpo", "grpo_zero")
PRECISIONS = {"bf16-mixed": "bfloat16", "fp32": "float32"}  # the common case first
RANKS = (1, 2, 4, 8)
GPU = "H100-80GB"
PROMPT_TOKENS = 256
SETTINGS = {"completions_per_step": 32, "group_size": 4, "max_new_tokens": 512, "micro_batch_size": 8,
            "gradient_checkpointing": True}
COMMAND = "python -m rlbench.estimate.planning --output docs/planning.md --cache cells.json"


def planning_suite(model: str, precision: str) -> Any:
    """The suite every cell of one model and precision is estimated from (all three algorithms)."""
    from rlbench.config import load_suite

    raw = {"name": "planning",
           "model": {"name": model, "dtype": PRECISIONS[precision], "precision": precision, "sft": {"steps": 0},
                     "micro_batch_size": SETTINGS["micro_batch_size"],
                     "gradient_checkpointing": SETTINGS["gradient_checkpointing"],
                     "max_prompt_tokens": PROMPT_TOKENS},
           "algorithms": [{"name": a} for a in ALGORITHMS], "budget": {"steps": 1},
           "rollout": {"engine": "hf", **{k: SETTINGS[k] for k in ("completions_per_step", "group_size",
                                                                    "max_new_tokens")}}}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "planning.yaml"
        path.write_text(yaml.safe_dump(raw))
        return load_suite(path)


def estimate_cells(cache: dict[str, Any], save: Any, models: tuple[str, ...] = MODELS) -> dict[str, Any]:
    """Every cell `model|precision|ranks` -> {algorithm: {peak_bytes, required_bytes, fits, error}}."""
    from rlbench.estimate import estimate_suite
    from rlbench.estimate.fit import verdict
    from rlbench.estimate.gpus import gpu_gib
    from rlbench.estimate.source import resolve_model

    gib = gpu_gib(GPU)[0]
    for model_name in models:
        model = resolve_model(model_name)
        for precision in PRECISIONS:
            suite = planning_suite(model_name, precision)
            for ranks in RANKS:
                key = f"{model_name}|{precision}|{ranks}"
                if key in cache:
                    continue
                start, cpu = time.perf_counter(), time.process_time()
                estimate = estimate_suite(suite, "cpu", PROMPT_TOKENS, model=model, ranks=ranks)
                cache[key] = {a.label: {"peak_bytes": a.process_peak_bytes, "peak_phase": a.peak_phase,
                                        "error": a.error, **({} if a.error else {
                                            k: verdict(a, suite, gib)[k] for k in ("required_bytes", "fits")})}
                              for a in estimate.algorithms}
                cache[key]["seconds"] = round(time.perf_counter() - start, 1)
                cache[key]["cpu_seconds"] = round(time.process_time() - cpu, 1)
                print(f"{key}: {cache[key]['seconds']} s ({cache[key]['cpu_seconds']} s of CPU)", file=sys.stderr,
                      flush=True)
                save(cache)
    return cache


def _cpu_seconds(cells: dict[str, Any]) -> list[float]:
    """The CPU seconds of each cell that recorded them, smallest first."""
    return sorted(c["cpu_seconds"] for c in cells.values() if "cpu_seconds" in c)


def _took(cells: dict[str, Any], seconds: float) -> str:
    """What the cells cost: CPU seconds where recorded (cells estimated side by side share the
    cores, so their wall times overlap), else the wall time."""
    cpu = _cpu_seconds(cells)
    if not cpu:
        return f"{seconds / 60:.0f} min of wall time for the cells estimated"
    return f"{sum(cpu) / 60:.0f} min of CPU for the {len(cpu)} cells estimated ({cpu[0]:.0f} to {cpu[-1]:.0f} s each)"


def markdown(cells: dict[str, Any], seconds: float) -> str:
    """docs/planning.md from the cells."""
    from rlbench.estimate.fit import DEVICE_OVERHEAD_GIB
    from rlbench.estimate.gpus import MARGIN, gpu_gib

    gib = gpu_gib(GPU)[0]
    from rlbench import __version__
    from rlbench.environment import environment, hardware_class
    from rlbench.estimate.parallel import cores

    machine = hardware_class(environment())
    lines = [
        "# Planning table: per-rank memory under FSDP2, and how many 80 GB GPUs",
        "",
        f"Generated by `{COMMAND}` with rlbench {__version__} as of {datetime.now(timezone.utc):%Y-%m-%d}, on "
        f"{machine} ({cores()} cores); {_took(cells, seconds)} (estimates on fake tensors "
        "do not depend on the machine; their time does). Do not edit by hand: change `rlbench/estimate/planning.py` "
        "and run the command again.",
        "",
        "Each figure is the per-rank process peak of `rlbench estimate --ranks 4` (and 1, 2, 8) (GiB): the largest phase peak of live "
        "tensors on one rank, every role sharded with FSDP2 over N ranks as `rlbench run` shards it (parameters, "
        "gradients and AdamW state sharded; each unit all-gathered while it computes; the whole policy gathered once "
        "for generation and evaluation), traced on fake tensors, a copy of the model cut to 4 and 5 decoder layers extrapolated to "
        "its real depth (memory is affine in the number of layers; `benchmarks/estimate_depth_vs_full.py` holds the "
        "extrapolation against a trace of every layer). The step: "
        f"{SETTINGS['completions_per_step']} completions (GRPO and GRPO-Zero: groups of {SETTINGS['group_size']}; "
        f"PPO: one per prompt), prompts of {PROMPT_TOKENS} tokens, every completion {SETTINGS['max_new_tokens']} new "
        f"tokens (the worst case), micro-batches of {SETTINGS['micro_batch_size']} rows, gradient checkpointing on, "
        "the hf engine, each algorithm's default parameters (PPO holds policy, reference, reward model and value "
        "model; GRPO policy, reference and reward model; GRPO-Zero policy and reference). The held-out evaluation "
        "generates the schema's default batch of 256 problems (`eval.batch_size`), each rank its slice of it, "
        "with the same lengths.",
        "",
        f"`GPUs`: the smallest of {', '.join(map(str, RANKS))} ranks whose per-rank peak, plus "
        f"{DEVICE_OVERHEAD_GIB:g} GiB of device overhead, stays under {1 - MARGIN:.0%} of an {GPU} ({gib:g} GiB "
        f"reported); `> {RANKS[-1]}` when none does. A figure in *italics* does not fit.",
        "",
        "| model | precision | algorithm | " + " | ".join(f"{n} rank{'s' if n > 1 else ''}" for n in RANKS)
        + " | GPUs (80 GB) |",
        "|---|---|---|" + "---:|" * len(RANKS) + "---:|",
    ]
    for model in MODELS:
        for precision in PRECISIONS:
            for algo in ALGORITHMS:
                row, smallest, unknown = [], None, False
                for ranks in RANKS:
                    cell = cells.get(f"{model}|{precision}|{ranks}", {}).get(algo)
                    if cell is None or cell.get("error"):
                        row.append("error" if cell else "-")
                        unknown = unknown or (cell is None and smallest is None)
                        continue
                    figure = f"{cell['peak_bytes'] / 2**30:,.1f}"
                    row.append(figure if cell["fits"] else f"*{figure}*")
                    if cell["fits"] and smallest is None:
                        smallest = ranks
                name = model.removeprefix("shape:")
                gpus = smallest if smallest else "-" if unknown else f"> {RANKS[-1]}"
                lines.append(f"| {name} | {precision} | {algo} | " + " | ".join(row) + f" | {gpus} |")
    missing = sum(1 for m in MODELS for p in PRECISIONS for n in RANKS if f"{m}|{p}|{n}" not in cells)
    if missing:
        cpu = _cpu_seconds(cells)
        took = f"the {len(cpu)} estimated took {cpu[0]:.0f} to {cpu[-1]:.0f} s of CPU each" if cpu else "none estimated"
        note = (f"**Incomplete:** `-` marks {missing} of {len(MODELS) * len(PRECISIONS) * len(RANKS)} (model, "
                f"precision, rank count) cells not estimated yet ({took} on this machine; see "
                "docs/results/ranks.md). The command resumes from `--cache` and fills them.")
        lines[4:4] = [note, ""]
    phases: dict[str, int] = {}
    for cell in cells.values():
        for algo in ALGORITHMS:
            phase = (cell.get(algo) or {}).get("peak_phase")
            if phase:
                phases[phase] = phases.get(phase, 0) + 1
    if phases:
        counted = ", ".join(f"{phase} in {n}" for phase, n in sorted(phases.items(), key=lambda item: -item[1]))
        lines += ["", f"The phase at each figure's peak: {counted} of the {sum(phases.values())} figures (the evaluation "
                  "batch is 8 times the step's 32 completions; a smaller `eval.batch_size` lowers those)."]
    lines += ["", "Per-rank figures for one model and rank count, with every phase by role and kind: "
              "`rlbench estimate --model shape:qwen2.5-7b --ranks 4 --set model.precision=bf16-mixed`; the smallest "
              "rank count and the largest batch for a card: `--gpu H100-80GB`.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="docs/planning.md")
    parser.add_argument("--cache", help="JSON file of finished cells (read, and written after each)")
    parser.add_argument("--models", help="only these models (comma-separated), e.g. to share the table between "
                                         "processes, each with its own --cache; --merge then writes the table")
    parser.add_argument("--merge", nargs="*", default=[], help="cache files of other processes to merge in")
    parser.add_argument("--render", action="store_true", help="write the table from the cache alone (no estimate)")
    args = parser.parse_args(argv)
    cache_path = Path(args.cache) if args.cache else None
    cache = json.loads(cache_path.read_text()) if cache_path and cache_path.exists() else {}
    for other in args.merge:
        cache.update(json.loads(Path(other).read_text()))

    def save(cells: dict[str, Any]) -> None:
        if cache_path:
            cache_path.write_text(json.dumps(cells, indent=1))

    start = time.perf_counter()
    models = tuple(args.models.split(",")) if args.models else MODELS
    cells = cache if args.render else estimate_cells(cache, save, models)
    seconds = sum(c.get("seconds", 0) for c in cells.values()) or time.perf_counter() - start
    Path(args.output).write_text(markdown(cells, seconds))
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
