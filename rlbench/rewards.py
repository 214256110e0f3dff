"""Rule rewards (DeepSeek-R1-Zero style): regex format checks and exact answer match, no reward model.

Each rule is a plain function `(completion, problem) -> float`, listed by name in the catalog; it
returns its raw value (1.0/0.0 for checks) and a suite gives the weights:

    rewards: {answer_correct: 1.0, format_strict: 0.1}

`score_rules` turns completions into weighted totals plus every rule's raw values (reported side by
side, so a run that games one rule is visible). `gold_correct` is the answer checker's verdict:
the gold reward every algorithm is judged by, whatever reward it trained on.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections.abc import Callable, Mapping

from rlbench.tasks import Problem
from rlbench.tasks.answers import answers_match, canonical_number, extract_answer

# The lecture's format_reward_func pattern, with DOTALL so the reasoning may span lines.
STRICT_FORMAT_RE = re.compile(r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$", re.DOTALL)
SOFT_FORMAT_RE = re.compile(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>", re.DOTALL)
ANSWER_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
PLACED_TAGS = ("<reasoning>\n", "\n</reasoning>\n", "\n<answer>\n", "\n</answer>")
TRAILING_TEXT_PENALTY = 0.001  # per character after </answer>, at most one tag's worth


def format_strict(completion: str, problem: Problem) -> float:
    """1 if the completion is exactly <reasoning>\\n...\\n</reasoning>\\n<answer>\\n...\\n</answer>\\n, else 0."""
    return 1.0 if STRICT_FORMAT_RE.match(completion) else 0.0


def format_soft(completion: str, problem: Problem) -> float:
    """1 if <reasoning>...</reasoning> then <answer>...</answer> appear anywhere, else 0."""
    return 1.0 if SOFT_FORMAT_RE.search(completion) else 0.0


def answer_correct(completion: str, problem: Problem) -> float:
    """1 if the extracted final answer equals the gold answer, else 0."""
    return 1.0 if answers_match(extract_answer(completion), problem.answer) else 0.0


def answer_is_number(completion: str, problem: Problem) -> float:
    """1 if the first <answer>...</answer> holds a number, else 0."""
    match = ANSWER_TAG_RE.search(completion)
    return 1.0 if match and canonical_number(match[1]) is not None else 0.0


def tag_count(completion: str, problem: Problem) -> float:
    """0.25 per format tag placed once on its own line, less 0.001 per character after </answer>."""
    score = 0.25 * sum(1 for tag in PLACED_TAGS if completion.count(tag) == 1)
    if completion.count("\n</answer>") == 1:
        trailing = completion.split("\n</answer>", 1)[1].removeprefix("\n")
        score -= min(0.25, TRAILING_TEXT_PENALTY * len(trailing))
    return score


def score_rules(completions: list[str], problems: list[Problem], weights: dict[str, float],
                rules: Mapping[str, Callable[[str, Problem], float]]) -> tuple[list[float], dict[str, list[float]]]:
    """(weighted total per completion, {reward name: raw value per completion}).

    `problems[i]` is the problem `completions[i]` answers (repeat a problem for each of its samples);
    `rules` maps each name in `weights` to its function (`rlbench.catalog.rule_functions(weights)`).
    """
    assert len(completions) == len(problems), f"{len(completions)} completions for {len(problems)} problems"
    per_reward = {name: [rules[name](c, p) for c, p in zip(completions, problems)] for name in weights}
    totals = [sum(weights[name] * values[i] for name, values in per_reward.items())
              for i in range(len(completions))]
    return totals, per_reward


def gold_correct(completions: list[str], problems: list[Problem]) -> list[float]:
    """The answer checker's verdict per completion (1.0 or 0.0): the gold reward of every run."""
    assert len(completions) == len(problems), f"{len(completions)} completions for {len(problems)} problems"
    return [answer_correct(c, p) for c, p in zip(completions, problems)]


def noisy_rewards(rewards: list[float], completions: list[str], problems: list[Problem], sd: float,
                  seed: int) -> list[float]:
    """`rewards` plus Gaussian noise of standard deviation `sd`, fixed per (seed, problem, completion
    text): a simulated reward model whose errors are known. Like a trained scorer it gives one text
    one score every time it sees it, so a policy can climb its errors; for two completions of one
    prompt whose rewards differ by 1 it ranks them right with probability Phi(1 / (sd * sqrt 2))
    (sd 1.72 -> 0.66, 0.84 -> 0.80, 0.55 -> 0.90): `simulated_pairwise_accuracy`."""
    out = []
    for reward, text, problem in zip(rewards, completions, problems, strict=True):
        digest = hashlib.blake2b(f"{seed}\0{problem.id}\0{text}".encode(), digest_size=8).digest()
        out.append(reward + sd * random.Random(digest).gauss(0.0, 1.0))
    return out


def simulated_pairwise_accuracy(sd: float) -> float:
    """P(1 + e1 > 0 + e2) for e1, e2 ~ N(0, sd^2): Phi(1 / (sd * sqrt 2)) (1.0 at sd 0)."""
    return 1.0 if sd == 0 else 0.5 * (1 + math.erf(1 / (sd * math.sqrt(2)) / math.sqrt(2)))
