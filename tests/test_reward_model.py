"""The reward model stage: Bradley-Terry by hand, pairs, training, caching, saving and loading.

The end-to-end stage runs on a freshly initialised embedded model (no SFT) on the easiest
synthetic problems (one step, operands up to 2): its answers are right by chance often enough to
give a few dozen correct/incorrect pairs in a few seconds.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from rlbench.algorithms.losses import bradley_terry_loss
from rlbench.catalog import load_problems
from rlbench.config import ModelConfig, RewardModelConfig, RolloutConfig, Suite, TaskConfig
from rlbench.errors import UserError
from rlbench.models.embedded import build_embedded, save_pretrained_pair
from rlbench.models.heads import ScalarHeadModel
from rlbench.rewards import answer_correct
from rlbench.stages.reward_model import (
    PROMPT_SEED,
    LabelledSample,
    comparison_pairs,
    pair_scores,
    pairwise_accuracy,
    prepare_reward_model,
    score_samples,
    split_by_prompt,
    train_reward_model,
)
from rlbench.tasks import demonstration, encode_prompts

EASY_TASK = TaskConfig(min_steps=1, max_steps=1, max_number=2, train_size=500)
TINY_RM = RewardModelConfig(prompts=48, samples_per_prompt=4, steps=6, batch_size=4, lr=1e-3, heldout_fraction=0.25)


def tiny_suite(rm: RewardModelConfig = TINY_RM) -> Suite:
    return Suite(model=ModelConfig(reward_model=rm), task=EASY_TASK, rollout=RolloutConfig(max_new_tokens=24))


# ---- Bradley-Terry, by hand ---------------------------------------------------------------------


def test_bradley_terry_equal_scores_is_log_2():
    # -log sigmoid(0) = -log 0.5 = log 2 = 0.69315, whatever the common score
    loss = bradley_terry_loss(torch.tensor([0.0, 3.0]), torch.tensor([0.0, 3.0]))
    assert_close(loss, torch.tensor(math.log(2)))


def test_bradley_terry_margin_of_two():
    # r_c - r_r = 2: -log sigmoid(2) = log(1 + e^-2) = log(1.13534) = 0.12693
    assert_close(bradley_terry_loss(torch.tensor([2.5]), torch.tensor([0.5])), torch.tensor(math.log1p(math.exp(-2))))
    # the wrong way round, -2: log(1 + e^2) = 2.12693; the mean of the two pairs is 1.12693
    assert_close(bradley_terry_loss(torch.tensor([2.5, 0.5]), torch.tensor([0.5, 2.5])),
                 torch.tensor((math.log1p(math.exp(-2)) + math.log1p(math.exp(2))) / 2))


# ---- pairs and the split --------------------------------------------------------------------------


def labelled(problem: int, correct: bool) -> LabelledSample:
    return LabelledSample(problem, [1], [2], "", correct)


def test_pairs_are_every_correct_incorrect_combination_of_one_prompt():
    samples = [labelled(0, True), labelled(0, False), labelled(0, True), labelled(0, False),  # 2 x 2 = 4 pairs
               labelled(1, True), labelled(1, True),  # all right: none
               labelled(2, False), labelled(2, True), labelled(2, False)]  # 1 x 2 = 2 pairs
    assert sorted(comparison_pairs(samples)) == [(0, 1), (0, 3), (2, 1), (2, 3), (7, 6), (7, 8)]


def test_split_keeps_each_prompt_on_one_side():
    samples = [labelled(p, c) for p in range(10) for c in (True, False, False)]  # 2 pairs per prompt
    pairs = comparison_pairs(samples)
    train, heldout = split_by_prompt(pairs, samples, heldout_fraction=0.3, seed=0)
    train_prompts = {samples[c].problem for c, _ in train}
    heldout_prompts = {samples[c].problem for c, _ in heldout}
    assert len(heldout_prompts) == 3 and len(train_prompts) == 7  # round(0.3 * 10)
    assert not train_prompts & heldout_prompts
    assert sorted(train + heldout) == sorted(pairs)


def test_pairwise_accuracy_counts_ties_as_wrong():
    scores = torch.tensor([1.0, 0.0, 0.0, 2.0])
    # (0 > 1) yes, (0 > 2) yes, (1 > 2) tie: no, (3 > 0) yes -> 3 / 4
    assert pairwise_accuracy(scores, [(0, 1), (0, 2), (1, 2), (3, 0)]) == 0.75


# ---- training lowers the loss (labelled demonstrations) -------------------------------------------


def test_training_lowers_the_bradley_terry_loss():
    torch.manual_seed(0)
    model, tokenizer = build_embedded(0)
    problems = load_problems(EASY_TASK, "train", 8, seed=0)
    prompts = encode_prompts(tokenizer, problems)
    samples = []
    for i, (problem, prompt) in enumerate(zip(problems, prompts)):
        wrong = replace(problem, answer=str(int(problem.answer) + 1))  # the same reasoning, a wrong answer
        for text, correct in ((demonstration(problem), True), (demonstration(wrong), False)):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            samples.append(LabelledSample(i, prompt, ids, text, correct))
    pairs = comparison_pairs(samples)
    assert len(pairs) == 8
    reward_model = ScalarHeadModel(model.model, model.config.hidden_size)

    def loss_on_pairs() -> float:
        with torch.no_grad():
            return bradley_terry_loss(*pair_scores(reward_model, samples, pairs, tokenizer.pad_token_id)).item()

    before = loss_on_pairs()
    assert before == pytest.approx(math.log(2))  # a zero head scores everything 0
    losses = train_reward_model(reward_model, samples, pairs, replace(TINY_RM, steps=10, batch_size=8),
                                tokenizer.pad_token_id, seed=0)
    assert len(losses) == 10
    after = loss_on_pairs()
    assert after < before - 0.1, (before, after)


# ---- the whole stage, sampled from the model ------------------------------------------------------


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    """Run the stage twice in a fresh cache: (policy_dir, first result, second result, progress calls)."""
    root = tmp_path_factory.mktemp("rm")
    model, tokenizer = build_embedded(0)
    policy_dir = save_pretrained_pair(model, tokenizer, root / "policy")
    calls: list[tuple[int, int, str]] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RLBENCH_CACHE", str(root / "cache"))
        first = prepare_reward_model(policy_dir, tiny_suite(), lambda *call: calls.append(call))
        second = prepare_reward_model(policy_dir, tiny_suite(), lambda *call: calls.append(("again",)))
    return policy_dir, first, second, calls


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_stage_pairs_are_one_correct_and_one_incorrect_of_the_same_prompt(stage):
    _, (path, stats, hit), _, _ = stage
    assert not hit
    problems = {p.id: p for p in load_problems(EASY_TASK, "train", TINY_RM.prompts, PROMPT_SEED)}
    samples = read_jsonl(path / "samples.jsonl")
    pairs = read_jsonl(path / "pairs.jsonl")
    assert len(samples) == TINY_RM.prompts * TINY_RM.samples_per_prompt
    assert len(pairs) == stats["reward_model/pairs"] >= 20
    assert stats["reward_model/train_pairs"] + stats["reward_model/heldout_pairs"] == len(pairs)
    for pair in pairs:
        chosen, rejected = samples[pair["chosen"]], samples[pair["rejected"]]
        assert chosen["problem_id"] == rejected["problem_id"]
        problem = problems[chosen["problem_id"]]
        assert answer_correct(chosen["text"], problem) == 1.0
        assert answer_correct(rejected["text"], problem) == 0.0
    sides = {split: {samples[p["chosen"]]["problem_id"] for p in pairs if p["split"] == split}
             for split in ("train", "heldout")}
    assert sides["train"] and sides["heldout"] and not sides["train"] & sides["heldout"]
    for key in ("reward_model/heldout_accuracy", "reward_model/train_accuracy"):
        assert 0.0 <= stats[key] <= 1.0
    assert stats["reward_model/seconds"] >= stats["reward_model/sample_seconds"] > 0


def test_untrained_stage_is_flagged_weak(stage):
    # a freshly initialised model trained 6 steps on a few dozen pairs: its held-out pairwise accuracy
    # is near chance on a handful of pairs, and the run warns of it (stages.prepare.reward_model_warning)
    from rlbench.report.stats import weak_reward_model
    from rlbench.stages.prepare import reward_model_warning

    _, (_, stats, _), _, _ = stage
    reason = reward_model_warning(stats)
    accuracy, pairs = stats["reward_model/heldout_accuracy"], stats["reward_model/heldout_pairs"]
    assert reason == weak_reward_model(accuracy, pairs)
    assert reason is not None and f"{accuracy:.3f} on {pairs} pairs" in reason
    assert reward_model_warning({}) is None  # a loaded model without held-out figures: no verdict


def test_stage_reports_progress_then_hits_the_cache(stage):
    _, (path, stats, _), (path_again, stats_again, hit_again), calls = stage
    assert calls[0][2] == "sampling completions"
    training = [c for c in calls if c[2].startswith("loss")]
    assert [c[:2] for c in training] == [(s, TINY_RM.steps) for s in range(1, TINY_RM.steps + 1)]
    assert ("again",) not in calls  # nothing was rebuilt
    assert hit_again and path_again == path and stats_again == stats


def test_saved_reward_model_loads_back_with_identical_scores(stage):
    policy_dir, (path, stats, _), _, _ = stage
    saved = read_jsonl(path / "samples.jsonl")
    problems = load_problems(EASY_TASK, "train", TINY_RM.prompts, PROMPT_SEED)
    index = {p.id: i for i, p in enumerate(problems)}
    model, tokenizer = build_embedded(0)
    prompts = encode_prompts(tokenizer, problems)
    samples = [LabelledSample(index[s["problem_id"]], prompts[index[s["problem_id"]]], s["completion_ids"], s["text"],
                              s["correct"]) for s in saved]
    loaded = ScalarHeadModel.from_pretrained(path)
    scores = score_samples(loaded, samples, tokenizer.pad_token_id)
    assert_close(scores, torch.tensor([s["score"] for s in saved]), rtol=0, atol=1e-5)
    assert scores.std() > 0  # the head was trained: not the zero head's constant score
    heldout = [(p["chosen"], p["rejected"]) for p in read_jsonl(path / "pairs.jsonl") if p["split"] == "heldout"]
    assert pairwise_accuracy(scores, heldout) == pytest.approx(stats["reward_model/heldout_accuracy"])

    # the same directory given as model.reward_model.path: loaded as it is, with its stats
    given = tiny_suite(replace(TINY_RM, path=str(path)))
    assert prepare_reward_model(policy_dir, given, None) == (path, stats, True)


def test_bad_reward_model_path_is_a_user_error(stage, tmp_path):
    policy_dir = stage[0]
    with pytest.raises(UserError, match="model.reward_model.path: .* is not a directory"):
        prepare_reward_model(policy_dir, tiny_suite(replace(TINY_RM, path=str(tmp_path / "absent"))), None)
    with pytest.raises(UserError, match="is not a saved reward model"):
        prepare_reward_model(policy_dir, tiny_suite(replace(TINY_RM, path=str(policy_dir))), None)  # no head


def test_too_few_pairs_is_a_user_error(stage, monkeypatch, tmp_path):
    monkeypatch.setenv("RLBENCH_CACHE", str(tmp_path))
    few = replace(TINY_RM, prompts=4, samples_per_prompt=2)  # at most 4 pairs
    with pytest.raises(UserError, match=r"model.reward_model: only \d+ comparison pairs from 4 prompts x 2 samples"):
        prepare_reward_model(stage[0], tiny_suite(few), None)
    assert not list((tmp_path / "reward_model").glob("*/DONE"))  # nothing cached
