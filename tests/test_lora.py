"""LoRA on the embedded model: only adapters train, and the reference is the base with adapters off.

The reference role of a LoRA run is the policy's own module with its adapters disabled, so it holds
no second copy of the weights: its static bytes are 0 in the report entry, while the policy's
weights are the base model plus the adapters.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch.testing import assert_close

from rlbench.catalog import resolve_probe
from rlbench.config import load_suite
from rlbench.errors import UserError
from rlbench.measure.static import role_static_bytes
from rlbench.models.embedded import build_embedded, save_pretrained_pair
from rlbench.models.loading import add_lora, load_causal_lm
from rlbench.models.precision import resolve_precision

peft = pytest.importorskip("peft", reason="LoRA tests need peft (pip install peft)")

TARGETS = ["q_proj", "v_proj"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    model, tokenizer = build_embedded(0)
    return save_pretrained_pair(model, tokenizer, tmp_path_factory.mktemp("embedded"))


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory) -> Path:
    """A scalar-head reward model with a random head: its scores differ between completions, so
    GRPO's group advantages are not zero even for an untrained policy."""
    from rlbench.models.heads import ScalarHeadModel

    torch.manual_seed(1)
    model, _ = build_embedded(0)
    reward = ScalarHeadModel(model.model, model.config.hidden_size)
    torch.nn.init.normal_(reward.head.weight, std=1.0)
    path = tmp_path_factory.mktemp("reward")
    reward.save(path)
    return path


def _suite(tmp_path: Path, model_dir: Path):
    data = {
        "name": "lora",
        "model": {"name": str(model_dir), "lora": {"r": 4, "alpha": 8, "target_modules": TARGETS}},
        "task": {"train_size": 64},
        "algorithms": [{"name": "grpo", "params": {"lr": 1e-2, "beta": 0.04}}],
        "budget": {"steps": 1},
        "rollout": {"completions_per_step": 8, "group_size": 4, "max_new_tokens": 8},
        "probe": "cpu",
    }
    path = tmp_path / "lora.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_suite(path)


def test_lora_trains_only_adapters_and_the_reference_holds_no_copy(tmp_path, model_dir, reward_dir):
    from rlbench.measure.summary import summarize_run
    from rlbench.models.loading import AdapterDisabledReference
    from rlbench.train import Run

    suite = _suite(tmp_path, model_dir)
    probe = resolve_probe("cpu", 10.0, "fast")
    run = Run.build(suite, suite.algorithms[0], 0, model_dir, reward_dir, probe)
    assert isinstance(run.reference, AdapterDisabledReference)
    before = {name: p.detach().clone() for name, p in run.policy.named_parameters()}
    run.step()

    after = dict(run.policy.named_parameters())
    base = [n for n in before if "lora_" not in n]
    adapters_b = [n for n in before if "lora_B" in n]
    assert len(adapters_b) == 2 * 4  # q_proj and v_proj in each of the 4 layers
    for name in base:
        assert torch.equal(before[name], after[name]), f"{name} is a base weight and must stay frozen"
    assert any(not torch.equal(before[n], after[n]) for n in adapters_b), "no adapter moved"

    # The role entries of the report: the reference's static bytes are 0, the others' are not.
    roles = summarize_run(run, probe, {})["roles"]
    assert set(roles) == {"policy", "reference", "reward"}
    assert roles["reference"]["static"]["total"] == 0
    assert roles["reference"]["static"]["weights"] == 0
    assert roles["policy"]["static"]["weights"] > 0 and roles["reward"]["static"]["weights"] > 0
    assert role_static_bytes(run.reference)["total"] == 0


def test_reference_is_the_base_model_with_adapters_disabled(model_dir):
    from rlbench.config import LoraConfig, ModelConfig
    from rlbench.models.loading import AdapterDisabledReference

    cfg = ModelConfig(name=str(model_dir), lora=LoraConfig(r=4, alpha=8, target_modules=TARGETS))
    policy = add_lora(load_causal_lm(model_dir, cfg, resolve_precision(cfg)), cfg.lora)
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # adapters that change the output
    policy.train()
    base = load_causal_lm(model_dir, cfg, resolve_precision(cfg)).eval()
    reference = AdapterDisabledReference(policy)
    ids = torch.tensor([[1, 20, 30, 40, 50, 60]])
    with torch.no_grad():
        expected = base(input_ids=ids).logits
        got = reference(input_ids=ids).logits
        adapted = policy(input_ids=ids).logits
    assert_close(got, expected)
    assert (adapted - expected).abs().max() > 1e-3  # the adapters are on outside the reference
    assert policy.training  # the reference put the policy back in training mode
    assert list(reference.parameters()) == [] and list(reference.buffers()) == []


def test_lora_without_peft_is_a_user_error_naming_the_extra(monkeypatch, model_dir):
    from rlbench.config import LoraConfig

    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` now raises ImportError
    model, _ = build_embedded(0)
    with pytest.raises(UserError, match="extra 'peft'"):
        add_lora(model, LoraConfig())


def test_unknown_target_module_is_a_user_error():
    from rlbench.config import LoraConfig

    model, _ = build_embedded(0)
    with pytest.raises(UserError, match="model.lora.target_modules"):
        add_lora(model, LoraConfig(target_modules=["no_such_proj"]))
