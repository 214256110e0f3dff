"""One run of an algorithm, as `rlbench run`'s worker would do it, on fake tensors.

`trace_run` builds the real `rlbench.train.Run`, gives it the state a run holds between steps
(`warm_optimizers`: each trained role's AdamW state and gradients, as after an update), calls its
real `step()` once, the steady state every later step repeats, then its real `evaluate()`, under a
`PhaseTracker`. The run is built from the parts a
worker's run gets (`rlbench.train.run_parts`), four of them replaced before it is constructed
(`dataclasses.replace`; the run itself is never patched):

- the probe: `TracedProbe` marks the tracker's phases, labels each role's load as its weights
  (`RunProbe.loading`) and asks for the advantages phase to be measured too;
- the engine: the hf engine with a decoder that skips the middle of the decode loop
  (`FastForwardDecoder`: its cache is allocated for all tokens up front, and the last step, whose
  attention is the widest, is run for real), or for vLLM `SeparateEngine`, which holds what vLLM
  reserves outside the trace (the stand-ins are in `rlbench.estimate.standins`);
- the update schedule: one pass over the minibatches (from the steady state, every optimizer step
  already has its state and the gradients of the step before: memory repeats from there);
- the device: the one traced on.

Beyond that, only the I/O boundary: `from_pretrained` of the transformers Auto classes builds the
model from its config on the meta device and gives it fake storage (`WorstCaseTokenizer` stands in
for the tokenizer), and module conversions keep fake parameters; the rest of loading is rlbench's
own (dtype, LoRA adapters, gradient checkpointing, scalar heads for the reward and value roles,
AdamW). Prompts: every prompt is `prompt_tokens` long (the worst case), one distinct prompt per
group, on a small synthetic task (prompt text does not matter to the tokenizer stand-in); or, to
compare with a run, the suite's own task with each prompt at the length it has in that run.
Sampling: every completion runs to `max_new_tokens` (see `PhaseTracker`).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils._python_dispatch import _disable_current_modes

from rlbench.config import AlgorithmConfig, Suite
from rlbench.estimate.standins import FastForwardDecoder, SeparateEngine, WorstCaseTokenizer
from rlbench.estimate.trace import Peak, PhaseTracker
from rlbench.measure.probing import PhaseMemory
from rlbench.measure.summary import PHASE_ROLE
from rlbench.rollout import EngineFactory
from rlbench.train import Run, make_algorithm, run_parts

STEPS = 1  # from the steady state (`warm_optimizers`): every later step repeats it


class TracedProbe:
    """The `RunProbe` a traced run measures with: phases are the tracker's phases, each attributed
    to its role (a phase of a role the run does not hold is "other"), and what a role's load makes
    is labelled as that role's weights (the run's static bytes, read at each phase's start and end,
    are its own: `rlbench.measure.static` tells fake storages apart)."""

    name = primary = "trace"
    measures_advantages = True  # pure math, but its tensors are part of the step's memory

    def __init__(self, tracker: PhaseTracker, roles: tuple[str, ...]) -> None:
        self.tracker, self.roles = tracker, roles

    def snapshot(self) -> dict[str, int]:
        return {self.name: self.tracker.live().total}

    @contextmanager
    def phase(self, name: str) -> Iterator[dict[str, PhaseMemory]]:
        role = PHASE_ROLE.get(name, "other")
        with self.tracker.phase(name, role if role in self.roles else "other"):
            yield {}

    def loading(self, role: str) -> AbstractContextManager[None]:
        return self.tracker.loading(role)

    def process_peak_bytes(self) -> dict[str, int]:
        return {}  # the estimate reads the tracker's peaks, phase by phase

    def anon_memory(self) -> dict[str, dict[str, Any]]:
        return {}

    def describe(self) -> dict[str, Any]:
        return {"probe": self.name, "primary": self.primary, "probes": []}


class TraceFailed(Exception):
    """rlbench's own code raised while traced: a real run of these settings fails the same way."""

    def __init__(self, phase: str | None, error: BaseException) -> None:
        self.phase, self.error = phase, error
        where = f"in {phase}" if phase else "while loading"
        super().__init__(f"{where}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")

    def __reduce__(self) -> tuple:  # from a worker process (`rlbench.estimate.parallel`): phase and message
        return _trace_failed, (self.phase, str(self))


def _trace_failed(phase: str | None, message: str) -> TraceFailed:
    failed = TraceFailed.__new__(TraceFailed)
    Exception.__init__(failed, message)
    failed.phase, failed.error = phase, None
    return failed


@dataclass
class Trace:
    """What one traced run saw: each phase call's start and the peak of each of its regions, the
    live bytes at the end (static: weights, gradients, optimizer state), and the roles held."""

    depth: int
    starts: dict[tuple[str, int], Peak]
    ends: dict[tuple[str, int], Peak]
    peaks: dict[tuple, Peak]
    end: Peak
    roles: tuple[str, ...]


@contextmanager
def fake_checkpoints(tracker: PhaseTracker, tokenizer: WorstCaseTokenizer) -> Iterator[None]:
    """`from_pretrained` of the transformers Auto classes builds from the directory's config.json,
    on the meta device, then gives the model fake storage on the tracker's device."""
    import transformers

    def fake_loader(auto: Any) -> Any:
        def from_pretrained(path: Any, *args: Any, **kwargs: Any) -> torch.nn.Module:
            dtype = kwargs.get("dtype") or kwargs.get("torch_dtype") or torch.float32
            options = {k: kwargs[k] for k in ("attn_implementation", "trust_remote_code") if k in kwargs}
            with _disable_current_modes(), torch.device("meta"):
                config = transformers.AutoConfig.from_pretrained(path, **options)
                model = auto.from_config(config, dtype=dtype, **options)
            model.to_empty(device=tracker.device)
            model.tie_weights()
            return model.eval()

        return classmethod(lambda cls, *a, **k: from_pretrained(*a, **k))

    with ExitStack() as stack:
        for auto in (transformers.AutoModelForCausalLM, transformers.AutoModel,
                     transformers.AutoModelForSequenceClassification):
            stack.enter_context(mock.patch.object(auto, "from_pretrained", fake_loader(auto)))
        stack.enter_context(mock.patch.object(transformers.AutoTokenizer, "from_pretrained",
                                              classmethod(lambda cls, *a, **k: tokenizer)))
        yield


@contextmanager
def fake_conversions() -> Iterator[None]:
    """`module.to(device or dtype)` for modules with fake parameters. PyTorch swaps a fake
    parameter for the converted one, which fails once fake-tensor caching holds a weak reference to
    it; here a conversion that changes nothing keeps the parameter, one that does replaces it."""
    from torch._subclasses.fake_tensor import FakeTensor

    original = torch.nn.Module._apply

    def _apply(self: torch.nn.Module, fn: Any, recurse: bool = True) -> torch.nn.Module:
        if not any(isinstance(p, FakeTensor) for p in self._parameters.values()):
            return original(self, fn, recurse)
        if recurse:
            for child in self.children():
                child._apply(fn)
        with torch.no_grad():
            for key, param in self._parameters.items():
                new = None if param is None else fn(param)
                if new is not None and new is not param:
                    self._parameters[key] = torch.nn.Parameter(new, requires_grad=param.requires_grad)
            for key, buffer in self._buffers.items():
                if buffer is not None:
                    self._buffers[key] = fn(buffer)
        return self

    with mock.patch.object(torch.nn.Module, "_apply", _apply):
        yield


def traced_engine(engine: str, tracker: PhaseTracker, max_new_tokens: int, skip: bool,
                  device: torch.device) -> EngineFactory:
    """The engine factory of a traced run: the hf engine whose decoder fast-forwards (`skip`), or,
    for an engine with weights of its own (vllm), `SeparateEngine`."""
    from rlbench.rollout.hf import HFEngine, make_decoder

    if engine != "hf":  # vllm: its own weights and cache, outside the policy's phases
        return lambda policy, tokenizer, options: SeparateEngine(tokenizer, device)

    def decoder(*args: Any, **kwargs: Any) -> FastForwardDecoder:
        return FastForwardDecoder(make_decoder(*args, **kwargs), tracker, max_new_tokens, skip)

    return lambda policy, tokenizer, options: HFEngine(policy, tokenizer, decoder_factory=decoder)


def fewer_passes(schedule: Any) -> Any:
    """The update schedule with one pass over its minibatches: from the steady state
    (`warm_optimizers`), every pass after it repeats it."""
    return dataclasses.replace(schedule, passes=1)


def warm_units(run: Run) -> None:
    """Each FSDP2 unit of every role gathered once and resharded, as a run's first step leaves them:
    FSDP2 keeps a unit's all-gather buffer between gatherings (its storage resized to nothing), and
    the tracker knows it then as the unit's gathered weights of its layer
    (`rlbench.estimate.ranks.label_sharded`) from the moment a later gathering starts, the
    prefetched one included."""
    from torch.distributed.fsdp import FSDPModule

    for model, _ in run.role_models().values():
        for unit in model.modules():
            if isinstance(unit, FSDPModule):
                unit.unshard()
                unit.reshard()


def warm_optimizers(run: Run, tracker: PhaseTracker) -> None:
    """The state a run holds between steps, made before its first: every trained role's optimizer
    state, as an optimizer step with zero gradients makes it (what `torch.distributed.checkpoint`
    does to restore an optimizer, `_init_optim_state`), and its gradients, which the update leaves
    allocated until the next one sets them to None (a zero gradient per trained parameter: the
    same tensors, sharded as FSDP2 reduce-scatters them)."""
    for role, (_, optimizer) in run.role_models().items():
        if optimizer is None:
            continue
        with tracker.acting_as(role):
            params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
            for param in params:
                param.grad = torch.zeros_like(param)
                tracker.relabel(param.grad, role, "gradients")
            rates = [group["lr"] for group in optimizer.param_groups]
            for group in optimizer.param_groups:
                group["lr"] = 0.0
            optimizer.step()
            for group, rate in zip(optimizer.param_groups, rates):
                group["lr"] = rate


def traced_suite(suite: Suite, algo: AlgorithmConfig, own_task: bool = False) -> Suite:
    """The suite as traced: a small synthetic task (`own_task`: the suite's, whose prompts the
    tokenizer stand-in knows the lengths of), the hf engine, one seed."""
    from rlbench.config import TaskConfig

    task = suite.task if own_task else TaskConfig(name="synthetic", train_size=64)
    return dataclasses.replace(suite, task=task, seeds=[suite.seeds[0]],
                               rollout=dataclasses.replace(suite.rollout, engine="hf"), algorithms=[algo])


def trace_run(suite: Suite, algo: AlgorithmConfig, config: Any, depth: int, prompt_tokens: int,
              device: torch.device, skip_decode: bool = True, prompt_lengths: dict[str, int] | None = None,
              ranks: int = 1) -> Trace:
    """Trace a steady-state step and the evaluation of `algo` with `config` cut to `depth` decoder layers;
    with `prompt_lengths` (prompt text -> tokens, `rlbench.estimate.check.run_prompt_lengths`) on the
    suite's own task, each prompt at its own length; `ranks` > 1: rank 0 of an FSDP2 run of that
    many ranks (`rlbench.estimate.ranks`)."""
    from rlbench.algorithms.base import uses_reward_model
    from rlbench.catalog import load_problems
    from rlbench.estimate.ranks import SimulatedRanks, fake_process_group, label_sharded, mesh_tensors

    config = _with_depth(config, depth)
    tokenizer = WorstCaseTokenizer(config.vocab_size, prompt_tokens, _token(config, "pad_token_id", 0),
                                   _token(config, "eos_token_id", 2), _token(config, "bos_token_id", None),
                                   prompt_lengths)
    tracker = PhaseTracker(device, config.vocab_size, depth, tokenizer.worst_token)
    run_suite = traced_suite(suite, algo, own_task=prompt_lengths is not None)
    with tempfile.TemporaryDirectory(prefix="rlbench-estimate-") as tmp, ExitStack() as stack:
        config.save_pretrained(tmp)
        dist = None
        if ranks > 1:
            stack.enter_context(fake_process_group(ranks))
            dist = SimulatedRanks(ranks, device)
        stack.enter_context(fake_checkpoints(tracker, tokenizer))
        stack.enter_context(fake_conversions())
        stack.enter_context(tracker)
        seed, model_dir = run_suite.seeds[0], Path(tmp)
        try:
            algorithm = make_algorithm(algo)
            parts = run_parts(run_suite, algo, TracedProbe(tracker, algorithm.roles()), seed=seed,
                              policy_dir=model_dir, algorithm=algorithm, dist=dist)
            parts = dataclasses.replace(
                parts, schedule=fewer_passes(parts.schedule), device=device,
                engine=traced_engine(suite.rollout.engine, tracker, suite.rollout.max_new_tokens, skip_decode, device))
            run = Run(run_suite, algo, seed, model_dir, model_dir if uses_reward_model(algorithm) else None, parts)
        except Exception as exc:  # noqa: BLE001 - reported as the algorithm's estimate failing
            raise TraceFailed(None, exc) from exc
        for role, (model, _) in run.role_models().items():
            assert all(isinstance(local_tensor(p), FakeTensor) for p in model.parameters()), \
                f"{role}: a real weight was made"
            tracker.layer_map(model)
            if dist is not None:  # FSDP2's units: gathered weights, sharded gradients, the mesh's rank table
                label_sharded(tracker, model, role, trained=role in ("policy", "value"))
                for table in mesh_tensors(model):
                    tracker.relabel(table, "other", "activations")
            elif role in ("policy", "value"):
                tracker.grads_as(model, role)
        try:
            if dist is not None:
                warm_units(run)
            warm_optimizers(run, tracker)
            for _ in range(STEPS):
                run.step()
            run.evaluate(load_problems(run_suite.task, "eval", min(suite.eval.size, suite.eval.batch_size), 0))
        except Exception as exc:  # noqa: BLE001 - reported as the algorithm's estimate failing
            raise TraceFailed(tracker.failed_phase, exc) from exc
        end = tracker.live()
    return Trace(depth, tracker.starts, tracker.ends, tracker.peaks, end, tuple(run.roles))


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor this rank holds: a sharded (DTensor) parameter's local shard, else the tensor."""
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def _with_depth(config: Any, depth: int) -> Any:
    """A copy of a transformers config with `depth` decoder layers."""
    config = type(config).from_dict(json.loads(config.to_json_string()))
    if depth != config.num_hidden_layers:
        layer_types = getattr(config, "layer_types", None)
        config.num_hidden_layers = depth
        if layer_types:
            config.layer_types = list(layer_types)[:depth]
    return config


def _token(config: Any, name: str, default: int | None) -> int | None:
    value = getattr(config, name, None)
    if isinstance(value, list):
        value = value[0] if value else None
    return default if value is None else int(value)
