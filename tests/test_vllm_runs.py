"""`rlbench run` with `rollout.engine: vllm` on vLLM's CPU build: 2-step GRPO-Zero and PPO runs on the
embedded model and at a 2-layer Qwen2 shape (the real 151,936-token vocabulary), each report showing
the rollout engine's memory as its own role with a reconciliation that adds up.

Run by `make test-vllm` (marked `vllm`; skipped with the reason where vLLM cannot run). The
embedded suite runs vLLM in its own layout (engine core and worker in child processes, measured by
the cpu probe as the process tree); the shape suite runs it inline (one interpreter less to start
per run, weights by reference), which keeps `make test-vllm` within its time on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rlbench.report.schema import schema_errors
from tests.vllm_support import VLLM, write_qwen2_config

pytestmark = VLLM

SUITE = """
name: NAME
model: {name: MODEL, sft: {steps: 0}, max_prompt_tokens: 64}
task: {name: synthetic, max_steps: 1, max_number: 20, train_size: 200}
algorithms:
  - {name: grpo_zero, params: {lr: 1.0e-4, beta: 0.04}}
  - {name: ppo, reward: rules}
budget: {steps: 2}
rollout: {engine: vllm, completions_per_step: ROWS, group_size: 4, max_new_tokens: TOKENS, vllm_inline: INLINE}
eval: {size: 8, batch_size: 8}
seeds: [0]
probe: cpu
"""


def _run(tmp_path_factory, name: str, model: str, inline: bool, rows: int, tokens: int) -> dict:
    out = tmp_path_factory.mktemp(name)
    if model == "qwen2-2layer":
        model = "shape:" + str(write_qwen2_config(out / "qwen2-2layer"))
    suite = out / "suite.yaml"
    suite.write_text(SUITE.replace("NAME", name).replace("MODEL", model).replace("INLINE", str(inline).lower())
                     .replace("ROWS", str(rows)).replace("TOKENS", str(tokens)))
    env = dict(os.environ, RLBENCH_CACHE=str(out / "cache"))
    proc = subprocess.run([sys.executable, "-m", "rlbench", "run", str(suite), "--output", str(out / "results")],
                          capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [path] = list((out / "results" / name).glob("*/report.json"))
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def embedded_report(tmp_path_factory):
    return _run(tmp_path_factory, "vllm-embedded", "embedded", inline=False, rows=8, tokens=12)


@pytest.fixture(scope="module")
def shape_report(tmp_path_factory):
    # One group of 4 completions (GRPO-Zero), 4 prompts (PPO), 8 tokens: every role's forward and the
    # update go through the 151,936-wide LM head, the cost of a step at this shape.
    return _run(tmp_path_factory, "vllm-qwen2", "qwen2-2layer", inline=True, rows=4, tokens=8)


def _check_runs(report: dict, processes: str) -> None:
    assert schema_errors(report) == []
    assert [run["id"] for run in report["runs"]] == ["grpo_zero/seed0", "ppo/seed0"]
    for run in report["runs"]:
        assert run["status"] == "ok", run.get("error")
        assert run["budget"]["steps"] == 2
        rollout = run["roles"]["rollout"]
        engine = rollout["engine"]
        assert engine["device"] == "cpu" and engine["processes"] == processes
        assert engine["weight_sync"] == ("collective_rpc:file" if processes == "child" else "collective_rpc:inline")
        assert engine["weight_version"] == 2  # one sync after each of the 2 updates
        assert run["budget"]["tokens_generated"] > 0
        static = rollout["static"]
        assert static["weights"] > 0 and static["kv_cache"] > 0
        assert static["total"] == static["weights"] + static["kv_cache"]
        assert "sync_weights" in rollout["phases"] and "generate" in rollout["phases"]
        assert "generate" not in run["roles"]["policy"]["phases"]  # the engine generates, not the policy module
        recon = run["memory"]["reconciliation"]["cpu"]
        parts = recon["baseline_bytes"] + recon["static_bytes"] + recon["peak_phase_transient_bytes"] \
            + recon.get("engine_workspace_bytes", 0) + recon["other_bytes"]
        assert parts == recon["process_peak_bytes"] and recon["other_bytes"] >= 0
        if processes == "child":
            # vLLM's engine core and worker: their resident memory holds the weight copy and the KV cache.
            assert recon["engine_processes_bytes"] >= static["total"] and recon["engine_workspace_bytes"] >= 0
            assert rollout["resident_bytes"]["cpu"] >= static["total"]
            names = run["memory"]["engine_processes"]["cpu"]["resident_bytes"]
            assert any("EngineCore" in n for n in names) and any("Worker" in n for n in names), names


def test_embedded_grpo_zero_and_ppo_runs_with_vllm_in_child_processes(embedded_report):
    _check_runs(embedded_report, "child")
    for run in embedded_report["runs"]:
        assert "after" in run["accuracy"]  # evaluated through the engine


def test_qwen2_shape_grpo_zero_and_ppo_runs_with_vllm_inline(shape_report):
    _check_runs(shape_report, "inline")
    for run in shape_report["runs"]:
        rollout = run["roles"]["rollout"]["static"]
        # 2-layer Qwen2, float32 (the suite's model.dtype; the engine's dtype follows it): embedding 151,936 x 896 (tied) + per layer q 896x896 + 896, k and v
        # 128x896 + 128 each, o 896x896, MLP 3 x 896 x 4,864, two norms 2 x 896; final norm 896.
        per_layer = 896 * 896 + 896 + 2 * (128 * 896 + 128) + 896 * 896 + 3 * 896 * 4864 + 2 * 896
        assert rollout["weights"] == 4 * (151936 * 896 + 2 * per_layer + 896)
        assert run["roles"]["rollout"]["engine"]["dtype"] == "float32"
