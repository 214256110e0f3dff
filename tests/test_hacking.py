"""The reward-hacking flag on curves built from real scoring of completions.

A run is simulated step by step: each step answers the same 32 real synthetic problems, and over
the run the answers drift from right to wrong (step s gets the first s * 32 / 19 of them wrong,
with the reasoning kept). A reward that pays for a wrong answer rises while the answer checker's
verdict falls: hacked. The correctness reward falls with the checker: not hacked.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from rlbench.catalog import load_problems
from rlbench.config import TaskConfig
from rlbench.measure.hacking import reward_hacking
from rlbench.measure.summary import heldout_witness
from rlbench.report.stats import weak_reward_model
from rlbench.rewards import answer_correct, format_strict, gold_correct
from rlbench.tasks import Problem, demonstration
from rlbench.tasks.answers import answers_match, extract_answer

STEPS = 20
PROBLEMS = load_problems(TaskConfig(), "train", 32, seed=0)


def wrong_answer_pays(completion: str, problem: Problem) -> float:
    """A broken reward: 1 for a well-formatted completion whose answer is wrong, else 0."""
    answer = extract_answer(completion)
    return format_strict(completion, problem) * (answer is not None and not answers_match(answer, problem.answer))


def drifting_completions(step: int) -> list[str]:
    """The step's completions: the first round(step * 32 / 19) problems answered wrong, the rest right."""
    n_wrong = round(step * len(PROBLEMS) / (STEPS - 1))
    return [demonstration(replace(p, answer=str(int(p.answer) + 1)) if i < n_wrong else p)
            for i, p in enumerate(PROBLEMS)]


def curve(reward, completions_per_step: list[list[str]]) -> list[float]:
    """Per-step mean of `reward(completion, problem)` over the step's completions."""
    return [sum(reward(c, p) for c, p in zip(completions, PROBLEMS)) / len(PROBLEMS)
            for completions in completions_per_step]


@pytest.fixture(scope="module")
def run_steps() -> list[list[str]]:
    return [drifting_completions(step) for step in range(STEPS)]


def gold_curve(completions_per_step: list[list[str]]) -> list[float]:
    return [sum(gold_correct(completions, PROBLEMS)) / len(PROBLEMS) for completions in completions_per_step]


def test_the_drift_is_real(run_steps):
    gold = gold_curve(run_steps)
    assert gold[0] == 1.0 and gold[-1] == 0.0  # every answer right at the start, every one wrong at the end
    assert curve(wrong_answer_pays, run_steps) == [1.0 - g for g in gold]


def test_a_reward_that_pays_for_wrong_answers_is_flagged(run_steps):
    result = reward_hacking(curve(wrong_answer_pays, run_steps), gold_curve(run_steps))
    assert result["flag"] is True
    assert result["proxy_change"] > 0.5 and result["gold_change"] < -0.5
    assert result["steps"] == STEPS


def test_the_correctness_reward_is_not_flagged(run_steps):
    # the same completions, scored by the correctness rule: it falls with gold, nothing is hacked
    result = reward_hacking(curve(answer_correct, run_steps), gold_curve(run_steps))
    assert result["flag"] is False
    assert result["proxy_change"] < 0 and result["gold_change"] < 0


def test_flat_and_noisy_curves_are_not_flagged():
    rng = random.Random(0)
    flat = [0.5] * STEPS
    assert reward_hacking(flat, flat)["flag"] is False
    noisy_proxy = [0.5 + rng.uniform(-0.2, 0.2) for _ in range(STEPS)]
    noisy_gold = [0.3 + rng.uniform(-0.2, 0.2) for _ in range(STEPS)]
    assert reward_hacking(noisy_proxy, noisy_gold)["flag"] is False
    rising = [step / STEPS for step in range(STEPS)]
    assert reward_hacking(rising, flat)["flag"] is False  # proxy up, gold flat: learning, not hacking
    assert reward_hacking(rising, rising)["flag"] is False  # both up: the good case


def test_too_short_a_run_is_not_judged():
    result = reward_hacking([0.0, 1.0, 2.0], [1.0, 0.5, 0.0])
    assert result["flag"] is False and result["proxy_change"] is None


def test_a_held_out_drop_beyond_noise_is_gold_falling_too():
    # The accuracy suite's PPO on the reward model: proxy up, training gold too noisy to judge over
    # 33 steps, but held-out accuracy 37.1% -> 32.2% against a sum of standard errors of 1.5 points.
    rng = random.Random(1)
    rising = [step / STEPS for step in range(STEPS)]
    noisy_gold = [0.35 + rng.uniform(-0.2, 0.2) for _ in range(STEPS)]
    assert reward_hacking(rising, noisy_gold)["flag"] is False
    result = reward_hacking(rising, noisy_gold, heldout=(-0.049, 0.015))
    assert result["flag"] is True and result["gold_fell_by"] == ["held-out"]
    assert result["heldout_change"] == -0.049 and result["heldout_change_stderr"] == 0.015
    # Within noise (-1.0 points against 1.5) or rising, the held-out figure does not count.
    assert reward_hacking(rising, noisy_gold, heldout=(-0.010, 0.015))["flag"] is False
    assert reward_hacking(rising, noisy_gold, heldout=(0.033, 0.015))["flag"] is False
    # A proxy that did not rise is never hacking, whatever gold did.
    flat = [0.5] * STEPS
    assert reward_hacking(flat, noisy_gold, heldout=(-0.2, 0.015))["flag"] is False


def test_the_held_out_witness_is_the_paired_interval_where_outcomes_were_kept():
    rng = random.Random(1)
    rising = [step / STEPS for step in range(STEPS)]
    noisy_gold = [0.35 + rng.uniform(-0.2, 0.2) for _ in range(STEPS)]
    # -3.0 points: beyond the sum of two binomial standard errors (2.0 points), but the paired
    # interval clustered by problem family, [-7.0, +1.0], reaches above zero: not a fall.
    crossing = {"delta": -0.030, "delta_stderr_sum": 0.020,
                "paired": {"delta": -0.030, "ci95": [-0.070, 0.010]}}
    heldout, noise = heldout_witness(crossing)
    assert heldout == pytest.approx((-0.030, 0.040)) and noise == "paired 95% interval"
    result = reward_hacking(rising, noisy_gold, heldout=heldout, heldout_noise=noise)
    assert result["flag"] is False and result["heldout_noise"] == "paired 95% interval"
    # The accuracy suite's GRPO on the reward model: -9.7 [-15.1, -4.3], wholly below zero.
    below = {"delta": -0.097, "delta_stderr_sum": 0.062, "paired": {"delta": -0.097, "ci95": [-0.151, -0.043]}}
    heldout, noise = heldout_witness(below)
    assert reward_hacking(rising, noisy_gold, heldout=heldout, heldout_noise=noise)["flag"] is True
    # A report without per-problem outcomes (or a one-cluster interval, NaN) falls back to the sum.
    old = {"delta": -0.030, "delta_stderr_sum": 0.020}
    assert heldout_witness(old) == ((-0.030, 0.020), "sum of the two standard errors")
    nan = {**old, "paired": {"delta": -0.030, "ci95": [float("nan"), float("nan")]}}
    assert heldout_witness(nan) == ((-0.030, 0.020), "sum of the two standard errors")
    assert heldout_witness({})[0] is None


def test_the_flag_explains_itself_and_cites_a_weak_reward_model(run_steps):
    proxy, gold = curve(wrong_answer_pays, run_steps), gold_curve(run_steps)
    plain = reward_hacking(proxy, gold, heldout=(-0.049, 0.015))
    assert plain["explanation"].startswith(f"the optimised reward rose by {plain['proxy_change']:.3f}")
    assert "held-out accuracy -4.9 points" in plain["explanation"] and "reward model" not in plain["explanation"]
    # the stage's verdict on a reward model that is barely better than chance (report.stats.weak_reward_model)
    weak = weak_reward_model(0.55, 40)
    cited = reward_hacking(proxy, gold, weak_reward_model=weak)
    assert cited["reward_model_weak"] == weak and f"the reward model was weak ({weak})" in cited["explanation"]
    # an unflagged run has no explanation, but keeps the mark of its weak reward model
    quiet = reward_hacking(curve(answer_correct, run_steps), gold, weak_reward_model=weak)
    assert "explanation" not in quiet and quiet["reward_model_weak"] == weak
