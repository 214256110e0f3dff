"""The one loop every recipe shares, and what it is built from.

    run.py     `Run`: one algorithm x seed under the suite's budget; `step()` (generate, score,
               reference log-probs, values, advantages, update), `train()` (steps until the
               budget's first limit, with the evaluation cadence), `evaluate()`
    parts.py   `RunParts` and `run_parts`: the recipe, update schedule, step shape, precision,
               probe, engine factory and options, device and rank, each resolved once from the suite
    roles.py   loading every role the recipe holds, each load measured by the probe

The loop reads only protocols (`Algorithm`, `RolloutEngine`, `RunProbe`, `ScalarRole`). Nothing
below this package imports it; the worker and the estimator build runs from the same parts.

    run = Run.build(suite, suite.algorithms[0], seed=0, policy_dir=path, reward_dir=None, probe=probe)
    stopped_by, evals = run.train(on_step=print)
"""

from rlbench.train.parts import RunParts, make_algorithm, run_parts
from rlbench.train.run import Run

__all__ = ["Run", "RunParts", "make_algorithm", "run_parts"]
