"""One rank of an FSDP2 run, traced on fake tensors: rank 0 of N on PyTorch's fake process group.

`rlbench run` with a `distributed:` block shards every role with FSDP2 (rlbench/fsdp.py) over
torchrun ranks. The estimate traces that same path in one process: the fake process group
(`torch.testing._internal.distributed.fake_pg`, backend "fake") has the world size of the run and
answers every collective without communicating, so `fully_shard`, the meta-device load, the
all-gathered units of forward, backward and generation, the reduce-scattered gradients and the
sharded AdamW state are rlbench's and FSDP2's own code, run on fake tensors under the estimate's
tracker. The load stops at the allocated shards (`load_sharded(..., fill=False)`): rank 0's full
copy and the broadcast that fills every rank's shards from it are gone when the load returns, and
no phase reads a value. `SimulatedRanks` is the run's `Dist` part (a `RunParts` field, replaced as the
estimate replaces its probe and engine): FSDP2's collectives go through the fake group; rlbench's
own gathers of the step's batch, which must return real ids and masks to the code that reads them,
return every rank's rows as copies of rank 0's (in the worst case every rank's rows are as wide).

All ranks hold the same: FSDP2 pads every shard to the same size, and in the worst case every
rank's prompts and completions are as long; rank 0 alone holds a full copy while loading, which is
no phase (and not traced). So rank 0's trace is every rank's.

Why not `FSDPMemTracker` (torch.distributed._tools.fsdp2_mem_tracker) itself: it tracks one
forward and backward per iteration of a root module (a second call of the root raises), which a
decode loop and a step of several phases are not; it is a MemTracker with FSDP2 labels, and the
estimate's tracker (rlbench/estimate/trace.py) is a MemTracker too, so it takes what it needs from
it: DTensor operations left to DTensor (`NotImplemented`, so the local shard's operations are
counted), storages found through `get_untyped_storages`, sharded gradients labelled after FSDP2's
post-backward (`PhaseTracker.grads_as`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from rlbench.config import DistributedConfig, Suite
from rlbench.distributed import Dist
from rlbench.errors import UserError

MAX_RANKS = 1024


class SimulatedRanks(Dist):
    """Rank 0 of `world` ranks on the fake process group, computing on `traced_on` (see the module docstring)."""

    def __init__(self, world: int, traced_on: torch.device) -> None:
        super().__init__(rank=0, world=world, local_rank=0, backend="fake", cfg=DistributedConfig(nproc_per_node=world))
        self.traced_on = traced_on

    @property
    def device(self) -> torch.device:
        return self.traced_on

    def load_role(self, role: str, path: Any, cfg: Any, precision: Any) -> torch.nn.Module:
        """The role's shards as the load leaves them on a rank (`rlbench.fsdp.load_sharded` with
        `fill=False`): rank 0's full copy and the broadcast that fills the shards from it are not
        traced, both gone when the load returns and neither read by a phase (a quarter of a 7B
        trace at 8 ranks)."""
        from rlbench.fsdp import load_sharded

        with self._in_phase(f"load/{role}"):
            return load_sharded(self, role, path, cfg, precision, fill=False)

    def _all_reduce(self, values: torch.Tensor, op: str) -> torch.Tensor:
        self.count("all_reduce", values.numel() * values.element_size())
        return values  # every rank's are alike: a sum's value is not read for memory, a max is rank 0's

    def _all_gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """`world` copies of this rank's rows, made as the real gather makes them (a buffer per rank, then one cat)."""
        parts = [tensor.contiguous().clone() for _ in range(self.world)]
        self.count("all_gather", sum(p.numel() * p.element_size() for p in parts))
        return torch.cat(parts)

    def _all_gather_objects(self, obj: Any) -> list[Any]:
        return [obj] * self.world

    def from_rank0(self, obj: Any) -> Any:
        return obj


def mesh_tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    """The device meshes' rank tables of `model`'s FSDP2 units: host tensors of a few bytes that
    sharding makes while a role loads, which are no part of the role (its static bytes leave them out)."""
    from torch.distributed.fsdp import FSDPModule

    meshes = {}
    for unit in model.modules():
        group = unit._get_fsdp_state()._fsdp_param_group if isinstance(unit, FSDPModule) else None
        if group is not None:
            mesh = group.mesh_info.mesh
            meshes[id(mesh)] = mesh.mesh
    return list(meshes.values())


def label_sharded(tracker: Any, module: torch.nn.Module, role: str, trained: bool) -> None:
    """Label what FSDP2 makes for `module`'s units on `tracker` (a `PhaseTracker`), as
    `FSDPMemTracker` labels it: the unsharded parameters each time a unit is gathered as `role`'s
    gathered weights, and a trained role's sharded gradients once its post-backward has
    reduce-scattered them (the unsharded ones before it are the backward's transient)."""
    from torch.distributed.fsdp import FSDPModule

    from rlbench.estimate.trace import layer_index

    for name, unit in module.named_modules():
        group = unit._get_fsdp_state()._fsdp_param_group if isinstance(unit, FSDPModule) else None
        if group is None:
            continue
        layer = layer_index(f"{name}.")

        def wait_for_unshard(*args: Any, group: Any = group, original: Any = group.wait_for_unshard, layer: int = layer,
                             **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            for param in group.fsdp_params:
                for tensor in param.all_gather_outputs:
                    if tensor.untyped_storage().nbytes():
                        tracker.relabel(tensor, role, "gathered")
                        tracker.layer_of(tensor, layer)  # its layer's compute marks the region as the shard's does
            return out

        def post_backward(*args: Any, group: Any = group, original: Any = group.post_backward, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            for param in group.fsdp_params:
                if param.sharded_param.grad is not None:
                    tracker.relabel(param.sharded_param.grad, role, "gradients")
            return out

        group.wait_for_unshard = wait_for_unshard
        if trained:
            group.post_backward = post_backward


@contextmanager
def fake_process_group(world: int) -> Iterator[None]:
    """The default process group, for the block, is PyTorch's fake one of `world` ranks (this one rank 0)."""
    import torch.distributed as c10d
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if c10d.is_initialized():
        raise UserError("--ranks: this process already has a process group; run rlbench estimate on its own")
    c10d.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)
    try:
        yield
    finally:
        c10d.destroy_process_group()


def suite_ranks(suite: Suite, asked: int | None) -> int:
    """The ranks to estimate for: `asked` (--ranks), else the suite's `distributed.nproc_per_node`, else 1."""
    ranks = asked if asked is not None else (suite.distributed.nproc_per_node if suite.distributed else 1)
    if not 1 <= ranks <= MAX_RANKS:
        raise UserError(f"--ranks: must be between 1 and {MAX_RANKS}, got {ranks}")
    return ranks


def rank_errors(suite: Suite, ranks: int) -> list[str]:
    """Why `rlbench run` would refuse `suite` on `ranks` FSDP2 ranks (the engine, LoRA, prompts
    that do not split into whole groups per rank), each as `field: message`; [] when it would not."""
    import dataclasses

    from rlbench.config.checks import check_suite

    if ranks == 1:
        return []
    cfg = suite.distributed or DistributedConfig()
    errors: list[tuple[str, str]] = []
    check_suite(dataclasses.replace(suite, distributed=dataclasses.replace(cfg, nproc_per_node=ranks)), errors)
    return [f"{where}: {message}" if where else message for where, message in errors]


def check_ranks(suite: Suite, ranks: int) -> None:
    """UserError (the first reason, one line, with --ranks) when the estimate cannot model `suite` on `ranks` ranks."""
    errors = rank_errors(suite, ranks)
    if errors:
        raise UserError(f"--ranks {ranks}: cannot estimate an FSDP2 run: {errors[0]}")
