"""The starting evaluation: the SFT model's held-out accuracy, the "before" of every run.

Greedy evaluation of fixed problems is deterministic, so the result for a model in the cache (the
embedded base, a cached SFT model) is cached beside it, keyed by the model directory, the eval and
task settings, the generation length and temperature and `EVAL_VERSION`; a model outside the
cache is evaluated every time. `starting_stderr` gives the standard error the report's tables
print for it (clustered by the task's key where per-problem outcomes were kept).

    before, hit = starting_accuracy(policy_dir, suite, console)
    stderr, how = starting_stderr(suite, before)
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console

from rlbench.cache import cache_root, cached_dir, stable_hash
from rlbench.config import Suite
from rlbench.report.io import write_json_atomic

EVAL_VERSION = 3  # bump when evaluation changes what it returns for the same model and problems


def evaluate_start(policy_dir: str | Path, suite: Suite, console: Console) -> dict[str, Any]:
    """Evaluate the model at `policy_dir` on the suite's held-out problems (with `seconds`)."""
    from rlbench.catalog import load_problems
    from rlbench.device import default_device
    from rlbench.measure.evaluation import evaluate_suite
    from rlbench.models.embedded import load_pretrained_pair
    from rlbench.rollout.hf import HFEngine

    model, tokenizer = load_pretrained_pair(policy_dir, trust_remote_code=suite.model.trust_remote_code)
    model.to(default_device())
    problems = load_problems(suite.task, "eval", suite.eval.size, 0)
    with console.status(f"evaluating the starting model on {len(problems)} held-out problems"):
        start = time.perf_counter()
        result = evaluate_suite(HFEngine(model, tokenizer), tokenizer, problems, suite)
    return dict(result, seconds=round(time.perf_counter() - start, 3))


def starting_accuracy(policy_dir: str | Path, suite: Suite, console: Console) -> tuple[dict[str, Any], bool]:
    """(the starting evaluation with its `seconds`, whether it came from the cache)."""
    if not Path(policy_dir).is_relative_to(cache_root()):
        return evaluate_start(policy_dir, suite, console), False
    key = stable_hash({"policy_dir": str(policy_dir), "eval": eval_key_settings(suite), "task": asdict(suite.task),
                       "max_new_tokens": suite.rollout.max_new_tokens,
                       "temperature": suite.rollout.temperature, "version": EVAL_VERSION})
    eval_dir, hit = cached_dir("eval", key, lambda tmp: write_json_atomic(
        tmp / "eval.json", evaluate_start(policy_dir, suite, console)))
    return json.loads((eval_dir / "eval.json").read_text()), hit


def eval_key_settings(suite: Suite) -> dict[str, Any]:
    """The eval settings in the cache key: the scorings only where a suite sets them, so the key of a
    suite that does not is what it was before they existed."""
    settings = asdict(suite.eval)
    for name, default in (("scoring", []), ("headline", "pipeline")):
        if settings[name] == default:
            del settings[name]
    return settings


def starting_stderr(suite: Suite, before: dict[str, Any]) -> tuple[float, str]:
    """The starting accuracy's standard error as the report's tables give it: clustered by the
    task's key (problems telling one arithmetic chain are one piece of evidence) where the
    per-problem outcomes are there, else binomial; and which it is."""
    from rlbench.catalog import load_problems, problem_clusters
    from rlbench.report.stats import clustered_stderr

    outcomes = before.get("eval/outcomes")
    if outcomes:
        clusters, by = problem_clusters(suite.task, load_problems(suite.task, "eval", suite.eval.size, 0))
        if len(clusters) == len(outcomes) and len(set(clusters)) > 1:
            return clustered_stderr([int(c) for c in outcomes], clusters)[0], f"clustered by {by}"
    return before["eval/accuracy_stderr_binomial"], "binomial"
