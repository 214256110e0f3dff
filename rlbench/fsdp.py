"""Loading a role sharded with FSDP2 (`fully_shard`): on the meta device, filled from rank 0.

Building the full model on every rank and then sharding it would give back at load time the
memory sharding saves. So every rank builds the role's architecture on the meta device (no
storage), shards it, allocates only its shards (`to_empty`), and rank 0, the one rank that loads
the weights from disk (on the CPU), sends each rank its part with
`set_model_state_dict(full_state_dict=True, broadcast_from_rank0=True)`. Buffers that are not in
the state dict (rotary `inv_freq`, computed at construction) are broadcast from rank 0 as well.

Units: each decoder layer (the classes a transformers model lists in `_no_split_modules`), the
backbone of a scalar-head model (its forward calls the backbone directly, so it needs hooks of
its own), then the root. A frozen role's root is resharded after every forward: FSDP2 keeps a
root gathered after forward for the backward that a frozen role never runs (measured on the
embedded reference: 1,910,400 bytes per rank with the root left gathered, 1,808,256 resharded).

FSDP2's all-gathers and reduce-scatters are its defaults, wrapped to count their bytes into the
rank's `Dist` by phase (`set_custom_all_gather` / `set_custom_reduce_scatter`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from rlbench.config import ModelConfig
from rlbench.errors import UserError
from rlbench.models.precision import Precision

TRAINED_ROLES = ("policy", "value")
SCALAR_ROLES = ("reward", "value")


class Ranks(Protocol):
    """What sharding reads of this process's place in the run (`rlbench.distributed.Dist`, which
    imports this module: the dependency points one way)."""

    rank: int
    world: int
    notes: list[str]

    @property
    def device(self) -> torch.device: ...

    def count(self, kind: str, nbytes: int) -> None:
        """Count one collective of `nbytes` under the current phase."""
        ...


def load_sharded(dist: Ranks, role: str, path: str | Path, cfg: ModelConfig, precision: Precision,
                 fill: bool = True) -> nn.Module:
    """`role` ("policy", "reference", "reward", "value") from `path`, sharded over `dist`'s ranks.
    `fill=False`: the shards allocated and left unfilled (what the load leaves on a rank, without
    rank 0's full copy and the broadcast, both gone by then: the estimate's traced ranks, whose
    values are never read)."""
    import torch.distributed as c10d
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    from rlbench.models.loading import load_causal_lm, load_scalar_model

    scalar, trainable = role in SCALAR_ROLES, role in TRAINED_ROLES
    full = None
    if fill and dist.rank == 0:
        full = (load_scalar_model if scalar else load_causal_lm)(path, cfg, precision, "cpu", trainable=trainable)
    model = meta_model(path, cfg, precision, scalar, trainable)
    if not trainable:
        model.requires_grad_(False)
    shard(dist, model, frozen=not trainable)
    model.to_empty(device=dist.device)
    if not fill:
        return model.train(trainable)
    state = full.state_dict() if full is not None else {}
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    persistent = set(model.state_dict())
    dist.count("broadcast", sum(t.numel() * t.element_size() for t in model.state_dict().values()))
    for name, buffer in model.named_buffers():
        if name not in persistent:  # garbage after to_empty: rank 0's
            if full is not None:
                buffer.copy_(full.get_buffer(name))
            dist.count("broadcast", buffer.numel() * buffer.element_size())
            c10d.broadcast(buffer, src=0)
    del full, state
    return model.train(trainable)


def shard(dist: Ranks, model: nn.Module, frozen: bool) -> None:
    """fully_shard each decoder layer, a scalar-head model's backbone, then the root."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    mesh = init_device_mesh(dist.device.type, (dist.world,))
    layer_classes = {name for m in model.modules() for name in (getattr(m, "_no_split_modules", None) or ())}
    layers = [m for m in model.modules() if type(m).__name__ in layer_classes]
    if not layers:
        raise UserError(f"distributed: {type(model).__name__} names no decoder layer classes "
                        "(_no_split_modules), which fsdp2 shards one by one")
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    backbone = getattr(model, "backbone", None)
    if backbone is not None:
        fully_shard(backbone, mesh=mesh)
    # FSDP2 keeps a root gathered after forward (for the backward) unless told otherwise, and older
    # torch ignores the flag on a root: a frozen role, which has no backward, also reshards in a hook.
    fully_shard(model, mesh=mesh, reshard_after_forward=True)
    if frozen:
        model.register_forward_hook(lambda module, args, output: module.reshard())
    comms = counting_comms(dist)
    if comms is None:
        dist.notes.append("FSDP2 collectives not counted: this torch has no custom-comm hooks")
        return
    for unit in model.modules():
        if isinstance(unit, FSDPModule):
            unit.set_custom_all_gather(comms[0])
            unit.set_custom_reduce_scatter(comms[1])


def meta_model(path: str | Path, cfg: ModelConfig, precision: Precision, scalar: bool, trainable: bool) -> nn.Module:
    """The role's architecture with no storage (meta device), as its loader would build it."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    from rlbench.models.heads import ScalarHeadModel
    from rlbench.models.loading import (
        _enable_gradient_checkpointing,
        is_sequence_classifier,
        pretrained_kwargs,
        scalar_model_from_classifier,
    )

    kwargs = pretrained_kwargs(cfg, precision, trainable)  # bf16-mixed: float32 masters for a trained role
    config = AutoConfig.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    with torch.device("meta"):
        if not scalar:
            model = AutoModelForCausalLM.from_config(config, **kwargs)
        elif is_sequence_classifier(path):
            model = scalar_model_from_classifier(AutoModelForSequenceClassification.from_config(config, **kwargs))
        else:
            backbone = AutoModel.from_config(config, **kwargs)
            model = ScalarHeadModel(backbone, backbone.config.hidden_size).to(precision.parameter_dtype(trainable))
    if trainable and cfg.gradient_checkpointing:
        _enable_gradient_checkpointing(model.backbone if scalar else model)
    return model


def counting_comms(dist: Ranks) -> tuple[Any, Any] | None:
    """FSDP2's default all-gather and reduce-scatter, counting bytes into `dist` (None where this
    torch has no such hooks)."""
    try:
        from torch.distributed.fsdp._fully_shard._fsdp_collectives import (
            DefaultAllGather,
            DefaultReduceScatter,
        )
    except ImportError:
        return None

    class CountedAllGather(DefaultAllGather):
        def __call__(self, output_tensor, input_tensor, group, async_op=False):
            dist.count("fsdp_all_gather", output_tensor.numel() * output_tensor.element_size())
            return super().__call__(output_tensor, input_tensor, group, async_op)

    class CountedReduceScatter(DefaultReduceScatter):
        def __call__(self, output_tensor, input_tensor, group, op, async_op=False):
            dist.count("fsdp_reduce_scatter", input_tensor.numel() * input_tensor.element_size())
            return super().__call__(output_tensor, input_tensor, group, op, async_op)

    return CountedAllGather(), CountedReduceScatter()
