"""The shared stages of a suite, run once before its runs: base model, SFT, reward model, starting accuracy.

    stages = prepare_stages(suite, console)
    stages["policy_dir"], stages.get("reward_dir"), stages["report"]   # what every run starts from

A shape model (random weights) skips SFT and the evaluation, and its reward and value roles are
the same shape with a fresh scalar head (untrained). A reward model is trained (or loaded from
`model.reward_model.path`) only when an algorithm holds one or starts its value model from one;
a weak one (held-out pairwise accuracy no better than chance within its noise) is flagged.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from rlbench.cache import built_record
from rlbench.config import Suite
from rlbench.progress import ProgressBar


def needs_reward_model(suite: Suite) -> bool:
    """Whether any algorithm of the suite holds a reward model or starts its value model from one."""
    from rlbench.algorithms.base import uses_reward_model
    from rlbench.train import make_algorithm

    return any(uses_reward_model(make_algorithm(a)) for a in suite.algorithms)


def prepare_stages(suite: Suite, console: Console) -> dict[str, Any]:
    """Base model, SFT, reward model and the SFT model's evaluation, shared by every run."""
    import torch

    from rlbench.models.loading import resolve_base
    from rlbench.models.shape import is_shape
    from rlbench.stages.sft import cold_start, total_steps
    from rlbench.stages.starting_eval import starting_accuracy, starting_stderr

    torch.set_num_threads(suite.threads or os.cpu_count() or 1)
    base_dir = resolve_base(suite.model.name, suite.model.trust_remote_code)
    stages: dict[str, Any] = {"report": {}}
    policy_dir = base_dir

    shape = is_shape(suite.model.name)
    sft = suite.model.sft
    sft_steps = total_steps(sft)
    if shape and sft_steps > 0:
        console.print("SFT: skipped (a shape model has random weights; SFT would be meaningless)")
    if sft_steps > 0 and not shape:
        with ProgressBar(console, "SFT (cold start)", sft_steps) as (progress, task):
            policy_dir, stats, hit = cold_start(
                base_dir, suite.model.name, sft, suite.task, seed=0,
                on_step=lambda step, loss: progress.update(task, completed=step, info=f"loss {loss:.3f}"),
                trust_remote_code=suite.model.trust_remote_code, eval_tokens=suite.rollout.max_new_tokens)
        console.print(f"SFT: {'cached' if hit else 'trained'} ({stats['sft/seconds']:.0f} s, "
                      f"{int(stats['sft/steps'])} steps, final loss {stats['sft/final_loss']:.3f})")
        if "sft/best_step" in stats:
            console.print(sft_stop_line(stats))
        stages["report"]["sft"] = dict(stats, cache_hit=hit, path=str(policy_dir), built=built_record(Path(policy_dir)))
    stages["policy_dir"] = str(policy_dir)

    if needs_reward_model(suite) and shape:  # the same shape with a fresh scalar head, untrained
        stages["reward_dir"] = str(policy_dir)
        stages["report"]["reward_model"] = {"untrained": True, "path": str(policy_dir)}
    elif needs_reward_model(suite):
        from rlbench.stages.reward_model import prepare_reward_model

        with ProgressBar(console, "reward model", suite.model.reward_model.steps) as (progress, task):
            reward_dir, rm_stats, hit = prepare_reward_model(
                Path(policy_dir), suite, on_step=lambda step, total, info: progress.update(
                    task, completed=step, total=total, info=info))
        console.print(f"reward model: {'cached' if hit else 'trained'}, held-out pairwise accuracy "
                      f"{rm_stats.get('reward_model/heldout_accuracy', float('nan')):.3f}")
        stages["reward_dir"] = str(reward_dir)
        stages["report"]["reward_model"] = dict(rm_stats, cache_hit=hit, path=str(reward_dir),
                                                built=built_record(Path(reward_dir)))
        weak = reward_model_warning(rm_stats)
        if weak:
            console.print(f"[yellow]warning:[/] weak reward model: {escape(weak)}; a run that optimises its "
                          "reward may climb it without getting answers right", highlight=False)
            stages["reward_model_warning"] = weak
            stages["report"]["reward_model"]["weak"] = weak

    if shape:
        console.print("accuracy: not measured (shape model: random weights)")
        return stages
    before, hit = starting_accuracy(policy_dir, suite, console)
    seconds = before.pop("seconds")
    stderr, by = starting_stderr(suite, before)
    console.print(f"starting accuracy: {before['eval/accuracy']:.1%} ± {stderr:.1%} ({by}; "
                  f"{'cached' if hit else f'{seconds:.0f} s'})")
    stages["report"]["eval_before_cached"] = hit
    stages["eval_seconds"] = seconds  # what the watchdog allows a run's final evaluation (x SLACK)
    stages["eval_before"] = before  # with its per-problem outcomes, which each run's result keeps
    stages["report"]["eval_before"] = {k: v for k, v in before.items() if k != "eval/outcomes"}  # evaluation.OUTCOMES
    return stages


def sft_stop_line(stats: dict[str, Any]) -> str:
    """One line on where SFT on a fixed demonstration set stopped and which step it kept."""
    return (f"SFT on {stats['sft/demonstrations']} demonstrations: kept step {stats['sft/best_step']} of "
            f"{stats['sft/stopped_step']} (dev accuracy {stats['sft/best_dev_accuracy']:.1%}; stopped by "
            f"{stats['sft/stopped_by']}, horizon {stats['sft/horizon_steps']} steps)")


def reward_model_warning(stats: dict[str, Any]) -> str | None:
    """Why the reward model stage's held-out pairwise accuracy is too weak to trust, or None
    (also None for a loaded model without held-out figures)."""
    from rlbench.report.stats import weak_reward_model

    accuracy, pairs = stats.get("reward_model/heldout_accuracy"), stats.get("reward_model/heldout_pairs")
    if accuracy is None or not pairs or not math.isfinite(accuracy):
        return None
    return weak_reward_model(accuracy, int(pairs))
