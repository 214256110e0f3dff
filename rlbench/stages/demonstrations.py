"""The fixed demonstration set of a suite, its dev split, and fresh demonstrations beyond it.

With `model.sft.demonstrations: N` the SFT stage trains on the first N train problems (seed 0),
the `sft_more` control arm trains on the same N, and `sft_new_data` on train problems that are
not among them. The dev split, on which SFT stops early, holds prompts and answers only (no
demonstration is spent on it) of train problems whose arithmetic chain (the task's cluster key)
is not among the demonstrations': held-out problems that retell a demonstrated chain are scored
far above the rest (measured at N=1000: 76.6% against 17.1%), so a dev split of such problems
keeps rising while held-out accuracy is flat. `seen_chains` marks held-out problems by the same
key, for the report's seen / unseen split.

    demos = demonstration_problems(suite.task, suite.model.sft)        # None without demonstrations
    dev = dev_problems(suite.task, demos, suite.model.sft.dev_size)
"""

from __future__ import annotations

from rlbench.catalog import load_problems, problem_clusters
from rlbench.config import SFTConfig, TaskConfig
from rlbench.errors import UserError
from rlbench.tasks import Problem

DEMONSTRATION_SEED = 0  # the demonstrations are the first N train problems of this seed
DEV_SEED = 1  # dev candidates: train problems of another seed, filtered by chain
DEV_CANDIDATES_PER_PROBLEM = 8  # candidates drawn per dev problem wanted (about half share a chain at N=1000)


def demonstration_problems(task: TaskConfig, sft: SFTConfig) -> list[Problem] | None:
    """The fixed demonstration set (the first `sft.demonstrations` train problems), or None."""
    if sft.demonstrations is None:
        return None
    return load_problems(task, "train", sft.demonstrations, DEMONSTRATION_SEED)


def dev_problems(task: TaskConfig, demonstrations: list[Problem], size: int) -> list[Problem]:
    """`size` train problems (seed DEV_SEED) whose chain is not a demonstration's, nor the problem itself."""
    chains = set(problem_clusters(task, demonstrations)[0])
    ids = {p.id for p in demonstrations}
    wanted = min(task.train_size, max(size * DEV_CANDIDATES_PER_PROBLEM, size + 2 * len(demonstrations)))
    candidates = load_problems(task, "train", wanted, DEV_SEED)
    keys = problem_clusters(task, candidates)[0]
    dev = [p for p, key in zip(candidates, keys) if key not in chains and p.id not in ids][:size]
    if len(dev) < size:
        raise UserError(f"model.sft.dev_size: only {len(dev)} of {len(candidates)} train problems tell a chain "
                        f"that is not among the {len(demonstrations)} demonstrations'; lower dev_size to "
                        f"{len(dev)} or fewer, or raise task.train_size")
    return dev


def fresh_problems(task: TaskConfig, demonstrations: list[Problem], seed: int) -> list[Problem]:
    """Train problems (the run's seed) that are not among the demonstrations: new labelled data."""
    ids = {p.id for p in demonstrations}
    return [p for p in load_problems(task, "train", task.train_size, seed) if p.id not in ids]


def seen_chains(task: TaskConfig, demonstrations: list[Problem], problems: list[Problem]) -> list[bool]:
    """Per problem: whether its chain (cluster key) is among the demonstrations'."""
    chains = set(problem_clusters(task, demonstrations)[0])
    return [key in chains for key in problem_clusters(task, problems)[0]]
