"""Cold start (InstructGPT step 1): supervised fine-tuning on demonstrations, cached on disk.

The policy learns the `<reasoning>...</reasoning><answer>...</answer>` format and some arithmetic
from gold solutions, so that RL starts from a model that is sometimes right. The loss is
next-token cross-entropy on completion tokens only (the prompt is context, not a target),
computed on those tokens' logits alone by the same packed forward RL uses.
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

from rlbench.cache import cached_dir, stable_hash
from rlbench.catalog import load_problems
from rlbench.config import SFTConfig, TaskConfig
from rlbench.device import default_device, module_device
from rlbench.models.forward import packed_logits
from rlbench.models.optim import adamw
from rlbench.rollout import Rollout
from rlbench.tasks import Problem, demonstration, encode_prompts

SFT_VERSION = 2  # 2: the packed completion-only forward


def encode_demonstrations(tokenizer, problems: list[Problem]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, completion ids + EOS) per problem, tokenized exactly as in RL."""
    return list(zip(encode_prompts(tokenizer, problems), encode_completions(tokenizer, problems)))


def encode_completions(tokenizer, problems: list[Problem]) -> list[list[int]]:
    """Each problem's gold demonstration, tokenized, + EOS."""
    completions = tokenizer([demonstration(p) for p in problems], add_special_tokens=False)["input_ids"]
    return [c + [tokenizer.eos_token_id] for c in completions]


def demonstration_rollout(tokenizer, problems: list[Problem], prompt_ids: list[list[int]], group_size: int,
                          device: torch.device | str) -> Rollout:
    """The problems' gold demonstrations as a Rollout (what supervised recipes train on): each of
    `prompt_ids` (one per problem, as the loop encoded and truncated them) `group_size` times, its
    demonstration as the completion. Log-probs are 0: nothing was sampled."""
    problems = [p for p in problems for _ in range(group_size)]
    prompts = [ids for ids in prompt_ids for _ in range(group_size)]
    ids, mask, width = collate(list(zip(prompts, encode_completions(tokenizer, problems))), tokenizer.pad_token_id)
    ids, mask = ids.to(device), mask.to(device)
    completion_mask = mask[:, width:].float()
    return Rollout(input_ids=ids, attention_mask=mask, prompt_width=width, completion_ids=ids[:, width:],
                   completion_mask=completion_mask, logprobs=torch.zeros_like(completion_mask),
                   texts=[demonstration(p) for p in problems],
                   truncated=torch.zeros(len(problems), dtype=torch.bool, device=device))


def collate(pairs: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(ids, attention mask, prompt width) in a rollout's layout: prompts left-padded to the longest
    prompt, completions right-padded after them, so SFT runs the same packed forward as RL."""
    width = max(len(p) for p, _ in pairs)
    total = width + max(len(c) for _, c in pairs)
    ids = torch.full((len(pairs), total), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (p, c) in enumerate(pairs):
        ids[i, width - len(p):width + len(c)] = torch.tensor(p + c)
        mask[i, width - len(p):width + len(c)] = 1
    return ids, mask, width


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
    its config and tokenizer), the SFT settings, the task, the seed and SFT_VERSION."""
    return stable_hash({"base": base, "base_dir": base_dir.name, "sft": asdict(cfg), "task": asdict(task),
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
