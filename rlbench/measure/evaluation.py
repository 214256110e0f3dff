"""Held-out evaluation: greedy pass@1 (and pass@k / maj@k when k > 1), each with a standard error.

Greedy pass@1 also keeps each problem's verdict in problem order (`eval/outcomes`, a string of 0s
and 1s), so a run's accuracy before and after RL can be compared problem by problem
(`paired_accuracy`).

Scorings (`tasks.answers.SCORERS`, lm-evaluation-harness's names): `strict` reads the number in
`<answer>...</answer>` only, `flexible` the last number anywhere, `pipeline` rlbench's extractor.
`eval/accuracy` and `eval/outcomes` are the headline scoring's (`eval.headline`); every scoring
of `eval.scoring` also gets `eval/accuracy_<name>` and `eval/outcomes_<name>` from the same
completions.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from rlbench.report.stats import binomial_stderr, clustered_stderr, paired_delta
from rlbench.rollout import RolloutEngine, SamplingParams
from rlbench.tasks import Problem, encode_prompts
from rlbench.tasks.answers import SCORERS, answers_match, extract_answer

OUTCOMES = "eval/outcomes"  # per-problem greedy verdicts, "0110...", in problem order


def scoring_outcomes(name: str) -> str:
    """The key of a scoring's per-problem verdicts (`eval/outcomes_strict`)."""
    return f"{OUTCOMES}_{name}"
standard_error = binomial_stderr  # of a proportion over independent problems


def evaluate(engine: RolloutEngine, tokenizer, problems: list[Problem], max_new_tokens: int,
             batch_size: int = 256, k: int = 1, temperature: float = 1.0, seed: int = 0,
             scorings: tuple[str, ...] | list[str] = (), headline: str = "pipeline") -> dict[str, Any]:
    """Score `problems`: `eval/accuracy` (greedy pass@1, read by the `headline` scoring) with
    `eval/accuracy_stderr_binomial` and `eval/outcomes`, for each of `scorings` the same as
    `eval/accuracy_<name>`, `..._stderr_binomial` and `eval/outcomes_<name>`, and with k > 1
    `eval/pass@k` and `eval/maj@k` from k samples at `temperature`; also format and length figures."""
    greedy = SamplingParams(max_new_tokens=max_new_tokens, greedy=True)
    names = list(dict.fromkeys([headline, *scorings]))
    correct: dict[str, list[bool]] = {name: [] for name in names}
    formatted, lengths, truncated = [], [], []
    for start in range(0, len(problems), batch_size):
        batch = problems[start: start + batch_size]
        prompts = encode_prompts(tokenizer, batch)
        rollout = engine.generate(prompts, 1, greedy)
        for text, problem in zip(rollout.texts, batch):
            for name in names:
                correct[name].append(answers_match(SCORERS[name](text), problem.answer))
            formatted.append("<answer>" in text and "</answer>" in text)
        lengths.extend(rollout.lengths.tolist())
        truncated.extend(rollout.truncated.tolist())
    n = len(problems)
    accuracy = sum(correct[headline]) / n
    metrics = {
        "eval/accuracy": accuracy,
        "eval/accuracy_stderr_binomial": standard_error(accuracy, n),
        "eval/format_rate": sum(formatted) / n,
        "eval/completion_length": sum(lengths) / n,
        "eval/truncation_rate": sum(truncated) / n,
        "eval/size": float(n),
        OUTCOMES: "".join("1" if c else "0" for c in correct[headline]),
    }
    for name in scorings:
        value = sum(correct[name]) / n
        metrics.update({f"eval/accuracy_{name}": value, f"eval/accuracy_{name}_stderr_binomial": standard_error(value, n),
                        scoring_outcomes(name): "".join("1" if c else "0" for c in correct[name])})
    if k > 1:
        metrics.update(_sampled_metrics(engine, tokenizer, problems, max_new_tokens, batch_size, k, temperature, seed))
    return metrics


def _sampled_metrics(engine: RolloutEngine, tokenizer, problems: list[Problem], max_new_tokens: int,
                     batch_size: int, k: int, temperature: float, seed: int) -> dict[str, float]:
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature)
    per_batch = max(1, batch_size // k)
    any_correct, majority_correct = 0, 0
    for start in range(0, len(problems), per_batch):
        batch = problems[start: start + per_batch]
        rollout = engine.generate(encode_prompts(tokenizer, batch), k, params, seed=seed + start)
        for i, problem in enumerate(batch):
            answers = [extract_answer(t) for t in rollout.texts[i * k: (i + 1) * k]]
            any_correct += any(answers_match(a, problem.answer) for a in answers)
            votes = Counter(a for a in answers if a is not None)
            majority_correct += bool(votes) and answers_match(votes.most_common(1)[0][0], problem.answer)
    n = len(problems)
    pass_k, maj_k = any_correct / n, majority_correct / n
    return {f"eval/pass@{k}": pass_k, f"eval/pass@{k}_stderr_binomial": standard_error(pass_k, n),
            f"eval/maj@{k}": maj_k, f"eval/maj@{k}_stderr_binomial": standard_error(maj_k, n)}


def evaluate_suite(engine: RolloutEngine, tokenizer, problems: list[Problem], suite, seed: int = 0) -> dict[str, Any]:
    """`evaluate` with the suite's eval and rollout settings: the one call the runner (before RL)
    and each worker (during and after RL) make, so both score the same way."""
    return evaluate(engine, tokenizer, problems, suite.rollout.max_new_tokens, suite.eval.batch_size, suite.eval.k,
                    suite.rollout.temperature, seed, suite.eval.scoring, suite.eval.headline)


def paired_accuracy(before: str, after: str, clusters: list[str], cluster_by: str) -> dict[str, Any]:
    """The per-problem record of a run's accuracy before and after RL, and its paired statistics.

    Args:
        before, after: `eval/outcomes` of the two evaluations (same problems, same order).
        clusters: each problem's cluster key (`catalog.problem_clusters`).
        cluster_by: what a cluster is ("arithmetic chain", "problem").
    Returns:
        {"outcomes": {"before", "after", "cluster", "cluster_keys"}, "paired": {...}}: outcomes keep
        the verdicts and each problem's cluster as an index into the distinct keys; paired holds
        `paired_delta` (McNemar p-value, clustered standard error and 95% interval of the change)
        and the clustered standard errors of both accuracies.
    """
    assert len(before) == len(after) == len(clusters), "before, after and clusters: one entry per problem"
    index: dict[str, int] = {}
    cluster = [index.setdefault(key, len(index)) for key in clusters]
    b, a = [int(c) for c in before], [int(c) for c in after]
    paired = paired_delta(b, a, cluster)
    paired.update(cluster_by=cluster_by, before_stderr=clustered_stderr(b, cluster)[0],
                  after_stderr=clustered_stderr(a, cluster)[0])
    paired = {k: _finite_or_none(v) for k, v in paired.items()}  # one cluster: no spread, no error
    if None in paired["ci95"]:
        paired["ci95"] = None
    return {"outcomes": {"before": before, "after": after, "cluster": cluster, "cluster_keys": list(index)},
            "paired": paired}


def chain_split(seen: list[bool] | None, before: str, after: str, clusters: list[str],
                cluster_by: str) -> dict[str, Any] | None:
    """The paired statistics of one scoring on the held-out problems whose chain is among the SFT
    demonstrations' (`seen`, per problem: `stages.demonstrations.seen_chains`) and on the rest
    (`unseen`), each with its problem count; None without a demonstration set or with a side empty."""
    if seen is None:
        return None
    out = {}
    for name, keep in (("seen", True), ("unseen", False)):
        rows = [i for i, s in enumerate(seen) if s == keep]
        if not rows:
            return None
        pick = lambda text, rows=rows: "".join(text[i] for i in rows)  # noqa: E731
        out[name] = dict(paired_accuracy(pick(before), pick(after), [clusters[i] for i in rows], cluster_by)["paired"],
                         problems=len(rows))
    return out


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value
