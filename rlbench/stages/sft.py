"""Cold start (InstructGPT step 1): supervised fine-tuning on demonstrations, cached on disk.

The policy learns the `<reasoning>...</reasoning><answer>...</answer>` format and some arithmetic
from gold solutions, so that RL starts from a model that is sometimes right. The loss is
next-token cross-entropy on completion tokens only (the prompt is context, not a target),
computed on those tokens' logits alone by the same packed forward RL uses (batches laid out by
`rlbench.rollout.demonstrations`, as the `sft_more` control arm lays them out).
Cached under `$RLBENCH_CACHE/sft/<hash>` where the hash covers the base model, the task, the SFT
settings, the seed and `SFT_VERSION`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from rlbench.cache import cached_dir, stage_key
from rlbench.catalog import load_problems
from rlbench.config import SFTConfig, TaskConfig
from rlbench.device import default_device, module_device
from rlbench.models.forward import packed_logits
from rlbench.models.optim import adamw
from rlbench.rollout.demonstrations import collate, encode_demonstrations
from rlbench.tasks import Problem

SFT_VERSION = 2  # 2: the packed completion-only forward


def lr_at(step: int, cfg: SFTConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_sft(model: torch.nn.Module, tokenizer, problems: list[Problem], cfg: SFTConfig, seed: int,
              on_step=None) -> dict[str, float]:
    """Run `cfg.steps` of SFT in place. `on_step(step, loss)` is called after each step."""
    data = encode_demonstrations(tokenizer, problems)
    generator = torch.Generator().manual_seed(seed)
    optimizer = adamw(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95))
    model.train()
    device = module_device(model)
    start, loss_value = time.perf_counter(), float("nan")
    for step in range(cfg.steps):
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
        if on_step is not None:
            on_step(step + 1, loss_value)
    return {"sft/steps": float(cfg.steps), "sft/final_loss": loss_value, "sft/seconds": time.perf_counter() - start}


def sft_key(base: str, base_dir: Path, cfg: SFTConfig, task: TaskConfig, seed: int) -> str:
    """Covers the base model's name and directory (a cached embedded base is named by the hash of
    its config and tokenizer), the SFT settings, the task, the seed, SFT_VERSION and the numerics
    environment (`stage_key`)."""
    return stage_key({"base": base, "base_dir": base_dir.name, "sft": asdict(cfg), "task": asdict(task),
                      "seed": seed, "version": SFT_VERSION})


def cold_start(base_dir: Path, base_name: str, cfg: SFTConfig, task: TaskConfig, seed: int,
               on_step=None, trust_remote_code: bool = False) -> tuple[Path, dict, bool]:
    """The SFT'd model directory for this base/task/settings, training it on a cache miss.
    Returns (path, stats, cache_hit). `trust_remote_code` is the suite's `model.trust_remote_code`."""
    from rlbench.models.embedded import load_pretrained_pair, save_pretrained_pair

    def build(tmp: Path) -> None:
        model, tokenizer = load_pretrained_pair(base_dir, trust_remote_code=trust_remote_code)
        model.to(default_device())
        torch.manual_seed(seed)
        problems = load_problems(task, "train", cfg.train_size, seed)
        stats = train_sft(model, tokenizer, problems, cfg, seed, on_step)
        save_pretrained_pair(model, tokenizer, tmp)
        (tmp / "sft.json").write_text(json.dumps(stats, indent=2))

    path, hit = cached_dir("sft", sft_key(base_name, base_dir, cfg, task, seed), build)
    return path, json.loads((path / "sft.json").read_text()), hit
