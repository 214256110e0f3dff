"""`rlbench estimate`: each phase's peak memory, per role and kind, predicted on fake tensors.

    rlbench estimate suites/gpu-memory.yaml --set model.name=shape:qwen2.5-0.5b --gpu h100
    rlbench estimate --model shape:qwen2.5-7b --algos grpo_zero --gpu-gib 80 --headroom completions_per_step

For every algorithm of a suite, rlbench's own run (`rlbench.train.Run`: loading, the decode loop,
the packed log-prob forward, scalar heads, AdamW, the update schedule), built from the parts a
worker's run is built from (`rlbench.train.run_parts`, a few replaced: see `simulate`) and never
patched, is executed on fake tensors under PyTorch's MemTracker: shapes, dtypes and storages are real, nothing is allocated, no weight
is loaded or downloaded. Live bytes are counted per phase (generate, score, ref_logprobs, values,
advantages, update, value_update, eval), labelled by role and kind (weights, gradients, optimizer
state, activations, logits, KV cache). Worst case throughout: every prompt as long as the task's
longest, every completion runs to max_new_tokens. Because it runs the code rather than a formula,
the estimate follows the code: LoRA (the reference is the policy with adapters off: 0 bytes),
`beta: 0` (no reference), gradient checkpointing, precision and micro-batches come from the same
paths a run takes.

Per rank (`--ranks N`, or a suite's `distributed:` block): the same run as one rank of an FSDP2
run sees it, every role sharded over N ranks, on PyTorch's fake process group (`ranks`).

Modules: `trace` (the tracker: fake/real execution, labels, region peaks), `opmemo` (its fast path past
FakeTensorMode: fake outputs remembered by input metadata), `simulate` and `standins` (one run on
fake tensors), `ranks` (one rank of an FSDP2 run), `predict` (depth extrapolation, per-phase
figures), `source` (configs and prompt lengths), `gpus` (the cards and the margin), `fit` (fits /
does not fit, the largest value that fits), `sizing` (smallest rank count, largest step),
`planning` (the docs' planning table), `view` (tables, JSON), `command` (the CLI).

What it does not see: memory that is not a tensor (the CUDA context, allocator fragmentation,
library code; `fit.DEVICE_OVERHEAD_GIB` stands for the first two on a GPU), and a vLLM engine's
own reservation beyond `rollout.gpu_memory_utilization` of the card.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rlbench.config import Suite
from rlbench.estimate.parallel import SERIAL, TracePool

__all__ = ["SuiteEstimate", "estimate_suite"]


@dataclass
class SuiteEstimate:
    """Every algorithm's estimate, and what they were made for."""

    suite: Suite
    model: Any  # source.ModelSource
    prompt_tokens: int
    prompt_note: str
    device: str
    algorithms: list[Any]  # predict.AlgorithmEstimate
    seconds: float
    notes: list[str] = field(default_factory=list)
    ranks: int = 1  # > 1: every figure is one rank's, every role sharded with FSDP2 over this many ranks

    def settings(self) -> dict[str, Any]:
        s = self.suite
        return {
            "model": s.model.name, "architecture": self.model.architecture, "parameters": self.model.parameters,
            "layers": self.model.config.num_hidden_layers, "vocab_size": self.model.config.vocab_size,
            "dtype": s.model.dtype, "precision": getattr(s.model, "precision", None),
            "lora": s.model.lora is not None, "gradient_checkpointing": s.model.gradient_checkpointing,
            "completions_per_step": s.rollout.completions_per_step, "group_size": s.rollout.group_size,
            "prompt_tokens": self.prompt_tokens, "prompt_tokens_from": self.prompt_note,
            "max_new_tokens": s.rollout.max_new_tokens, "engine": s.rollout.engine,
            "eval_batch_size": min(s.eval.size, s.eval.batch_size), "traced_on": self.device,
            "ranks": self.ranks, "per_rank": self.ranks > 1, "strategy": "fsdp2" if self.ranks > 1 else None,
            "traced_layers": list(traced_depths(self.algorithms)),
            "extrapolated": any(len(a.traced_depths) > 1 for a in self.algorithms),
        }


def estimate_suite(suite: Suite, device: str | None = None, prompt_tokens: int | None = None,
                   exact: bool = False, model: Any = None, prompt_lengths: dict[str, int] | None = None,
                   ranks: int = 1, prompt_note: str = "given", pool: TracePool = SERIAL) -> SuiteEstimate:
    """Predict every algorithm of `suite` (see the module docstring). `model` reuses a resolved
    `source.ModelSource` (the headroom search estimates one model many times). `prompt_lengths`
    (prompt text -> tokens, `check.run_prompt_lengths`) traces the prompts a run drew, each at its
    own length, instead of every prompt at the widest: to compare with that run. `ranks` > 1: one
    rank of an FSDP2 run over that many ranks (`ranks.py`; `ranks.check_ranks` first). `prompt_note`
    says where a given `prompt_tokens` came from. `pool` (`parallel.TracePool`) traces side by side."""
    import time

    import torch

    from rlbench.device import default_device
    from rlbench.estimate.predict import estimate_algorithm
    from rlbench.estimate.source import longest_prompt, resolve_model

    start = time.perf_counter()
    model = model or resolve_model(suite.model.name, suite.model.trust_remote_code)
    if prompt_lengths:
        prompt_tokens = max(prompt_lengths.values())
        note = f"the run's own prompts, each at its length: {min(prompt_lengths.values())} to {prompt_tokens} tokens"
    elif prompt_tokens is None:
        prompt_tokens, note = longest_prompt(suite, model.tokenizer)
    else:
        note = prompt_note
    traced_on = torch.device(device) if device else default_device()
    algorithms = pool.each(lambda algo: estimate_algorithm(suite, algo, model.config, prompt_tokens, traced_on, exact,
                                                           prompt_lengths, ranks, pool), suite.algorithms)
    notes = [depth_note(algorithms, model.config.num_hidden_layers, exact)]
    notes += [f"{a.label}: {note}" for a in algorithms for note in a.notes]
    if ranks > 1:
        notes.append(f"per rank: every role sharded with FSDP2 over {ranks} ranks as rlbench run shards it (traced as "
                     f"rank 0 of {ranks} on PyTorch's fake process group; each rank samples 1/{ranks} of the step's "
                     "prompts and trains on its share of each minibatch)")
    elif suite.distributed is not None:
        notes.append(f"one process, as asked (--ranks 1): the suite runs on {suite.distributed.nproc_per_node} ranks, "
                     "where each rank holds less")
    if suite.rollout.engine != "hf":
        notes.append(f"engine {suite.rollout.engine}: generation happens in the engine, which reserves "
                     f"rollout.gpu_memory_utilization ({suite.rollout.gpu_memory_utilization}) of the card for its "
                     "weights and KV cache (added to the fit); the policy recomputes the old log-probs")
    return SuiteEstimate(suite, model, prompt_tokens, note, traced_on.type, algorithms,
                         time.perf_counter() - start, notes, ranks)


def depth_note(algorithms: list[Any], layers: int, exact: bool) -> str:
    """How the figures were made: extrapolated from shortened traces, or every layer traced."""
    depths = traced_depths(algorithms)
    decode = "every decode step traced" if exact else "the first and last decode steps traced, the ones between fast-forwarded"
    if len(depths) > 1:
        return (f"every figure extrapolated to the model's {layers} decoder layers from traces of a copy cut to "
                f"{' and '.join(map(str, depths))} layers (memory is affine in the number of layers; --exact traces "
                f"all {layers}); {decode}")
    return f"every decoder layer traced ({layers}); {decode}"


def traced_depths(algorithms: list[Any]) -> tuple[int, ...]:
    """The decoder depths the algorithms' estimates traced (the first that traced any; () for none)."""
    return tuple(next((a.traced_depths for a in algorithms if a.traced_depths), ()))
