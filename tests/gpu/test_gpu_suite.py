"""The GPU path on a real NVIDIA GPU with vLLM (skipped without either).

- A three-step run of suites/gpu-memory.yaml (shrunk with --set) must report NVML figures, present
  and positive, for every role of every algorithm, vLLM's `rollout` role included.
- After a weight sync, vLLM's log-probs of a fixed completion must match the policy's within 1e-2
  (and differ before the sync, so the check has teeth), for a plain and a LoRA policy.

The suite run needs Qwen/Qwen2.5-0.5B-Instruct and GSM8K: from the hub, or local copies named by
RLBENCH_GPU_MODEL (a model directory) and RLBENCH_GSM8K (default: ../shared/data/gsm8k when present).

    pytest -m gpu tests/gpu/test_gpu_suite.py
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU"),
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vllm (pip install 'rlbench[vllm]')"),
]

REPO = Path(__file__).resolve().parents[2]
SUITE = REPO / "suites" / "gpu-memory.yaml"
SHARED_GSM8K = REPO.parent / "shared" / "data" / "gsm8k"
ROLES = {"ppo": {"policy", "reference", "reward", "value", "rollout"},
         "grpo": {"policy", "reference", "reward", "rollout"},
         "grpo_zero": {"policy", "reference", "rollout"}}


def _overrides() -> list[str]:
    overrides = ["budget.steps=3", "rollout.completions_per_step=8", "rollout.max_new_tokens=64",
                 "eval.size=16", "eval.batch_size=16", "task.train_size=64",
                 "model.reward_model.prompts=32", "model.reward_model.steps=5", "model.reward_model.batch_size=4"]
    if os.environ.get("RLBENCH_GPU_MODEL"):
        overrides.append(f"model.name={os.environ['RLBENCH_GPU_MODEL']}")
    gsm8k = os.environ.get("RLBENCH_GSM8K") or (str(SHARED_GSM8K) if SHARED_GSM8K.is_dir() else None)
    if gsm8k:
        overrides.append(f"task.path={gsm8k}")
    return overrides


def test_three_step_gpu_memory_run_reports_nvml_for_every_role(tmp_path):
    from rlbench.config import load_suite
    from rlbench.requirements import missing_requirements

    overrides = _overrides()
    missing = missing_requirements(load_suite(SUITE, overrides))
    if missing:
        pytest.skip("; ".join(missing))
    command = [sys.executable, "-m", "rlbench", "run", str(SUITE), "--output", str(tmp_path)]
    for override in overrides:
        command += ["--set", override]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=3000)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(next(tmp_path.glob("gpu-memory/*/report.json")).read_text())
    assert {r["algorithm"] for r in report["runs"]} == set(ROLES)
    for run in report["runs"]:
        assert run["status"] == "ok", f"{run['id']}: {run.get('error')}"
        assert run["budget"]["steps"] == 3
        roles = run["roles"]
        assert set(roles) == ROLES[run["algorithm"]], run["id"]
        assert "nvml" in run["memory"]["reconciliation"], f"{run['id']}: the nvml probe did not run"
        for role, entry in roles.items():
            where = f"{run['id']} {role}"
            assert entry["load_bytes"].get("nvml", 0) > 0, f"{where}: no NVML figure for loading it"
            if role == "rollout":  # vLLM's own memory: its weights and KV cache
                assert entry["static"]["weights"] > 0 and entry["static"]["kv_cache"] > 0, where
            else:
                assert entry["peak_bytes"].get("nvml", 0) > 0, f"{where}: no NVML peak for its phases"
                assert entry["static"]["weights"] > 0, where


def _embedded_dir(tmp_path: Path) -> Path:
    from rlbench.models.embedded import build_embedded, save_pretrained_pair

    model, tokenizer = build_embedded(0)
    return save_pretrained_pair(model, tokenizer, tmp_path / "embedded")


def _max_gap(engine, policy, prompt: list[int], completion: list[int]) -> float:
    from rlbench.models.forward import completion_logprobs

    served = torch.tensor(engine.score([prompt], [completion])[0])
    ids = torch.tensor([prompt + completion], device="cuda")
    policy.eval()
    with torch.no_grad():
        trained = completion_logprobs(policy, ids, torch.ones_like(ids), len(prompt), ids[:, len(prompt):])[0]
    policy.train()
    return float((served - trained.float().cpu()).abs().max())


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_vllm_logprobs_match_the_policy_after_a_weight_sync(tmp_path, lora):
    from rlbench.config import LoraConfig, ModelConfig
    from rlbench.models.loading import load_policy
    from rlbench.models.precision import resolve_precision
    from rlbench.rollout.vllm import VLLMEngine

    if lora and importlib.util.find_spec("peft") is None:
        pytest.skip("needs peft (pip install 'rlbench[peft]')")
    path = _embedded_dir(tmp_path)
    # float16 on both sides: every attention backend has it, and its rounding (2^-11) keeps two
    # implementations of the same 1M-parameter model well inside 1e-2 of each other.
    cfg = ModelConfig(name=str(path), dtype="float16", lora=LoraConfig(r=4, alpha=8) if lora else None)
    policy, tokenizer = load_policy(path, cfg, resolve_precision(cfg), "cuda")
    engine = VLLMEngine(policy, tokenizer, model_path=path, dtype="float16", gpu_memory_utilization=0.2,
                        max_model_len=256, seed=0)
    prompt = tokenizer("Q: Tom has 3 apples and buys 4 more. How many apples does he have?\n")["input_ids"]
    completion = tokenizer("<reasoning>\n3+4=7\n</reasoning>\n<answer>\n7\n</answer>\n",
                           add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert _max_gap(engine, policy, prompt, completion) < 1e-2  # same weights at the start

    with torch.no_grad():  # an "update" that moves every trained tensor
        for name, param in policy.named_parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * (0.5 if "lora_B" in name else 0.05))
    assert _max_gap(engine, policy, prompt, completion) > 1e-2  # the engine still serves the old weights
    engine.sync_weights(policy)
    assert _max_gap(engine, policy, prompt, completion) < 1e-2
    memory = engine.memory_bytes()
    assert memory["weights"] > 0 and memory.get("kv_cache", 0) > 0
