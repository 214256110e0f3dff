"""Gold demonstrations laid out as a rollout: what supervised training (the SFT stage, the `sft_more`
control arm) trains on.

A demonstration is a problem's gold solution in the task's `<reasoning>/<answer>` format
(`rlbench.tasks.demonstration`), tokenized as RL tokenizes completions and ended with EOS. Batches
use the rollout layout (prompts left-padded to the longest, completions right-padded after them),
so supervised steps run the same packed forward as RL.

    rollout = demonstration_rollout(tokenizer, problems, prompt_ids, group_size=1, device="cpu")
"""

from __future__ import annotations

import torch

from rlbench.rollout import Rollout
from rlbench.tasks import Problem, demonstration, encode_prompts


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
