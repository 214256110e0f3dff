"""sft_more, the control arm: supervised steps on gold demonstrations through the shared loop,
FLOPs counted against the same budget, reported like an RL run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import torch

from rlbench.config import load_suite
from rlbench.measure.probing import NullProbe
from rlbench.models.embedded import build_embedded, save_pretrained_pair
from rlbench.report.schema import schema_errors
from rlbench.tasks import demonstration
from rlbench.train import Run
from tests.test_budget_flops import POLICY_HEAD, POLICY_N, by_hand

SUITE = """
name: sftmore
model: {name: embedded, sft: {steps: 3, batch_size: 16, train_size: 500}}
task: {name: synthetic, max_steps: 1, max_number: 20, train_size: 500}
algorithms:
  - {name: sft_more, params: {lr: 1.0e-3, passes: 2, num_minibatches: 2}}
budget: {BUDGET}
rollout: {completions_per_step: 8, group_size: 4, max_new_tokens: 16}
eval: {size: 16, batch_size: 16}
seeds: [0]
probe: cpu
threads: 1
"""


def test_steps_train_on_demonstrations_and_count_trained_flops(tmp_path):
    (tmp_path / "suite.yaml").write_text(SUITE.replace("{BUDGET}", "{steps: 3}"))
    suite = load_suite(tmp_path / "suite.yaml")
    model, tokenizer = build_embedded(seed=0)
    policy_dir = save_pretrained_pair(model, tokenizer, tmp_path / "policy")
    run = Run.build(suite, suite.algorithms[0], 0, policy_dir, None, NullProbe())
    assert run.roles == ("policy",) and run.group_size == 1 and run.prompts_per_step == 8
    assert run.logprob_temperature == 1.0
    generated = []
    run.engine.generate = lambda *a, **k: generated.append(a)  # a supervised step generates nothing
    problems = [run.train_problems[i] for i in run.order[:8]]
    steps = [run.step() for _ in range(3)]

    assert generated == [] and "time/generate_s" not in steps[0]
    assert run.budget.completions == 24 and run.budget.prompts == 24  # one sequence per problem
    # The first step's batch is the first 8 problems' demonstrations: prompt + demonstration + EOS tokens.
    first_tokens = sum(len(tokenizer(demonstration(p), add_special_tokens=False)["input_ids"]) + 1 for p in problems)
    assert steps[0]["learning/completion_length"] * 8 == first_tokens
    assert steps[0]["gold/accuracy"] == 1.0  # the demonstrations are correct
    # Losses fall on the demonstrations it trains on.
    assert steps[-1]["loss/sft"] < steps[0]["loss/sft"]
    # FLOPs: only the update, two trained passes of 6N + 12LdT per token.
    assert set(run.budget.flops_by_phase) == {"update"}
    assert run.budget.flops == steps[-1]["flops"] > steps[0]["flops"] > 0
    # Two demonstrations in a rollout's layout: prompts of 5 and 8 tokens (left-padded to 8),
    # completions of 7 and 22 (right-padded to 22); each row its own prompt (group 1).
    mask = torch.zeros(2, 30, dtype=torch.long)
    mask[0, 3:15], mask[1, :30] = 1, 1
    batch = SimpleNamespace(attention_mask=mask, prompt_width=8, completion_ids=torch.zeros(2, 22, dtype=torch.long))
    assert run.step_flops(batch) == {"update": 2 * by_hand(POLICY_N, POLICY_HEAD, [5, 8], [7, 22], 1, "logprobs", True)}
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in run.policy.parameters())


def test_sft_more_runs_end_to_end_under_a_flops_budget(tmp_path):
    (tmp_path / "suite.yaml").write_text(SUITE.replace("{BUDGET}", "{flops: 2.0e9}"))
    env = dict(os.environ, RLBENCH_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "rlbench", "run", str(tmp_path / "suite.yaml"), "--output",
                           str(tmp_path / "results")], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [path] = list((tmp_path / "results" / "sftmore").glob("*/report.json"))
    report = json.loads(path.read_text())
    assert schema_errors(report) == []
    [run] = report["runs"]
    assert run["status"] == "ok" and run["stopped_by"] == "flops"
    budget = run["budget"]
    assert budget["flops"] >= 2.0e9 and set(budget["flops_by_phase"]) == {"update"}
    assert budget["completions"] == 8 * budget["steps"]
    assert set(run["roles"]) == {"policy"} and "update" in run["roles"]["policy"]["phases"]
    acc = run["accuracy"]
    assert acc["before"]["eval/size"] == 16 and acc["after"]["eval/size"] == 16
    assert 0 <= acc["after"]["eval/accuracy"] <= 1
    assert run["throughput"]["throughput/mfu"] > 0
    assert "sft_more/seed0" in proc.stdout and "FLOPs" in proc.stdout
