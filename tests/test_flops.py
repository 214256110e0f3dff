"""Model FLOPs per token (checked against torch's FlopCounterMode on a tiny Llama), MFU and peaks."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig, LlamaForCausalLM

from rlbench.measure.flops import (
    CPU_PEAK_CACHE_FILE,
    Peak,
    cpu_identity,
    cpu_model_name,
    cpu_peak_flops,
    cpu_read_bandwidth,
    flop_params,
    gpu_chip,
    gpu_peak_flops,
    mfu,
    model_flops_per_token,
    peak_flops,
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


def test_cpu_peak_is_measured_once_per_dtype_and_cached(tmp_path) -> None:
    measured = cpu_peak_flops(tmp_path, "fp32", max_n=256, reps=2)
    assert measured > 1e8  # any CPU does 0.1 GFLOP/s on a 256 x 256 fp32 matmul
    cache_path = tmp_path / CPU_PEAK_CACHE_FILE
    cache = json.loads(cache_path.read_text())
    (key,) = cache
    # the key names this CPU and torch's kernels and threads, so a cache copied elsewhere measures again
    assert key.startswith(cpu_identity()) and f"threads {torch.get_num_threads()}" in key
    assert key.endswith("fp32 mm and linear up to 256") and cache[key]["value"] == measured
    # A second call reads the cache: prove it by planting a value no measurement would give.
    cache[key]["value"] = 123.0
    cache_path.write_text(json.dumps(cache))
    assert cpu_peak_flops(tmp_path, "fp32", max_n=256, reps=2) == 123.0
    # bf16 is its own entry, measured afresh (on AVX2 it is far below fp32, on AMX far above)
    assert cpu_peak_flops(tmp_path, "bf16", max_n=256, reps=1) not in (123.0, measured)
    assert len(json.loads(cache_path.read_text())) == 2


def test_a_cache_copied_from_another_machine_is_not_used(tmp_path) -> None:
    identity = cpu_identity()
    other = identity.replace(cpu_model_name(), "Some Other CPU", 1)
    assert other != identity
    (tmp_path / CPU_PEAK_CACHE_FILE).write_text(json.dumps({f"{other} | fp32 mm and linear up to 256": {"value": 123.0}}))
    assert cpu_peak_flops(tmp_path, "fp32", max_n=256, reps=1) != 123.0
    assert len(json.loads((tmp_path / CPU_PEAK_CACHE_FILE).read_text())) == 2


def test_read_bandwidth_is_measured_once_and_cached_beside_the_peaks(tmp_path) -> None:
    bandwidth = cpu_read_bandwidth(tmp_path, nbytes=2**24, reps=2)
    assert bandwidth > 1e8  # 0.1 GB/s: any machine reads faster
    cache = json.loads((tmp_path / CPU_PEAK_CACHE_FILE).read_text())
    (key,) = cache
    assert key.startswith(cpu_identity()) and cache[key]["kind"] == "read_bytes_per_s"
    cache[key]["value"] = 7.0
    (tmp_path / CPU_PEAK_CACHE_FILE).write_text(json.dumps(cache))
    assert cpu_read_bandwidth(tmp_path, nbytes=2**24, reps=2) == 7.0


def test_peak_flops_picks_the_compute_dtype_and_says_where_it_came_from(tmp_path, monkeypatch) -> None:
    (tmp_path / CPU_PEAK_CACHE_FILE).write_text(json.dumps({
        f"{cpu_identity()} | fp32 mm and linear up to 2048": {"value": 4e11},
        f"{cpu_identity()} | bf16 mm and linear up to 2048": {"value": 3e12}}))
    assert peak_flops("cpu", torch.bfloat16, tmp_path) == Peak(3e12, "bf16", "measured", cpu_model_name())
    assert peak_flops("cpu", "float32", tmp_path).flops_per_s == 4e11
    assert peak_flops("cpu", "tf32", tmp_path).dtype == "fp32"  # TF32 is a GPU mode
    # a GPU's figure comes from the datasheet table (torch.cuda stood in for: no GPU here)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert peak_flops("cuda", torch.bfloat16, tmp_path) == Peak(989.5e12, "bf16", "datasheet", "NVIDIA H100 80GB HBM3")
    assert peak_flops("cuda", torch.bfloat16, tmp_path).as_dict()["source"] == "datasheet"


BF16_SUITE = """
name: mfu
model: {name: embedded, dtype: bfloat16, precision: bf16-mixed, sft: {steps: 0}}
task: {name: synthetic, max_steps: 1, train_size: 200}
algorithms:
  - {name: grpo_zero, params: {lr: 1.0e-4}}
budget: {steps: 1}
rollout: {completions_per_step: 8, group_size: 4, max_new_tokens: 8}
probe: cpu
"""


def test_a_bf16_mixed_run_divides_by_the_bf16_peak(tmp_path) -> None:
    """MFU of a bf16-mixed run is over the CPU's measured bf16 peak (an fp32 one made it 1.25 on an
    AMX CPU, where bf16 runs about 7x faster than fp32), and the report says which peak it used.

    MFU < 1 is asserted where the CPU computes bf16 natively (AMX or AVX512-BF16). Without bf16
    units (AVX2) the bf16 kernels are so slow that a step is nearly all matmul at close to the
    peak, and the model FLOPs count each completion's prompt while a group's prompt is computed
    once (measured on the AMD EPYC AVX2 machine: 2.6 GFLOP counted, about 0.85 executed per step),
    so the ratio read 1.06 there: the count's convention, not the peak (flops.py, sanity.py)."""
    from rlbench.cache import cache_root
    from rlbench.catalog import resolve_probe
    from rlbench.config import load_suite
    from rlbench.environment import cpu_features
    from rlbench.measure.summary import summarize_run
    from rlbench.models.embedded import build_embedded, save_pretrained_pair
    from rlbench.train import Run

    (tmp_path / "suite.yaml").write_text(BF16_SUITE)
    suite = load_suite(tmp_path / "suite.yaml")
    model, tokenizer = build_embedded(seed=0)
    probe = resolve_probe("cpu", 10.0, "fast")
    run = Run.build(suite, suite.algorithms[0], 0, save_pretrained_pair(model, tokenizer, tmp_path / "policy"), None, probe)
    run.step()
    summary = summarize_run(run, probe, {"baseline_bytes": probe.snapshot()})
    peak = summary["mfu_peak"]
    assert peak == {"flops_per_s": cpu_peak_flops(cache_root(), "bf16"), "dtype": "bf16", "source": "measured",
                    "device": cpu_model_name()}
    mfu_value = summary["throughput"]["throughput/mfu"]
    assert mfu_value == pytest.approx(run.budget.flops / run.budget.seconds / peak["flops_per_s"], rel=1e-12)
    assert mfu_value > 0
    if {"amx_bf16", "avx512_bf16"} & set(cpu_features()):
        assert mfu_value < 1
