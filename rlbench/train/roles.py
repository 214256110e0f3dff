"""Loading every role an algorithm holds, each load measured by the run's probe.

Policy (trainable, with its tokenizer and AdamW), reference (frozen: its own copy of the SFT
weights, or with `model.lora` the policy's module with its adapters disabled, which holds nothing
of its own), reward model (frozen scalar head) and value model (trainable scalar head, from the
reward model or the SFT policy), in that order, in the run's precision, on the run's device; a
distributed run builds each sharded on the meta device and fills it from rank 0. Every load is
bracketed by the probe (`RunProbe.loading`) and its snapshots before and after: what the load
added is the role's `load_bytes`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from rlbench.config import Suite
from rlbench.measure.probing import RunProbe
from rlbench.models.optim import adamw
from rlbench.train.parts import RunParts

if TYPE_CHECKING:  # heads imports transformers: a worker imports it after its baseline reading, as it loads
    from rlbench.models.heads import ScalarRole

T = TypeVar("T")


@dataclass
class Roles:
    """The models one run holds (None for a role the algorithm does not hold)."""

    policy: torch.nn.Module
    tokenizer: Any
    optimizer: torch.optim.Optimizer
    reference: torch.nn.Module | None = None
    reward_model: ScalarRole | None = None
    value_model: ScalarRole | None = None
    value_optimizer: torch.optim.Optimizer | None = None
    weights_of: dict[str, str] = field(default_factory=dict)  # role -> the role whose weights it computes with


def measured_load(probe: RunProbe, role: str, load: Callable[[], T], load_bytes: dict[str, dict[str, int]]) -> T:
    """`load()`, with how much it raised each probe's reading recorded as `load_bytes[role]`."""
    with probe.loading(role):
        before = probe.snapshot()
        obj = load()
        after = probe.snapshot()
    load_bytes[role] = {name: after[name] - before[name] for name in before}
    return obj


def load_roles(suite: Suite, parts: RunParts, policy_dir: Path, reward_dir: Path | None,
               load_bytes: dict[str, dict[str, int]]) -> Roles:
    """Every role `parts.algorithm` holds, each load measured into `load_bytes`."""
    from rlbench.models.loading import (
        AdapterDisabledReference,
        import_model_code,
        load_causal_lm,
        load_policy,
        load_scalar_model,
        load_tokenizer,
    )

    model_cfg, precision, device, dist = suite.model, parts.precision, parts.device, parts.dist
    held, schedule, probe = parts.algorithm.roles(), parts.schedule, parts.probe
    import_model_code(policy_dir, model_cfg)  # library code is no role's memory

    def load_policy_role() -> tuple[torch.nn.Module, Any]:
        if dist.active:  # sharded: built on the meta device, filled from rank 0
            return dist.load_role("policy", policy_dir, model_cfg, precision), load_tokenizer(policy_dir, model_cfg)
        model, tok = load_policy(policy_dir, model_cfg, precision, device)
        touch(model)
        return model, tok

    policy, tokenizer = measured_load(probe, "policy", load_policy_role, load_bytes)
    policy.train()
    optimizer = adamw(policy.parameters(), lr=schedule.lr, weight_decay=schedule.weight_decay)
    roles = Roles(policy, tokenizer, optimizer)
    if "reference" in held:
        if dist.active:
            roles.reference = measured_load(
                probe, "reference", lambda: dist.load_role("reference", policy_dir, model_cfg, precision), load_bytes)
        elif model_cfg.lora is not None:
            reference = measured_load(probe, "reference", lambda: AdapterDisabledReference(policy), load_bytes)
            roles.reference, roles.weights_of["reference"] = reference, reference.weights_of
        else:
            roles.reference = measured_load(
                probe, "reference", lambda: frozen(load_causal_lm(policy_dir, model_cfg, precision, device)),
                load_bytes)
    if "reward" in held:
        assert reward_dir is not None, "runner trains or loads the reward model first"
        roles.reward_model = measured_load(
            probe, "reward", lambda: dist.load_role("reward", reward_dir, model_cfg, precision) if dist.active
            else frozen(load_scalar_model(reward_dir, model_cfg, precision, device)), load_bytes)
    if "value" in held:
        from_reward = parts.algorithm.value_init() == "reward"
        assert not from_reward or reward_dir is not None, "the runner prepares a reward model for value_init"
        source = reward_dir if from_reward else policy_dir

        def load_value() -> torch.nn.Module:
            if dist.active:
                return dist.load_role("value", source, model_cfg, precision)
            model = load_scalar_model(source, model_cfg, precision, device, trainable=True)
            touch(model)
            return model

        value = measured_load(probe, "value", load_value, load_bytes)
        value.train()
        assert schedule.value_lr is not None, "a recipe with a value role sets schedule().value_lr"
        roles.value_model = value
        roles.value_optimizer = adamw(value.parameters(), lr=schedule.value_lr, weight_decay=schedule.weight_decay)
    return roles


def frozen(model: torch.nn.Module) -> torch.nn.Module:
    model.eval()
    model.requires_grad_(False)
    touch(model)
    return model


def touch(model: torch.nn.Module) -> None:
    """Read every weight once: `from_pretrained` memory-maps safetensors, and pages not yet read
    would otherwise be counted only when a later phase first touches them."""
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.numel():
                t.view(-1)[::max(1, 4096 // t.element_size())].sum()
