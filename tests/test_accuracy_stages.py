"""The accuracy suite's pieces on tiny real objects: the fixed demonstration set, its dev split and
fresh demonstrations; SFT's early stop on dev accuracy; simulated reward models; the verifier;
strict and flexible scoring; the seen / unseen split of the paired change."""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rlbench.algorithms.losses import verifier_loss
from rlbench.algorithms.params import SFTMoreParams
from rlbench.algorithms.sft_more import SFTMore, SFTNewData
from rlbench.catalog import problem_clusters
from rlbench.config import SFTConfig, TaskConfig, load_suite
from rlbench.measure.evaluation import chain_split
from rlbench.models.embedded import build_embedded
from rlbench.rewards import noisy_rewards, simulated_pairwise_accuracy
from rlbench.stages.demonstrations import demonstration_problems, dev_problems, fresh_problems, seen_chains
from rlbench.stages.sft import train_sft
from rlbench.stages.verifier import classification_accuracy, roc_auc
from rlbench.tasks.answers import SCORERS
from rlbench.train.run import Run
from rlbench.worker import seen_by_problem

REPO = Path(__file__).resolve().parents[1]
TASK = TaskConfig(max_number=12, train_size=3000)


def test_demonstrations_dev_and_fresh_problems_are_disjoint_where_they_must_be():
    sft = SFTConfig(demonstrations=200)
    demos = demonstration_problems(TASK, sft)
    assert demonstration_problems(TASK, SFTConfig()) is None
    assert [p.id for p in demos] == [p.id for p in demonstration_problems(TASK, replace(sft, demonstrations=300))[:200]]
    dev = dev_problems(TASK, demos, 64)
    demo_chains = set(problem_clusters(TASK, demos)[0])
    assert len(dev) == 64 and not demo_chains & set(problem_clusters(TASK, dev)[0])
    fresh = fresh_problems(TASK, demos, seed=0)
    assert not {p.id for p in demos} & {p.id for p in fresh} and len(fresh) == TASK.train_size - 200
    assert seen_chains(TASK, demos, demos[:3] + dev[:2]) == [True, True, True, False, False]


def test_a_dev_split_larger_than_the_unseen_chains_names_the_field():
    demos = demonstration_problems(TaskConfig(max_number=3, max_steps=1, train_size=40), SFTConfig(demonstrations=20))
    from rlbench.errors import UserError

    with pytest.raises(UserError, match="model.sft.dev_size: only"):
        dev_problems(TaskConfig(max_number=3, max_steps=1, train_size=40), demos, 30)


def _tiny_sft(dev_scores: list[float], **settings) -> tuple[dict, torch.nn.Module, dict[int, dict]]:
    """SFT of the embedded model on 8 demonstrations (batch 4: 2 steps an epoch), the dev score
    scripted; returns the stats, the model and its weights at each evaluated step."""
    model, tokenizer = build_embedded(seed=0)
    demos = demonstration_problems(TASK, SFTConfig(demonstrations=8))
    cfg = SFTConfig(demonstrations=8, batch_size=4, warmup_steps=1, eval_every=1, **settings)
    seen: dict[int, dict] = {}

    def dev_score(m: torch.nn.Module) -> float:
        seen[len(seen) + 1] = copy.deepcopy(m.state_dict())
        return dev_scores[len(seen) - 1]

    return train_sft(model, tokenizer, demos, cfg, seed=0, dev_score=dev_score), model, seen


def test_sft_stops_after_patience_evaluations_without_a_new_best_and_keeps_the_best():
    # max_epochs 3 x 8 demonstrations / 4 per step: a 6-step horizon. Dev: 0.1, 0.3 (best), 0.2, 0.25:
    # two evaluations without a new best after step 2 -> patience 2 stops at step 4, step 2 kept.
    stats, model, seen = _tiny_sft([0.1, 0.3, 0.2, 0.25, 0.9, 0.9], max_epochs=3, patience=2, min_steps=0)
    assert (stats["sft/best_step"], stats["sft/stopped_step"], stats["sft/stopped_by"]) == (2, 4, "patience")
    assert stats["sft/horizon_steps"] == 6 and stats["sft/best_dev_accuracy"] == 0.3
    assert [p["step"] for p in stats["sft/curve"]] == [1, 2, 3, 4] and stats["sft/curve"][1]["epoch"] == 1.0
    kept = model.state_dict()
    assert all(torch.equal(kept[k], seen[2][k]) for k in kept)
    assert not all(torch.equal(kept[k], seen[4][k]) for k in kept)  # the model trained on after step 2


def test_nothing_before_min_steps_is_kept_and_the_horizon_ends_a_run_that_keeps_improving():
    # min_steps 5: steps 1-4 only draw the curve (0.3 at step 2 is never kept); step 5 (0.2) is the first
    # candidate, step 6 (0.2) no better: one evaluation without a new best, then the horizon ends.
    stats, _, _ = _tiny_sft([0.1, 0.3, 0.2, 0.25, 0.2, 0.2], max_epochs=3, patience=2, min_steps=5)
    assert (stats["sft/best_step"], stats["sft/stopped_step"], stats["sft/stopped_by"]) == (5, 6, "horizon")
    assert len(stats["sft/curve"]) == 6
    stats, _, _ = _tiny_sft([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], max_epochs=3, patience=2, min_steps=0)
    assert (stats["sft/best_step"], stats["sft/stopped_step"], stats["sft/stopped_by"]) == (6, 6, "horizon")


def test_simulated_reward_model_noise_is_fixed_per_text_and_has_the_stated_pairwise_accuracy():
    suite_problem = demonstration_problems(TASK, SFTConfig(demonstrations=2))
    p, q = suite_problem
    texts = ["a", "b", "a"]
    noisy = noisy_rewards([1.0, 0.0, 1.0], texts, [p, p, p], sd=0.84, seed=3)
    assert noisy[0] == noisy[2] != noisy[1]  # one text, one score (as a trained scorer gives)
    assert noisy_rewards([1.0, 0.0, 1.0], texts, [p, p, p], sd=0.84, seed=3) == noisy
    assert noisy_rewards([1.0], ["a"], [q], sd=0.84, seed=3) != noisy[:1]  # another problem, another draw
    assert noisy_rewards([1.0, 0.0], ["a", "b"], [p, p], sd=0.0, seed=3) == [1.0, 0.0]
    # Phi(1 / (0.84 * sqrt 2)) = Phi(0.842) = 0.800; sd 0.55 -> Phi(1.286) = 0.901; 1.72 -> Phi(0.411) = 0.660
    assert simulated_pairwise_accuracy(0.84) == pytest.approx(0.800, abs=5e-4)
    assert simulated_pairwise_accuracy(0.55) == pytest.approx(0.901, abs=5e-4)
    assert simulated_pairwise_accuracy(1.72) == pytest.approx(0.660, abs=5e-4)
    n = 4000  # measured over n (right, wrong) pairs: binomial standard error sqrt(0.8 * 0.2 / n) = 0.0063
    right = noisy_rewards([1.0] * n, [f"r{i}" for i in range(n)], [p] * n, sd=0.84, seed=0)
    wrong = noisy_rewards([0.0] * n, [f"w{i}" for i in range(n)], [p] * n, sd=0.84, seed=0)
    measured = sum(r > w for r, w in zip(right, wrong)) / n
    assert abs(measured - 0.800) < 4 * math.sqrt(0.8 * 0.2 / n)


def test_verifier_loss_auc_and_classification_by_hand():
    # BCE: logit 0 with label 1 -> log 2 = 0.6931; logit 2 with label 0 -> log(1 + e^2) = 2.1269; mean 1.4100
    loss = verifier_loss(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0]))
    assert float(loss) == pytest.approx((math.log(2) + math.log(1 + math.e ** 2)) / 2, rel=1e-6)
    # right scores 3, 1; wrong 2, 1: pairs (3>2) 1, (3>1) 1, (1<2) 0, (1=1) 0.5 -> AUC 2.5 / 4
    assert roc_auc([3.0, 1.0, 2.0, 1.0], [True, True, False, False]) == 0.625
    assert math.isnan(roc_auc([1.0], [True]))
    assert classification_accuracy([1.0, -1.0, 0.5], [True, True, False]) == pytest.approx(1 / 3)


def test_strict_reads_the_answer_tag_flexible_the_last_number():
    text = "<reasoning>\n3+4=7\n</reasoning>\n<answer>\n7\n</answer>\nso 8"
    assert (SCORERS["strict"](text), SCORERS["flexible"](text), SCORERS["pipeline"](text)) == ("7", "8", "7")
    untagged = "3+4=7 so the total is 7"
    assert (SCORERS["strict"](untagged), SCORERS["flexible"](untagged)) == (None, "7")


def test_chain_split_pairs_the_seen_and_unseen_problems_apart():
    suite = load_suite(REPO / "suites" / "accuracy-small.yaml")
    demos = demonstration_problems(suite.task, suite.model.sft)
    problems = demos[:2] + dev_problems(suite.task, demos, 3)  # 2 seen chains, 3 unseen
    clusters = problem_clusters(suite.task, problems)[0]
    seen = seen_by_problem(suite, problems)
    assert seen == [True, True, False, False, False]
    split = chain_split(seen, "10000", "01110", clusters, "arithmetic chain")
    # seen: before 1,0 after 0,1 -> delta 0; unseen: before 0,0,0 after 1,1,0 -> +2/3
    assert split["seen"]["problems"] == 2 and split["seen"]["delta"] == 0.0
    assert split["unseen"]["problems"] == 3 and split["unseen"]["delta"] == pytest.approx(2 / 3)
    no_demos = replace(suite, model=replace(suite.model, sft=replace(suite.model.sft, demonstrations=None)))
    assert seen_by_problem(no_demos, problems) is None
    assert chain_split(None, "10000", "01110", clusters, "arithmetic chain") is None


def test_sft_more_trains_on_the_same_demonstrations_and_sft_new_data_on_fresh_ones():
    suite = load_suite(REPO / "suites" / "accuracy-small.yaml")
    demos = {p.id for p in demonstration_problems(suite.task, suite.model.sft)}

    def problems(algorithm, supervised: bool = True, seed: int = 0) -> set[str]:
        run = SimpleNamespace(suite=suite, supervised=supervised, algorithm=algorithm)
        return {p.id for p in Run._training_problems(run, seed=seed)}

    assert problems(SFTMore(SFTMoreParams())) == problems(SFTMore(SFTMoreParams()), seed=1) == demos
    fresh = problems(SFTNewData(SFTMoreParams()))  # seed 0: the demonstrations' own list, less them
    assert not fresh & demos and len(fresh) == suite.task.train_size - len(demos)
    assert not problems(SFTNewData(SFTMoreParams()), seed=1) & demos
    assert len(problems(None, supervised=False)) == suite.task.train_size  # RL: the whole train split


def test_verifier_training_lowers_its_loss_and_the_stage_reports_both_accuracies(tmp_path, monkeypatch):
    from rlbench.config import ModelConfig, RewardModelConfig, RolloutConfig, Suite
    from rlbench.models.embedded import save_pretrained_pair
    from rlbench.models.heads import ScalarHeadModel
    from rlbench.stages.reward_model import LabelledSample, pack_sequences, prepare_reward_model
    from rlbench.stages.verifier import train_verifier
    from rlbench.tasks import demonstration, encode_prompts

    torch.manual_seed(0)
    model, tokenizer = build_embedded(0)
    easy = TaskConfig(min_steps=1, max_steps=1, max_number=2, train_size=500)
    problems = demonstration_problems(easy, SFTConfig(demonstrations=8))
    samples = []
    for i, (problem, prompt) in enumerate(zip(problems, encode_prompts(tokenizer, problems))):
        wrong = replace(problem, answer=str(int(problem.answer) + 1))  # the same reasoning, a wrong answer
        for text, correct in ((demonstration(problem), True), (demonstration(wrong), False)):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            samples.append(LabelledSample(i, prompt, ids, text, correct))
    verifier = ScalarHeadModel(model.model, model.config.hidden_size)
    pad = tokenizer.pad_token_id

    def loss_now() -> float:
        with torch.no_grad():
            scores = verifier.score(*pack_sequences(samples, pad))
        return float(verifier_loss(scores, torch.tensor([float(s.correct) for s in samples])))

    assert loss_now() == pytest.approx(math.log(2))  # a zero head: logit 0 for everything
    cfg = RewardModelConfig(kind="verifier", steps=10, batch_size=8, lr=1e-3)
    losses = train_verifier(verifier, samples, list(range(len(samples))), cfg, lambda rows: pack_sequences(rows, pad),
                            seed=0)
    assert len(losses) == 10 and loss_now() < math.log(2) - 0.05

    policy_dir = save_pretrained_pair(*build_embedded(0), tmp_path / "policy")
    monkeypatch.setenv("RLBENCH_CACHE", str(tmp_path / "cache"))
    rm = RewardModelConfig(kind="verifier", prompts=48, samples_per_prompt=4, steps=2, batch_size=8, lr=1e-3,
                           heldout_fraction=0.25)
    _, stats, _ = prepare_reward_model(policy_dir, Suite(model=ModelConfig(reward_model=rm), task=easy,
                                                         rollout=RolloutConfig(max_new_tokens=24)))
    assert stats["reward_model/kind"] == "verifier"
    for key in ("reward_model/heldout_accuracy", "reward_model/heldout_auc",
                "reward_model/heldout_classification_accuracy"):
        assert 0.0 <= stats[key] <= 1.0, key
