"""Checks of the accuracy settings that span fields: the demonstration set and its SFT stopping
rule, the evaluation's scorings, and the simulated reward model's noise.

    errors: Errors = []
    check_accuracy_settings(suite, ok, errors)   # appends (field path, message) pairs
"""

from __future__ import annotations

import math
from collections.abc import Callable

from rlbench.config.schema import SCORINGS, Suite
from rlbench.config.typed import Errors


def sft_horizon(demonstrations: int, max_epochs: float, batch_size: int) -> int:
    """SFT steps of the cosine schedule's horizon on a fixed demonstration set: max_epochs passes."""
    return math.ceil(max_epochs * demonstrations / batch_size)


def check_accuracy_settings(suite: Suite, ok: Callable[[str], bool], errors: Errors) -> None:
    """Cross-field checks of model.sft (demonstrations), eval.scoring and algorithms[i].reward_noise."""
    sft = suite.model.sft
    if sft.demonstrations is not None and ok("model.sft"):
        if suite.task.name == "synthetic" and sft.demonstrations > suite.task.train_size and ok("task.train_size"):
            errors.append(("model.sft.demonstrations", f"must be <= task.train_size ({suite.task.train_size}), "
                                                       f"got {sft.demonstrations}"))
        horizon = sft_horizon(sft.demonstrations, sft.max_epochs, sft.batch_size)
        if sft.min_steps >= horizon:
            errors.append(("model.sft.min_steps", f"must be below the SFT horizon of {horizon} steps "
                                                  f"(max_epochs x demonstrations / batch_size), got {sft.min_steps}"))
        if sft.eval_every > horizon:
            errors.append(("model.sft.eval_every", f"must be <= the SFT horizon of {horizon} steps, "
                                                   f"got {sft.eval_every}"))
    if ok("eval.scoring"):
        for i, name in enumerate(suite.eval.scoring):
            if name not in SCORINGS:
                errors.append((f"eval.scoring[{i}]", f"must be one of {', '.join(SCORINGS)}, got {name!r}"))
        if len(set(suite.eval.scoring)) != len(suite.eval.scoring):
            errors.append(("eval.scoring", "names a scoring twice"))
    for i, alg in enumerate(suite.algorithms):
        path = f"algorithms[{i}].reward_noise"
        if ok(path) and alg.reward_noise > 0 and alg.reward not in ("rules", "both"):
            errors.append((path, f"adds noise to the rule reward: set reward: rules (or both), got {alg.reward}"))
