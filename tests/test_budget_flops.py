"""budget.flops: model FLOPs counted per phase from token counts and shapes, and a run that stops on them.

The embedded model by hand (4 layers, d = 128, MLP 384, 398-token vocabulary, tied LM head):
per layer q, k, v, o 4 x 128 x 128 = 65,536, MLP 3 x 128 x 384 = 147,456, two norms 256: 213,248;
x 4 = 852,992, + final norm 128 = 853,120 (the backbone); + the LM head 398 x 128 = 50,944 gives
the policy's N = 904,064; a scalar-head model (reward, value) has the backbone + a 128 -> 1 head
with bias: N = 853,249.
"""

from __future__ import annotations

import pytest

from rlbench.config import BudgetConfig, load_suite
from rlbench.errors import UserError
from rlbench.measure.budget import Budget
from rlbench.measure.probing import NullProbe
from rlbench.models.embedded import build_embedded, save_pretrained_pair
from rlbench.train import Run

POLICY_N, SCALAR_N, LAYERS, HIDDEN = 904_064, 853_249, 4, 128
POLICY_HEAD, SCALAR_HEAD = 50_944, 129

SUITE = """
name: flops
model: {name: embedded, sft: {steps: 0}}
task: {name: synthetic, train_size: 200}
algorithms:
  - {name: ppo, reward: model, params: {ppo_epochs: 2, num_minibatches: 2}}
  - {name: grpo_zero}
budget: {BUDGET}
rollout: {completions_per_step: 8, group_size: 4, max_new_tokens: 12}
eval: {size: 8}
"""



@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    model, tokenizer = build_embedded(seed=0)
    return save_pretrained_pair(model, tokenizer, tmp_path_factory.mktemp("flops") / "policy")


def make_run(tmp_path, policy_dir, budget: str, index: int = 0) -> Run:
    path = tmp_path / f"suite-{budget}-{index}.yaml".replace(" ", "")
    path.write_text(SUITE.replace("{BUDGET}", budget))
    suite = load_suite(path)
    # A scalar head on the policy's backbone stands in for a trained reward model (shapes are what count).
    return Run.build(suite, suite.algorithms[index], 0, policy_dir, policy_dir, NullProbe())


def by_hand(n: int, head: int, prompts: list[int], completions: list[int], group: int, kind: str,
            trained: bool) -> int:
    """Position by position, as rlbench runs a pass: a token run at position i costs 2 (N - head)
    + 4Ld i, a head output 2 head. Groups of `group` rows share their first row's prompt, run once;
    a completion's last token is not run (it predicts nothing) except in a whole-sequence pass."""
    total = 0
    for start in range(0, len(prompts), group):
        p = prompts[start]
        if kind == "sequence":
            for c in completions[start:start + group]:
                total += sum(2 * n + 4 * LAYERS * HIDDEN * i for i in range(1, p + c + 1))
            continue
        total += sum(2 * (n - head) + 4 * LAYERS * HIDDEN * i for i in range(1, p + 1))
        total += 2 * head if kind == "sample" else 0  # the prompt's last position, once per group
        for c in completions[start:start + group]:
            total += sum(2 * (n - head) + 4 * LAYERS * HIDDEN * i for i in range(p + 1, p + c))
            total += 2 * head * (c - 1 if kind == "sample" else c)
    return total * (3 if trained else 1)


def test_one_step_counts_every_phase_by_hand(tmp_path, policy_dir):
    run = make_run(tmp_path, policy_dir, "{steps: 1}")
    assert {role: (s.n_params, s.head_params) for role, s in run.flop_shapes.items()} == {
        "policy": (POLICY_N, POLICY_HEAD), "reference": (POLICY_N, POLICY_HEAD), "reward": (SCALAR_N, SCALAR_HEAD),
        "value": (SCALAR_N, SCALAR_HEAD)}
    prompts, completions = [], []
    generate = run.engine.generate

    def recording(*args, **kwargs):
        rollout = generate(*args, **kwargs)
        prompts.extend(rollout.attention_mask[:, :rollout.prompt_width].sum(-1).tolist())
        completions.extend(rollout.attention_mask[:, rollout.prompt_width:].sum(-1).tolist())
        return rollout

    run.engine.generate = recording
    metrics = run.step()
    assert len(prompts) == len(completions) == 8
    lengths = (prompts, completions, 1)  # PPO: one completion per prompt
    expected = {
        "generate": by_hand(POLICY_N, POLICY_HEAD, *lengths, "sample", False),
        "score": by_hand(SCALAR_N, SCALAR_HEAD, *lengths, "sequence", False),
        "ref_logprobs": by_hand(POLICY_N, POLICY_HEAD, *lengths, "logprobs", False),
        "values": by_hand(SCALAR_N, SCALAR_HEAD, *lengths, "logprobs", False),
        "update": 2 * by_hand(POLICY_N, POLICY_HEAD, *lengths, "logprobs", True),  # ppo_epochs: 2 trained passes
        "value_update": 2 * by_hand(SCALAR_N, SCALAR_HEAD, *lengths, "logprobs", True),
    }
    assert run.budget.flops_by_phase == expected
    assert run.budget.flops == sum(expected.values()) == metrics["flops"]
    assert run.budget.consumed()["flops"] == run.budget.flops
    # MFU divides the same count (one source of truth).
    from rlbench.measure.summary import _rl_flops

    assert _rl_flops(run) == run.budget.flops


def test_a_group_shares_its_prompt_in_every_count(tmp_path, policy_dir):
    """GRPO-Zero, 2 prompts x 4 completions: generation, reference log-probs and the update run
    each prompt once per group of 4."""
    run = make_run(tmp_path, policy_dir, "{steps: 1}", index=1)
    rows = []
    generate = run.engine.generate

    def recording(*args, **kwargs):
        rollout = generate(*args, **kwargs)
        rows.append(rollout)
        return rollout

    run.engine.generate = recording
    run.step()
    mask, width = rows[0].attention_mask, rows[0].prompt_width
    lengths = (mask[:, :width].sum(-1).tolist(), mask[:, width:].sum(-1).tolist(), 4)
    assert run.budget.flops_by_phase == {
        "generate": by_hand(POLICY_N, POLICY_HEAD, *lengths, "sample", False),
        "ref_logprobs": by_hand(POLICY_N, POLICY_HEAD, *lengths, "logprobs", False),
        "update": by_hand(POLICY_N, POLICY_HEAD, *lengths, "logprobs", True),
    }


def steps_until_exhausted(run: Run) -> list[dict]:
    steps = []
    while run.budget.exhausted() is None:
        steps.append(run.step())
    return steps


def deterministic(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.startswith("time/")}


def test_a_flops_budget_stops_at_the_step_the_flops_decide(tmp_path, policy_dir):
    reference = make_run(tmp_path, policy_dir, "{steps: 3}", index=1)
    ref_steps = steps_until_exhausted(reference)
    after = [s["flops"] for s in ref_steps]
    assert after[0] < after[1] < after[2]
    # Exactly two steps' worth stops after step 2; one FLOP more needs a third step.
    for budget, expected_steps in ((after[1], 2), (after[1] - 1, 2), (after[1] + 1, 3), (after[0] + 1, 2)):
        run = make_run(tmp_path, policy_dir, f"{{flops: {budget}}}", index=1)
        steps = steps_until_exhausted(run)
        assert len(steps) == expected_steps
        assert run.budget.exhausted() == "flops"
        assert [deterministic(s) for s in steps] == [deterministic(s) for s in ref_steps[:expected_steps]]


@pytest.mark.parametrize(("text", "value"), [("2.0e12", 2.0e12), ("2e12", 2.0e12), ("1000000", 1e6)])
def test_flops_limits_accept_human_numbers(tmp_path, text, value):
    path = tmp_path / "s.yaml"
    path.write_text(SUITE.replace("{BUDGET}", f"{{flops: {text}}}"))
    assert load_suite(path).budget.flops == value


@pytest.mark.parametrize("text", ["0", "-1.0e9", "lots"])
def test_bad_flops_limits_are_refused(tmp_path, text):
    path = tmp_path / "s.yaml"
    path.write_text(SUITE.replace("{BUDGET}", f"{{flops: {text}}}"))
    with pytest.raises(UserError, match="budget.flops"):
        load_suite(path)


def test_budget_fraction_is_the_tightest_limit():
    # steps 5 of 10 = 0.5, completions 100 of 1,000 = 0.1: the run is half done (the tightest limit)
    budget = Budget(BudgetConfig(steps=10, completions=1000), steps=5, completions=100)
    assert budget.fraction() == 0.5
    # a limit passed counts as done (1.0, not 1.2); no limit set: nothing to be a fraction of
    assert Budget(BudgetConfig(tokens=100), tokens=120).fraction() == 1.0
    assert Budget(BudgetConfig()).fraction() == 0.0
    # flops 3e11 of 1e12 = 0.3 beside wall seconds 1 of 10 = 0.1
    assert Budget(BudgetConfig(flops=1e12, wall_seconds=10.0), seconds=1.0,
                  flops_by_phase={"generate": 10**11, "update": 2 * 10**11}).fraction() == pytest.approx(0.3)
