"""The hub-model path on a CPU: a model directory loaded exactly as a hub model is, GSM8K from a local
copy, a hub reward model, and the GPU suites on a machine that cannot run them.

The embedded model is saved with a chat template on its tokenizer, so prompts go through
`apply_chat_template` as they do for an instruct model from the hub; `rlbench run` then trains on
it end to end in a subprocess, with model.name set to the directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from rlbench.catalog import load_problems
from rlbench.config import ModelConfig, TaskConfig, load_suite
from rlbench.models.embedded import build_embedded, embedded_config, save_pretrained_pair
from rlbench.models.loading import load_causal_lm, load_scalar_model, load_tokenizer
from rlbench.models.precision import resolve_precision
from rlbench.tasks import SYSTEM_PROMPT, encode_prompts
from tests.tolerances import assert_reordered_close, llama_chain_terms

REPO = Path(__file__).resolve().parents[1]
GSM8K = REPO.parent / "shared" / "data" / "gsm8k"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory) -> Path:
    model, tokenizer = build_embedded(0)
    tokenizer.chat_template = CHAT_TEMPLATE
    return save_pretrained_pair(model, tokenizer, tmp_path_factory.mktemp("chat-model"))


def test_prompts_go_through_the_saved_chat_template(chat_model_dir):
    tokenizer = load_tokenizer(chat_model_dir, ModelConfig(name=str(chat_model_dir)))
    assert tokenizer.chat_template == CHAT_TEMPLATE
    problem = load_problems(TaskConfig(), "eval", 1, 0)[0]
    ids = encode_prompts(tokenizer, [problem])[0]
    assert ids[0] == tokenizer.bos_token_id
    text = tokenizer.decode(ids, skip_special_tokens=True)
    assert text == f"system: {SYSTEM_PROMPT}\nuser: {problem.question}\nassistant: "


def test_loading_options_reach_transformers(chat_model_dir):
    cfg = ModelConfig(name=str(chat_model_dir), attn_implementation="eager", gradient_checkpointing=True)
    policy = load_causal_lm(chat_model_dir, cfg, resolve_precision(cfg), trainable=True)
    assert policy.config._attn_implementation == "eager"
    assert _checkpointing(policy)
    assert not _checkpointing(load_causal_lm(chat_model_dir, cfg, resolve_precision(cfg)))  # frozen: no recompute
    half_cfg = ModelConfig(name=str(chat_model_dir), dtype="bfloat16")
    half = load_causal_lm(chat_model_dir, half_cfg, resolve_precision(half_cfg))
    assert next(half.parameters()).dtype == torch.bfloat16


def _checkpointing(model) -> bool:
    return any(getattr(module, "gradient_checkpointing", False) for module in model.modules())


def test_run_on_a_local_model_directory_end_to_end(tmp_path, chat_model_dir):
    suite = {
        "name": "hub-path",
        "model": {"name": str(chat_model_dir), "sft": {"steps": 0}},
        "task": {"name": "synthetic", "train_size": 64},
        "algorithms": [{"name": "grpo_zero", "params": {"lr": 1e-4}}],
        "budget": {"steps": 2},
        "rollout": {"completions_per_step": 8, "group_size": 4, "max_new_tokens": 12},
        "eval": {"size": 8, "batch_size": 8},
        "probe": "cpu",
        "threads": 1,
    }
    suite_path = tmp_path / "hub-path.yaml"
    suite_path.write_text(yaml.safe_dump(suite))
    env = dict(os.environ, RLBENCH_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "rlbench", "run", str(suite_path), "--output", str(tmp_path / "out")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(next((tmp_path / "out" / "hub-path").glob("*/report.json")).read_text())
    assert report["suite"]["model"]["name"] == str(chat_model_dir)
    (run,) = report["runs"]
    assert run["status"] == "ok", run.get("error")
    assert run["budget"]["steps"] == 2 and run["budget"]["completions"] == 16
    assert set(run["roles"]) == {"policy", "reference"}
    assert run["roles"]["reference"]["static"]["weights"] == run["roles"]["policy"]["static"]["weights"] > 0


@pytest.mark.skipif(not GSM8K.is_dir(), reason=f"no local GSM8K at {GSM8K}")
def test_gsm8k_loads_from_the_suites_task_path():
    suite = load_suite(REPO / "suites" / "gpu-memory.yaml", overrides=[f"task.path={GSM8K}"])
    train = load_problems(suite.task, "train", 16, 0)
    test = load_problems(suite.task, "eval", None, 0)
    assert len(train) == 16 and len(test) == 1319  # GSM8K's test split
    assert all(p.answer.lstrip("-").replace(".", "").isdigit() for p in train + test[:50])
    assert "<<" not in test[0].reasoning  # calculator annotations removed


def test_a_hub_reward_model_scores_like_its_classifier(tmp_path):
    """A reward model saved by AutoModelForSequenceClassification (one label) becomes a scalar-head model."""
    from transformers import LlamaForSequenceClassification

    _, tokenizer = build_embedded(0)
    config = embedded_config(len(tokenizer), tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
    config.num_labels = 1
    torch.manual_seed(0)
    classifier = LlamaForSequenceClassification(config).eval()
    classifier.save_pretrained(tmp_path)
    cfg = ModelConfig(name="unused")
    reward = load_scalar_model(tmp_path, cfg, resolve_precision(cfg)).eval()
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[1, 30, 31, 32, 33], [1, 40, 41, pad, pad]])  # right-padded, as the classifier expects
    mask = (ids != pad).long()
    with torch.no_grad():
        out = classifier(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        expected = out.logits[:, 0]
        got = reward.score(ids, mask)
        last_hidden = out.hidden_states[-1][torch.arange(2), mask.sum(1) - 1]  # the scored (last real) tokens
        magnitude = float((last_hidden.abs() @ classifier.score.weight.abs().T).max())
    # Two forwards of one backbone that may run its products in other orders: k is the decoder chain,
    # forward (tests/tolerances.py). The score is an H-term sum of hidden * weight whose terms cancel
    # (scores near 0), so its magnitude is sum |hidden| |weight|, not |score|.
    assert_reordered_close(got, expected, llama_chain_terms(config, ids.shape[1], backward=False), magnitude)


def test_gpu_suites_validate_here_with_warnings(monkeypatch, capsys):
    from rlbench.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["validate", str(REPO / "suites" / "gpu-memory.yaml"), str(REPO / "suites" / "gpu-accuracy.yaml")]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("ok ") == 2
    assert "warning: this machine cannot run it yet: no NVIDIA GPU" in captured.err  # warnings go to stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_suite_stops_at_once_with_one_line_here(tmp_path, monkeypatch, capsys):
    from rlbench.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["run", str(REPO / "suites" / "gpu-memory.yaml"), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot run suite 'gpu-memory' on this machine")
    assert "no NVIDIA GPU" in lines[0] and "vllm" in lines[0]
    assert not (tmp_path / "out").exists()  # nothing was started
