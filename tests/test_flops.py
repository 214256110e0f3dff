"""Model FLOPs per token (checked against torch's FlopCounterMode on a tiny Llama), MFU and peaks."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig, LlamaForCausalLM

from rlbench.measure.flops import (
    CPU_PEAK_CACHE_FILE,
    cpu_peak_flops,
    flop_params,
    gpu_chip,
    gpu_peak_flops,
    mfu,
    model_flops_per_token,
)


def tiny_llama(tie: bool) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=50,
        tie_word_embeddings=tie,
        attn_implementation="eager",  # plain matmuls, which FlopCounterMode counts
    )
    return LlamaForCausalLM(config)


def test_flops_per_token_by_hand() -> None:
    # N 1000, L 2, d 16, T 10: forward 2*1000 + 4*2*16*10 = 2000 + 1280 = 3280; trained 3 * 3280 = 9840.
    assert model_flops_per_token(1000, 2, 16, 10, training=False) == 3280
    assert model_flops_per_token(1000, 2, 16, 10, training=True) == 9840
    # PaLM's 6N + 12LHQT with H 4 heads of Q 4 (d = 16): 6000 + 12*2*4*4*10 = 6000 + 3840 = 9840.
    assert model_flops_per_token(1000, 2, 4 * 4, 10, training=True) == 6 * 1000 + 12 * 2 * 4 * 4 * 10


def test_flop_params_excludes_the_embedding_lookup_but_keeps_the_head() -> None:
    # 22,240 parameters (see test_static_bytes.py). Tied: the 1,600-parameter embedding is also the
    # head's matmul, so all count. Untied: 23,840 parameters minus the 1,600 of the lookup table.
    assert flop_params(tiny_llama(tie=True)) == 22_240
    assert flop_params(tiny_llama(tie=False)) == 22_240


@pytest.mark.parametrize("training", [False, True])
def test_formula_matches_flop_counter_on_a_tiny_llama(training: bool) -> None:
    model = tiny_llama(tie=True)
    seq_len = 16
    ids = torch.randint(0, 50, (1, seq_len))
    with FlopCounterMode(display=False) as counter:
        logits = model(input_ids=ids).logits
        if training:
            logits.sum().backward()
    formula = model_flops_per_token(flop_params(model), 2, 32, seq_len, training) * seq_len
    # Forward by hand, per token: 2 * 22,240 + 4 * 2 * 32 * 16 = 44,480 + 4,096 = 48,576; x16 = 777,216.
    # FlopCounterMode counts matmuls only: linears 2 * (22,240 - 160 norm weights) * 16 = 706,560,
    # attention QK^T and AV 2 * (2*16*16*32) per layer x 2 layers = 65,536: 772,096. The gap is the
    # norms' 160 weights, which the formula counts as matmul parameters: 2 * 160 * 16 = 5,120.
    # Training triples both sides.
    scale = 3 if training else 1
    assert formula == scale * 777_216
    assert counter.get_total_flops() == scale * 772_096
    assert formula - counter.get_total_flops() == scale * 2 * 160 * seq_len


def test_mfu() -> None:
    # 3e12 FLOPs in 2 s on a 3e12 FLOP/s device: 1.5e12 / 3e12 = 0.5.
    assert mfu(3e12, 2.0, 3e12) == pytest.approx(0.5)
    with pytest.raises(AssertionError):
        mfu(1.0, 0.0, 1.0)


@pytest.mark.parametrize(
    ("device_name", "dtype", "expected"),
    [
        ("NVIDIA A100-SXM4-80GB", torch.bfloat16, 312e12),
        ("NVIDIA A100-PCIE-40GB", "tf32", 156e12),
        ("NVIDIA H100 80GB HBM3", "bf16", 989.5e12),
        ("NVIDIA H100 PCIe", torch.float16, 756.5e12),
        ("NVIDIA H100 NVL", "bf16", 835.5e12),
        ("NVIDIA H200", torch.bfloat16, 989.5e12),
        ("NVIDIA L4", "fp16", 121e12),
        ("NVIDIA A10G", "bf16", 125e12),
        ("NVIDIA GeForce RTX 4090", torch.float32, 82.6e12),
        ("Tesla V100-SXM2-16GB", "fp16", 125e12),
        ("Tesla V100-SXM2-16GB", "bf16", None),  # Volta has no bf16
        ("Tesla T4", torch.float32, 8.1e12),
        ("NVIDIA L40S", "bf16", None),  # not in the table, and not mistaken for an L4
        ("AMD Instinct MI300X", "bf16", None),
    ],
)
def test_gpu_peak_flops(device_name: str, dtype: object, expected: float | None) -> None:
    assert gpu_peak_flops(device_name, dtype) == expected


def test_gpu_chip_tells_a100_from_a10() -> None:
    assert gpu_chip("NVIDIA A100 80GB PCIe") == "a100"
    assert gpu_chip("NVIDIA A10") == "a10"


def test_cpu_peak_is_measured_once_and_cached(tmp_path) -> None:
    measured = cpu_peak_flops(tmp_path, n=256, reps=2)
    assert measured > 1e8  # any CPU does 0.1 GFLOP/s on a 256 x 256 fp32 matmul
    cache_path = tmp_path / CPU_PEAK_CACHE_FILE
    cache = json.loads(cache_path.read_text())
    (key,) = cache
    assert f"threads {torch.get_num_threads()}" in key and "fp32 matmul 256" in key
    assert cache[key]["flops_per_s"] == measured
    # A second call reads the cache: prove it by planting a value no measurement would give.
    cache[key]["flops_per_s"] = 123.0
    cache_path.write_text(json.dumps(cache))
    assert cpu_peak_flops(tmp_path, n=256, reps=2) == 123.0
    # Another matrix size is another key, measured afresh.
    assert cpu_peak_flops(tmp_path, n=128, reps=1) > 1e8
    assert len(json.loads(cache_path.read_text())) == 2
