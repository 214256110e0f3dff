"""One run on several processes: torchrun, FSDP2 (`fully_shard`) for every role, memory per rank.

The runner starts a distributed run (a suite with a `distributed:` block) as

    python -m torch.distributed.run --standalone --nproc_per_node N -m rlbench.worker SPEC.json

and each rank builds a `Dist` (`Dist.from_env`); in one process `Dist()` is inert and every hook
below returns its input, so the single-process loop in `rlbench/train/run.py` runs as it always has.
What a rank does differently:

- Loading (`load_role`, rlbench/fsdp.py): every role is built on the meta device, sharded per
  decoder layer and at its root (a scalar-head model's backbone is a unit of its own), then filled
  from rank 0's copy with `set_model_state_dict(full_state_dict=True, broadcast_from_rank0=True)`;
  non-persistent buffers (rotary `inv_freq`) are broadcast too. Only rank 0 ever holds a full
  copy, and only while loading. Frozen roles reshard their root after every forward.
- Prompts: every rank walks the same seeded prompt order and takes its slice of each step's
  prompts, whole groups each (`local_prompts`); rank r of W samples with the loop's sampling seed
  s as `s * W + r` (`sampling_seed`: s itself in one process).
- Rollout and evaluation (`rollout_context`): all units of the policy are gathered once, the
  lean decoder samples from plain tensors, and nothing per token is a collective, so ranks that
  stop at different lengths never wait on each other mid-generation.
- Advantages (`gather_batch`): scored rollouts, log-probs and values are gathered from every
  rank, so advantages (group and batch statistics alike) are computed on the whole batch, as in
  one process.
- Update: every rank walks rank 0's minibatches and trains on its share of each (`share`); its
  loss is weighted by its share of the minibatch's tokens or rows (`backward`), so the gradient
  FSDP2 averages over ranks is the gradient of the whole minibatch's loss.
- Budget (`budget_reduce`): counts are summed and seconds maxed over ranks, so every rank stops on
  the same step. Collectives carry the suite's `timeout_s`, so a rank that diverges fails the run
  in seconds with a message rather than hanging.
- Collective bytes are counted per phase (FSDP2's all-gathers and reduce-scatters through its
  custom-comm hooks, rlbench's own gathers where they are made).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlbench.algorithms.base import Batch
from rlbench.config import DistributedConfig, ModelConfig
from rlbench.measure.budget import StepCounts
from rlbench.measure.evaluation import OUTCOMES, standard_error
from rlbench.models.precision import Precision
from rlbench.rollout import Rollout

SHARE_BY = {"token_mean": "tokens", "seq_mean_token_mean": "rows", "seq_mean_token_sum_norm": "rows"}
COLLECTIVES_METHOD = ("bytes of the full tensor of each collective this rank joined, by phase: FSDP2's "
                      "all-gathers (gathered output) and reduce-scatters (input before scattering) through "
                      "its custom-comm hooks, rlbench's own all-gathers, all-reduces and broadcasts where "
                      "it makes them; load: the full state dict broadcast from rank 0")


class Dist:
    """This process's place in a run: rank, world size, process group, collective counts."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0, backend: str | None = None,
                 cfg: DistributedConfig | None = None) -> None:
        self.rank, self.world, self.local_rank, self.backend, self.cfg = rank, world, local_rank, backend, cfg
        self.collectives: dict[str, dict[str, dict[str, int]]] = {}  # phase -> kind -> {calls, bytes}
        self.current_phase = "setup"
        self.notes: list[str] = []

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")

    @classmethod
    def from_env(cls, cfg: DistributedConfig | None) -> Dist:
        """Join the process group torchrun set up (RANK, WORLD_SIZE, MASTER_ADDR in the environment),
        with the suite's timeout; an inert Dist in one process."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if cfg is None or world == 1:
            return cls()
        import torch.distributed as dist

        backend = cfg.backend if cfg.backend != "auto" else ("nccl" if torch.cuda.is_available() else "gloo")
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, timeout=timedelta(seconds=cfg.timeout_s))
        return cls(dist.get_rank(), dist.get_world_size(), local_rank, backend, cfg)

    def close(self) -> None:
        if self.active:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    def describe(self) -> dict[str, Any]:
        """This rank's part of the report: who it was and what it sent."""
        return {"rank": self.rank, "world_size": self.world, "backend": self.backend, "local_rank": self.local_rank,
                "node_rank": int(os.environ.get("GROUP_RANK", "0")), "host": os.uname().nodename,
                "strategy": self.cfg.strategy if self.cfg else None, "pid": os.getpid(),
                "collectives": self.collectives, "collectives_method": COLLECTIVES_METHOD, "notes": self.notes}

    # -- counting ---------------------------------------------------------------------------------
    @contextmanager
    def _in_phase(self, name: str) -> Iterator[None]:
        before, self.current_phase = self.current_phase, name
        try:
            yield
        finally:
            self.current_phase = before

    def phase(self, name: str):
        """Collectives inside are counted under `name` (a no-op in one process)."""
        return self._in_phase(name) if self.active else nullcontext()

    def count(self, kind: str, nbytes: int) -> None:
        entry = self.collectives.setdefault(self.current_phase, {}).setdefault(kind, {"calls": 0, "bytes": 0})
        entry["calls"] += 1
        entry["bytes"] += int(nbytes)

    # -- collectives of rlbench's own -------------------------------------------------------------
    def _all_reduce(self, values: torch.Tensor, op: str) -> torch.Tensor:
        import torch.distributed as dist

        values = values.to(self.device)
        self.count("all_reduce", values.numel() * values.element_size())
        dist.all_reduce(values, op=getattr(dist.ReduceOp, op))
        return values.cpu()

    def _all_gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's `tensor` (same shape on every rank) stacked along dim 0, in rank order."""
        import torch.distributed as dist

        local = tensor.to(self.device, torch.uint8 if tensor.dtype == torch.bool else tensor.dtype).contiguous()
        parts = [torch.empty_like(local) for _ in range(self.world)]
        self.count("all_gather", local.numel() * local.element_size() * self.world)
        dist.all_gather(parts, local)
        return torch.cat(parts).to(tensor.device, tensor.dtype)

    def _all_gather_objects(self, obj: Any) -> list[Any]:
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        self.count("all_gather_object", sum(len(pickle.dumps(o)) for o in out))
        return out

    def from_rank0(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (e.g. its minibatch order)."""
        if not self.active:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        self.count("broadcast_object", len(pickle.dumps(box[0])))
        return box[0]

    # -- loading ----------------------------------------------------------------------------------
    def load_role(self, role: str, path: str | Path, cfg: ModelConfig, precision: Precision) -> nn.Module:
        """The role's model sharded over the ranks (rlbench/fsdp.py): built on the meta device on
        every rank, filled from rank 0's copy, the only full one, dropped once broadcast."""
        from rlbench.fsdp import load_sharded

        with self._in_phase(f"load/{role}"):
            return load_sharded(self, role, path, cfg, precision)

    # -- one step ---------------------------------------------------------------------------------
    def local_prompts(self, prompts: list) -> list:
        """This rank's slice of the step's prompts (each prompt's group is sampled whole, on one rank)."""
        if not self.active:
            return prompts
        assert len(prompts) % self.world == 0, f"{len(prompts)} prompts over {self.world} ranks (validated)"
        n = len(prompts) // self.world
        return prompts[self.rank * n:(self.rank + 1) * n]

    def sampling_seed(self, seed: int) -> int:
        """Rank r's sampling seed: seed * world + r (the seed itself in one process)."""
        return seed * self.world + self.rank

    @contextmanager
    def rollout_context(self, model: nn.Module) -> Iterator[None]:
        """Every FSDP unit of `model` gathered once for the whole block, resharded after it: the lean
        decoder then reads plain tensors, and no token costs a collective. A policy that samples
        through its own module (gradient checkpointing on, an architecture the lean decoder does not
        reproduce) runs FSDP2's forward hooks, whose post-forward would reshard each layer after its
        first forward and all-gather it again at every token (and ranks that stop at different
        lengths would then wait on each other): so each unit also keeps its weights gathered after
        forward for the block (`set_reshard_after_forward(False)`, as PyTorch suggests for evals),
        and gets its own setting back after it."""
        if not self.active:
            yield
            return
        from torch.distributed.fsdp import FSDPModule

        units = [m for m in model.modules() if isinstance(m, FSDPModule)]
        kept = [_reshard_setting(unit) for unit in units]
        for unit in units:
            unit.unshard()
            unit.set_reshard_after_forward(False, recurse=False)
        try:
            yield
        finally:
            for unit, setting in zip(units, kept):
                _restore_reshard_setting(unit, setting)
                unit.reshard()

    def gather_batch(self, batch: Batch, parts: dict[str, list[float]], pad_id: int) -> tuple[Batch, dict]:
        """The whole step's batch on every rank, in rank order (each rank's prompts were a contiguous
        slice), re-padded to the widest prompt and completion; reward parts gathered alike."""
        if not self.active:
            return batch, parts
        with self._in_phase("gather_batch"):
            return self._gather_batch(batch, parts, pad_id)

    def _gather_batch(self, batch: Batch, parts: dict[str, list[float]], pad_id: int) -> tuple[Batch, dict]:
        r = batch.rollout
        widths = self._all_reduce(torch.tensor([r.prompt_width, r.completion_ids.shape[1]]), "MAX").tolist()
        prompt_width, width = int(widths[0]), int(widths[1])

        def pad(t: torch.Tensor | None, fill: float = 0) -> torch.Tensor | None:  # [n, T] -> [N, width]
            if t is None:
                return None
            return self._all_gather_rows(nn.functional.pad(t, (0, width - t.shape[1]), value=fill))

        def pad_sequence(t: torch.Tensor, fill: int) -> torch.Tensor:  # [n, P + T] -> [N, P' + T']
            prompt, completion = t[:, :r.prompt_width], t[:, r.prompt_width:]
            prompt = nn.functional.pad(prompt, (prompt_width - r.prompt_width, 0), value=fill)
            completion = nn.functional.pad(completion, (0, width - completion.shape[1]), value=fill)
            return self._all_gather_rows(torch.cat([prompt, completion], dim=1))

        texts, problems, gathered_parts = zip(*self._all_gather_objects((r.texts, batch.problems, parts)))
        rollout = Rollout(pad_sequence(r.input_ids, pad_id), pad_sequence(r.attention_mask, 0), prompt_width,
                          pad(r.completion_ids, pad_id), pad(r.completion_mask), pad(r.logprobs),
                          [t for rank_texts in texts for t in rank_texts], self._all_gather_rows(r.truncated))
        merged_parts = {k: [v for p in gathered_parts for v in p[k]] for k in parts}
        return Batch(rollout, [p for rank_problems in problems for p in rank_problems], batch.group_size,
                     self._all_gather_rows(batch.rewards), self._all_gather_rows(batch.gold),
                     pad(batch.old_logprobs), pad(batch.ref_logprobs), pad(batch.values)), merged_parts

    def share(self, index: torch.Tensor, group_size: int) -> torch.Tensor:
        """This rank's rows of a minibatch of whole groups: the r-th of `world` equal runs of groups."""
        if not self.active:
            return index
        groups = index.view(-1, group_size)
        assert len(groups) % self.world == 0, f"{len(groups)} groups over {self.world} ranks (validated)"
        return groups.chunk(self.world)[self.rank].flatten()

    def share_weight(self, mask: torch.Tensor, index: torch.Tensor, share: torch.Tensor, agg: str) -> float:
        """This rank's share of the minibatch `index` as its loss aggregation counts it: tokens for a
        token mean, completions for a mean over completions (1.0 in one process)."""
        if not self.active:
            return 1.0
        if SHARE_BY[agg] == "rows":
            return len(share) / len(index)
        return float(mask[share].sum() / mask[index].sum().clamp_min(1))

    def backward(self, loss: torch.Tensor, weight: float) -> None:
        """Backward of this rank's part of the minibatch loss. FSDP2 averages gradients over ranks, so
        the loss is scaled by weight x world: the average is then the whole minibatch's gradient."""
        (loss * (weight * self.world) if self.active else loss).backward()

    def mean_stats(self, stats: dict[str, float], weight: float, exact: tuple[str, ...] = ()) -> dict[str, float]:
        """Statistics of the whole minibatch: each rank's weighted by its share (keys in `exact` are
        the same on every rank already, e.g. the gradient norm)."""
        if not self.active:
            return stats
        keys = sorted(k for k in stats if k not in exact)
        summed = self._all_reduce(torch.tensor([stats[k] * weight for k in keys], dtype=torch.float64), "SUM")
        return {**stats, **dict(zip(keys, summed.tolist()))}

    def budget_reduce(self, counts: StepCounts, seconds: float) -> tuple[StepCounts, float]:
        """The step's counts summed over ranks and its seconds maxed: every rank sees the same budget."""
        if not self.active:
            return counts, seconds
        with self._in_phase("budget"):
            return self._budget_reduce(counts, seconds)

    def _budget_reduce(self, counts: StepCounts, seconds: float) -> tuple[StepCounts, float]:
        summed = self._all_reduce(torch.tensor(counts.values(), dtype=torch.int64), "SUM")  # exact (FLOPs)
        slowest = self._all_reduce(torch.tensor([seconds], dtype=torch.float64), "MAX")
        return counts.with_values([int(v) for v in summed.tolist()]), float(slowest[0])

    def evaluate(self, evaluate: Callable[[list], dict[str, float]], problems: list, model: nn.Module) -> dict:
        """`evaluate` on this rank's slice of `problems` inside one unshard, merged over ranks."""
        if not self.active:
            return evaluate(problems)
        n = len(problems)
        mine = problems[self.rank * n // self.world:(self.rank + 1) * n // self.world]
        with self.rollout_context(model):
            result = evaluate(mine) if mine else {}
        return merge_evals(self._all_gather_objects(result))


def _reshard_setting(unit: Any) -> tuple[bool | None, list[Any]]:
    """What `set_reshard_after_forward` changes on one FSDP2 unit (its state's automatic choice and
    each parameter group's post-forward mesh), to put back exactly: the root's automatic "keep
    gathered after forward" is decided at its first forward, which may fall inside the block."""
    state = unit._get_fsdp_state()
    return (getattr(state, "_auto_reshard_after_forward", None),
            [group.post_forward_mesh_info for group in state._fsdp_param_groups])


def _restore_reshard_setting(unit: Any, setting: tuple[bool | None, list[Any]]) -> None:
    state = unit._get_fsdp_state()
    auto, meshes = setting
    if auto is not None:
        state._auto_reshard_after_forward = auto
    for group, mesh in zip(state._fsdp_param_groups, meshes):
        # a root whose first forward fell inside the block keeps its weights after forward, as that
        # forward would have decided outside it
        group.post_forward_mesh_info = None if auto and getattr(state, "_is_root", False) else mesh


def merge_evals(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Evaluations of consecutive slices of the problems (in rank order) as one: means weighted by
    `eval/size`, standard errors recomputed on the total, per-problem outcomes joined in order."""
    results = [r for r in results if r.get("eval/size")]
    n = sum(r["eval/size"] for r in results)
    out: dict[str, Any] = {}
    for key in results[0]:
        if key == OUTCOMES or key.startswith(OUTCOMES + "_"):  # the headline's and each scoring's
            out[key] = "".join(r[key] for r in results)
        elif key == "eval/size":
            out[key] = float(n)
        elif key.endswith("_stderr_binomial"):
            out[key] = standard_error(sum(r[key.removesuffix("_stderr_binomial")] * r["eval/size"] for r in results) / n,
                                      int(n))
        else:
            out[key] = sum(r[key] * r["eval/size"] for r in results) / n
    return out
