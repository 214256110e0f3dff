"""What a `Run` is built from besides the suite and its model directories, each part resolved once.

`run_parts` resolves them from the suite: the recipe (the catalog's, or any object implementing the
`Algorithm` protocol), its update schedule, its step shape (group size and prompts per step, from
its parameters' group-size rule), the precision, the probe, the rollout engine's factory and
options, the device and this process's rank. The worker builds a run from them (`Run.build`); the
estimator builds the same parts, replaces what it traces differently (its tracing probe, an engine
whose decode loop skips ahead, as few update passes as show every memory state, the device it
traces on) with `dataclasses.replace`, and constructs the same `Run`.

    parts = run_parts(suite, suite.algorithms[0], probe, seed=0, policy_dir=path)
    run = Run(suite, suite.algorithms[0], 0, path, None, parts)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from rlbench.algorithms.base import Algorithm, UpdateSchedule
from rlbench.catalog import ALGORITHMS, ENGINES
from rlbench.config import AlgorithmConfig, StepShape, Suite, algorithm_params, step_shape
from rlbench.device import default_device
from rlbench.distributed import Dist
from rlbench.measure.probing import RunProbe
from rlbench.models.precision import Precision, resolve_precision
from rlbench.rollout import EngineFactory, EngineOptions


def make_algorithm(cfg: AlgorithmConfig) -> Algorithm:
    """The catalog's recipe for one of a suite's algorithm entries, with its parameters and reward source."""
    return ALGORITHMS.get(cfg.name).cls(algorithm_params(cfg), cfg.reward)


@dataclass(frozen=True)
class RunParts:
    """Everything a run is given rather than decides (see the module docstring)."""

    algorithm: Algorithm
    schedule: UpdateSchedule  # how the update phases optimise: the algorithm's own unless replaced
    shape: StepShape  # completions per prompt, prompts per step
    precision: Precision  # the dtypes every role is held in and every phase computes in
    probe: RunProbe  # measures every phase and role load
    engine: EngineFactory  # builds the rollout engine once the policy is loaded
    engine_options: EngineOptions
    device: torch.device  # where the roles live
    dist: Dist  # this rank of a distributed run (inert in one process)


def run_parts(suite: Suite, algo_cfg: AlgorithmConfig, probe: RunProbe, *, seed: int, policy_dir: str | Path,
              algorithm: Algorithm | None = None, dist: Dist | None = None) -> RunParts:
    """The parts of a run of `algo_cfg` (or of `algorithm`, any object implementing the protocol)
    under `suite`, measured by `probe`; `dist`: this rank of a distributed run (rlbench/distributed.py)."""
    algorithm = algorithm if algorithm is not None else make_algorithm(algo_cfg)
    dist = dist if dist is not None else Dist()
    return RunParts(
        algorithm=algorithm, schedule=algorithm.schedule(), shape=step_shape(algorithm.params, suite.rollout),
        precision=resolve_precision(suite.model), probe=probe, engine=ENGINES.get(suite.rollout.engine),
        engine_options=EngineOptions.from_suite(suite, policy_dir, seed),
        device=dist.device if dist.active else default_device(), dist=dist)
