"""Cold start (InstructGPT step 1): supervised fine-tuning on demonstrations, cached on disk.

The policy learns the `<reasoning>...</reasoning><answer>...</answer>` format and some arithmetic
from gold solutions, so that RL starts from a model that is sometimes right. The loss is
next-token cross-entropy on completion tokens only (the prompt is context, not a target),
computed on those tokens' logits alone by the same packed forward RL uses (batches laid out by
`rlbench.rollout.demonstrations`, as the `sft_more` control arm lays them out).
Cached under `$RLBENCH_CACHE/sft/<hash>` where the hash covers the base model, the task, the SFT
settings, the seed and `SFT_VERSION`.

Two regimes:
- `model.sft.demonstrations: null` (the default): `steps` steps on `train_size` fresh demonstrations.
- `model.sft.demonstrations: N`: a fixed set of N demonstrations (`stages/demonstrations.py`),
  trained to its plateau. The cosine horizon is `max_epochs` passes over the N; every `eval_every`
  steps the stage scores greedy accuracy on a dev split (prompts and answers of chains not among
  the demonstrations'), keeps the best weights, and stops after `patience` evaluations without a
  new best. Before `min_steps` evaluations only draw the curve: the model learns the format
  before the arithmetic, and an early checkpoint that scores well on a noisy dev split is still
  far from the plateau (measured: the best of 512 unseen-chain dev problems at step 200, 11.5%, in
  the cosine schedule's high-learning-rate phase). It stops on dev accuracy, not dev loss: on the embedded model
  the dev loss bottoms out hundreds of steps before accuracy does (the model memorises the N and
  still gets better at answering). The stage records its curve, the kept step and why it stopped
  (`sft.json`, copied to the report's `stages.sft`).
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from rlbench.cache import cached_dir, stage_key
from rlbench.catalog import load_problems
from rlbench.config import SFTConfig, TaskConfig
from rlbench.config.accuracy_checks import sft_horizon
from rlbench.device import default_device, module_device
from rlbench.models.forward import packed_logits
from rlbench.models.optim import adamw
from rlbench.rollout.demonstrations import collate, encode_demonstrations
from rlbench.tasks import Problem

SFT_VERSION = 2  # 2: the packed completion-only forward


NEW_FIELDS = ("demonstrations", "max_epochs", "eval_every", "dev_size", "patience", "min_steps")
"""SFTConfig fields of the fixed-demonstration regime: left out of the cache key without demonstrations,
so the key of a suite that does not use them is what it was before they existed."""


def total_steps(cfg: SFTConfig) -> int:
    """The schedule's horizon: `steps`, or max_epochs passes over a fixed demonstration set."""
    if cfg.demonstrations is None:
        return cfg.steps
    return sft_horizon(cfg.demonstrations, cfg.max_epochs, cfg.batch_size)


def lr_at(step: int, cfg: SFTConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak at the horizon (`total_steps`)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total_steps(cfg) - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


DevScore = Callable[[torch.nn.Module], float]
"""The dev split's greedy accuracy of the model being trained."""


def train_sft(model: torch.nn.Module, tokenizer, problems: list[Problem], cfg: SFTConfig, seed: int,
              on_step=None, dev_score: DevScore | None = None) -> dict[str, Any]:
    """SFT in place: `total_steps(cfg)` steps, or with `dev_score` early stopping on it (every
    `cfg.eval_every` steps; the best weights at or after `cfg.min_steps` are loaded back at the end,
    and only evaluations from `cfg.min_steps` on count towards patience). `on_step(step, loss)`
    is called after each step. Returns the stats, with `sft/curve`, `sft/best_step`,
    `sft/stopped_step` and `sft/stopped_by` ("patience" or "horizon") when `dev_score` is given."""
    data = encode_demonstrations(tokenizer, problems)
    generator = torch.Generator().manual_seed(seed)
    optimizer = adamw(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95))
    model.train()
    device = module_device(model)
    horizon = total_steps(cfg)
    start, loss_value, losses = time.perf_counter(), float("nan"), []
    curve: list[dict[str, float]] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None  # (dev accuracy, step, weights)
    stale, stopped_by, step = 0, "horizon", 0
    for step in range(horizon):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        index = torch.randint(len(data), (cfg.batch_size,), generator=generator).tolist()
        ids, mask, width = collate([data[i] for i in index], tokenizer.pad_token_id)
        ids, mask = ids.to(device), mask.to(device)
        # Logits of the completion tokens only (the lean packed forward for Llama-architecture models).
        logits, where = packed_logits(model, ids, mask, width)
        loss = F.cross_entropy(logits.float(), ids[:, width:].flatten()[where])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        loss_value = loss.item()
        losses.append(loss_value)
        if on_step is not None:
            on_step(step + 1, loss_value)
        if dev_score is None or ((step + 1) % cfg.eval_every and step + 1 != horizon):
            continue
        accuracy = dev_score(model)
        model.train()
        window = losses[-cfg.eval_every:]
        curve.append({"step": step + 1, "epoch": (step + 1) * cfg.batch_size / len(data),
                      "train_loss": sum(window) / len(window), "dev_accuracy": accuracy})
        if step + 1 < cfg.min_steps:  # before min_steps: on the curve, never kept, never counted
            continue
        if best is None or accuracy > best[0]:
            best, stale = (accuracy, step + 1, copy.deepcopy(model.state_dict())), 0
        else:
            stale += 1
        if cfg.patience is not None and stale >= cfg.patience:
            stopped_by = "patience"
            break
    stats: dict[str, Any] = {"sft/steps": float(step + 1 if horizon else 0), "sft/final_loss": loss_value,
                             "sft/seconds": time.perf_counter() - start}
    if best is not None:
        model.load_state_dict(best[2])
        stats.update({"sft/curve": curve, "sft/best_step": best[1], "sft/best_dev_accuracy": best[0],
                      "sft/stopped_step": step + 1, "sft/stopped_by": stopped_by, "sft/horizon_steps": horizon,
                      "sft/demonstrations": len(data)})
    return stats


def sft_key(base: str, base_dir: Path, cfg: SFTConfig, task: TaskConfig, seed: int, eval_tokens: int = 0) -> str:
    """Covers the base model's name and directory (a cached embedded base is named by the hash of
    its config and tokenizer), the SFT settings, the task, the seed, SFT_VERSION and the numerics
    environment (`stage_key`); with a fixed demonstration set also the stopping rule's settings and
    the dev evaluation's length."""
    settings = asdict(cfg)
    if cfg.demonstrations is None:
        settings = {k: v for k, v in settings.items() if k not in NEW_FIELDS}
    else:
        settings["eval_tokens"] = eval_tokens
    return stage_key({"base": base, "base_dir": base_dir.name, "sft": settings, "task": asdict(task),
                      "seed": seed, "version": SFT_VERSION})


def cold_start(base_dir: Path, base_name: str, cfg: SFTConfig, task: TaskConfig, seed: int,
               on_step=None, trust_remote_code: bool = False, eval_tokens: int = 48) -> tuple[Path, dict, bool]:
    """The SFT'd model directory for this base/task/settings, training it on a cache miss.
    Returns (path, stats, cache_hit). `trust_remote_code` is the suite's `model.trust_remote_code`;
    `eval_tokens`: the most tokens a dev completion may take (the suite's rollout.max_new_tokens)."""
    from rlbench.models.embedded import load_pretrained_pair, save_pretrained_pair
    from rlbench.stages.demonstrations import demonstration_problems, dev_problems

    def build(tmp: Path) -> None:
        model, tokenizer = load_pretrained_pair(base_dir, trust_remote_code=trust_remote_code)
        model.to(default_device())
        torch.manual_seed(seed)
        demonstrations = demonstration_problems(task, cfg)
        if demonstrations is None:
            stats = train_sft(model, tokenizer, load_problems(task, "train", cfg.train_size, seed), cfg, seed, on_step)
        else:
            dev = dev_problems(task, demonstrations, cfg.dev_size)
            stats = train_sft(model, tokenizer, demonstrations, cfg, seed, on_step,
                              dev_score=lambda m: dev_accuracy(m, tokenizer, dev, eval_tokens))
        save_pretrained_pair(model, tokenizer, tmp)
        (tmp / "sft.json").write_text(json.dumps(stats, indent=2))

    key = sft_key(base_name, base_dir, cfg, task, seed, eval_tokens)
    path, hit = cached_dir("sft", key, build)
    return path, json.loads((path / "sft.json").read_text()), hit


def dev_accuracy(model: torch.nn.Module, tokenizer, problems: list[Problem], max_new_tokens: int) -> float:
    """Greedy accuracy on `problems` (rlbench's answer extraction), the model left in eval mode."""
    from rlbench.measure.evaluation import evaluate
    from rlbench.rollout.hf import HFEngine

    model.eval()
    return float(evaluate(HFEngine(model, tokenizer), tokenizer, problems, max_new_tokens)["eval/accuracy"])
