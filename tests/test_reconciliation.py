"""The memory reconciliation adds up: baseline + static + the peak phase's transient + other = process
peak, with other >= 0, and gradients and optimizer state created in a phase counted once (static)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from rlbench.catalog import resolve_probe
from rlbench.config import load_suite
from rlbench.measure.phases import PhaseStats
from rlbench.measure.summary import summarize_run
from rlbench.models.embedded import build_embedded, save_pretrained_pair
from rlbench.train import Run

SUITE = """
name: recon
model: {name: embedded, sft: {steps: 0}}
task: {name: synthetic, max_steps: 1, train_size: 200}
algorithms:
  - name: ALGORITHM
    reward: rules
    params: {lr: 1.0e-3}
budget: {steps: 2}
rollout: {completions_per_step: 8, group_size: 4, max_new_tokens: 12}
probe: cpu
"""
MIB = 2**20


def test_a_phase_transient_is_net_of_the_static_state_it_created() -> None:
    stats = PhaseStats()
    memory = {"cpu": SimpleNamespace(start_bytes=100 * MIB, peak_bytes=180 * MIB, note="")}
    # First update: 80 MiB above its start, of which 30 MiB are gradients and AdamW state it left behind.
    stats.add("update", 1.0, memory, static_created=30 * MIB, static_end=70 * MIB)
    assert stats.rise_bytes["cpu"]["update"] == 50 * MIB
    assert stats.peak_call["cpu"]["update"] == {"peak_bytes": 180 * MIB, "rise_bytes": 50 * MIB,
                                                "static_bytes": 70 * MIB}
    # A later, lower call keeps the peak call; a transient never goes below 0.
    low = {"cpu": SimpleNamespace(start_bytes=130 * MIB, peak_bytes=150 * MIB, note="")}
    stats.add("update", 1.0, low, static_created=40 * MIB, static_end=70 * MIB)
    assert stats.rise_bytes["cpu"]["update"] == 50 * MIB
    assert stats.peak_call["cpu"]["update"]["peak_bytes"] == 180 * MIB


@pytest.mark.parametrize("algorithm", ["grpo_zero", "ppo"])
def test_reconciliation_adds_up_with_other_not_negative(tmp_path, algorithm: str) -> None:
    (tmp_path / "suite.yaml").write_text(SUITE.replace("ALGORITHM", algorithm))
    suite = load_suite(tmp_path / "suite.yaml")
    model, tokenizer = build_embedded(seed=0)
    policy_dir = save_pretrained_pair(model, tokenizer, tmp_path / "policy")
    probe = resolve_probe("cpu", 10.0, "fast")
    baseline = probe.snapshot()
    run = Run.build(suite, suite.algorithms[0], 0, policy_dir, None, probe)
    for _ in range(2):
        run.step()
    summary = summarize_run(run, probe, {"baseline_bytes": baseline})
    recon = summary["memory"]["reconciliation"]["cpu"]
    roles = summary["roles"]
    assert recon["baseline_bytes"] + recon["static_bytes"] + recon["peak_phase_transient_bytes"] \
        + recon["other_bytes"] == recon["process_peak_bytes"]
    assert recon["other_bytes"] >= 0
    # After two steps the static bytes at the peak are the roles' static bytes in the table, gradients
    # and AdamW state of every trained role included, once.
    assert recon["static_bytes"] == sum(r["static"]["total"] for r in roles.values())
    trained = ["policy", "value"] if algorithm == "ppo" else ["policy"]
    for role in trained:
        assert roles[role]["static"]["gradients"] > 0 and roles[role]["static"]["optimizer"] > 0
