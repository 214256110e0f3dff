"""Model FLOPs per token (checked against torch's FlopCounterMode on a tiny Llama), MFU and peaks."""

from __future__ import annotations

import json
import time

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig, LlamaForCausalLM

from rlbench.measure.flops import (
    CPU_PEAK_CACHE_FILE,
    FlopShape,
    Peak,
    cpu_identity,
    cpu_model_name,
    cpu_peak_flops,
    cpu_read_bandwidth,
    flop_params,
    flop_shape,
    gpu_chip,
    gpu_peak_flops,
    mfu,
    model_flops_per_token,
    pass_flops,
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


# N 1,000 of which a 200-parameter head, L 2, d 4 (4Ld = 32 per attended position); one group of
# 2 rows sharing a 3-token prompt, completions of 2 and 1 tokens.
SMALL = FlopShape(n_params=1000, n_layers=2, hidden=4, head_params=200)


def test_sampling_runs_a_groups_prompt_once_and_never_the_last_token() -> None:
    # Tokens run: the prompt's 3 once, then each row's C - 1 = 1 and 0: 4 x 2 x 800 = 6,400.
    # Head: the prompt's last position once, then 1 fed token: 2 x 2 x 200 = 800.
    # Attention (causal): prompt positions 1 + 2 + 3 = 6, the fed token at position 4: 10 x 32 = 320.
    assert pass_flops(SMALL, [3, 3], [2, 1], 2, "sample") == 6_400 + 800 + 320
    # The same rows as two groups of one: each prompt twice (3 more tokens, 6 more positions) and
    # the second row's prompt head: 7 x 1,600 + 3 x 400 + 16 x 32 = 11,200 + 1,200 + 512 = 12,912.
    assert pass_flops(SMALL, [3, 3], [2, 1], 1, "sample") == 12_912


def test_logprobs_run_the_head_at_each_completion_position_and_training_triples_it() -> None:
    # As sampling, but the head predicts all 2 + 1 = 3 completion tokens: 6,400 + 3 x 400 + 320 = 7,920.
    assert pass_flops(SMALL, [3, 3], [2, 1], 2, "logprobs") == 7_920
    assert pass_flops(SMALL, [3, 3], [2, 1], 2, "logprobs", training=True) == 3 * 7_920


def test_a_sequence_pass_runs_every_row_in_full() -> None:
    # Rows of 5 and 4 tokens, all through body and head: 9 x 2 x 1,000 = 18,000; attention
    # (15 + 10) x 32 = 800.
    assert pass_flops(SMALL, [3, 3], [2, 1], 1, "sequence") == 18_800
    # One sequence, no head: the sum of PaLM's per-token forward at T = 1 .. 5 (causal attention).
    shape = FlopShape(n_params=1000, n_layers=2, hidden=4)
    assert pass_flops(shape, [3], [2], 1, "sequence") == sum(
        model_flops_per_token(1000, 2, 4, t, training=False) for t in range(1, 6))


def test_the_old_count_was_three_times_a_grouped_step() -> None:
    # Charging each of 8 completions of 32 tokens its own 100-token prompt, full square, against
    # the prompt once per group of 8 (what the quickstart-sized step computes): about 3x more.
    shape = FlopShape(n_params=10**6, n_layers=4, hidden=128, head_params=50_944)
    old = sum(t * model_flops_per_token(10**6, 4, 128, t, training=False) for t in [132] * 8)
    new = pass_flops(shape, [100] * 8, [32] * 8, 8, "sample")
    assert 2.5 < old / new < 3.5


def test_the_sampling_count_is_what_the_lean_decoder_multiplies() -> None:
    """FlopCounterMode around rlbench's sampler on the tiny Llama: 2 groups of 2 rows, 5-token prompts,
    4 tokens each (ignore_eos). The counter sees matmuls only and the prefill's whole masked square."""
    from rlbench.rollout import SamplingParams
    from rlbench.rollout.hf import sample

    model = tiny_llama(tie=True).eval()
    prompts = torch.randint(1, 50, (2, 5)).repeat_interleave(2, dim=0)
    params = SamplingParams(max_new_tokens=4, temperature=1.0, top_p=1.0, ignore_eos=True)
    with FlopCounterMode(display=False) as counter:
        sample(model, prompts, torch.ones_like(prompts), params, eos_id=0, pad_id=0, group=2)
    counted = pass_flops(flop_shape(model), [5] * 4, [4] * 4, 2, "sample")
    # By hand (N 22,240 = 20,480 linear + 160 norm + 1,600 head; 4Ld = 256): tokens run 2 x (5 + 2 x 3)
    # = 22, head positions 2 x (1 + 6) = 14, attended positions 2 x (15 + 2 x (6 + 7 + 8)) = 114:
    # 2 x 20,640 x 22 + 2 x 1,600 x 14 + 256 x 114 = 908,160 + 44,800 + 29,184 = 982,144.
    assert counted == 982_144
    # The counter: the norms' 2 x 160 x 22 = 7,040 are not matmuls. The prefill's attention is one
    # fused kernel (scaled_dot_product_attention), which the counter either does not see on a CPU
    # (its 2 x 15 causal positions: 7,680 fewer) or counts as the whole masked 5 x 5 square
    # (10 positions per prompt more than causal: 5,120 more); every other FLOP matches exactly.
    assert counter.get_total_flops() in (counted - 7_040 - 7_680, counted - 7_040 + 5_120)


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
        ("NVIDIA H200 NVL", "bf16", 835.5e12),
        ("NVIDIA L4", "fp16", 121e12),
        ("NVIDIA A10G", "bf16", 125e12),
        ("NVIDIA GeForce RTX 4090", torch.float32, 82.6e12),
        ("Tesla V100-SXM2-16GB", "fp16", 125e12),
        ("Tesla V100-SXM2-16GB", "bf16", None),  # Volta has no bf16
        ("Tesla V100-PCIE-16GB", "fp16", 112e12),
        ("Tesla V100S-PCIE-32GB", "fp16", 130e12),  # the V100S, not taken for a V100
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
    # A run that reached more than the cached peak (123 FLOP/s, as if measured under heavy load) has
    # it measured again; the larger is kept, and read from then on.
    again = cpu_peak_flops(tmp_path, "fp32", max_n=256, reps=1, at_least=124.0)
    assert again > 1e8 and json.loads(cache_path.read_text())[key]["value"] == again
    assert cpu_peak_flops(tmp_path, "fp32", max_n=256, reps=1, at_least=again) == again


def test_a_cache_copied_from_another_machine_is_not_used(tmp_path) -> None:
    identity = cpu_identity()
    other = identity.replace(cpu_model_name(), "Some Other CPU", 1)
    assert other != identity
    (tmp_path / CPU_PEAK_CACHE_FILE).write_text(json.dumps({f"{other} | fp32 mm and linear up to 256": {"value": 123.0}}))
    assert cpu_peak_flops(tmp_path, "fp32", max_n=256) != 123.0
    cache = json.loads((tmp_path / CPU_PEAK_CACHE_FILE).read_text())
    assert len(cache) == 2 and cache[f"{identity} | fp32 mm and linear up to 256"]["reps"] == 3  # the default


def test_any_positive_cached_figure_is_read_and_a_broken_entry_is_measured_again(tmp_path) -> None:
    identity = cpu_identity()
    (tmp_path / CPU_PEAK_CACHE_FILE).write_text(json.dumps({
        f"{identity} | fp32 mm and linear up to 256": {"value": 0.5},
        f"{identity} | read {2**30} bytes": {"value": 0.25},  # the default size read: 1 GiB
        f"{identity} | read {2**20} bytes": 5}))  # an entry with no value object
    # cached figures below 1 (nothing measures so low, but nothing is wrong with them) are read
    assert cpu_peak_flops(tmp_path, "fp32", max_n=256) == 0.5
    assert cpu_peak_flops(tmp_path, "fp32", max_n=256, at_least=0.5) == 0.5  # a run that reached it exactly
    assert cpu_read_bandwidth(tmp_path) == 0.25
    assert cpu_read_bandwidth(tmp_path, nbytes=2**20, reps=1) > 1e8  # measured again (any machine reads 0.1 GB/s)
    # into a cache folder that does not exist yet, recording how it measured
    nested = tmp_path / "a" / "b"
    assert cpu_read_bandwidth(nested, nbytes=2**20) > 1e8
    assert json.loads((nested / CPU_PEAK_CACHE_FILE).read_text())[f"{identity} | read {2**20} bytes"]["reps"] == 3


def test_an_unknown_key_value_width_is_zero_and_reads_as_the_hidden_size() -> None:
    from rlbench.measure.roofline import decode_bytes

    # FlopShape(N=100, L=2, d=4), kv_width left out (0, unknown), fp32 (4 bytes); one row, prompt 3, 2 tokens.
    # Weights: 100 x 4 = 400 bytes, read at the prefill and at the 1 decoding step: 800.
    # Keys and values per position: 2 x L 2 x width 4 (the hidden size) x 4 bytes = 64; positions read
    # at that step: the prompt's 3 and the row's 1 own: 4 x 64 = 256. 800 + 256 = 1,056.
    assert decode_bytes(FlopShape(100, 2, 4), [3], [2], 1, 4) == 1_056


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
        f"{cpu_identity()} | bf16 mm and linear up to 2048": {"value": 3e12},
        f"{cpu_identity()} | fp16 mm and linear up to 2048": {"value": 0.5}}))
    assert peak_flops("cpu", torch.bfloat16, tmp_path) == Peak(3e12, "bf16", "measured", cpu_model_name())
    assert peak_flops("cpu", "fp16", tmp_path).flops_per_s == 0.5  # no run's rate given: any positive figure is read
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

    MFU < 1 on every CPU: the count is of the FLOPs the step computes (a group's prompt once), so it
    cannot pass the peak of the dtype they run in. (Charging each completion its prompt, it read
    1.06 on the AMD EPYC AVX2 machine, whose bf16 step is nearly all matmul close to the peak.)"""
    from rlbench.cache import cache_root
    from rlbench.catalog import resolve_probe
    from rlbench.config import load_suite
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
    assert 0 < mfu_value < 1
    # Each phase against its floor: the compute floor is the phase's FLOPs over the same peak; the
    # generate phase has a memory floor too (weights per decoding step over the measured bandwidth).
    roofline = summary["roofline"]
    assert set(roofline) == {"generate", "ref_logprobs", "update"} and summary["read_bytes_per_s"] > 0
    assert roofline["update"]["compute_s"] == pytest.approx(run.budget.flops_by_phase["update"] / peak["flops_per_s"])
    assert roofline["generate"]["memory_s"] == pytest.approx(
        run.budget.bytes_by_phase["generate"] / summary["read_bytes_per_s"])
    for phase in roofline.values():
        assert phase["floor_s"] == max(s for s in (phase["compute_s"], phase["memory_s"]) if s is not None)
        assert phase["ratio"] == pytest.approx(phase["measured_s"] / phase["floor_s"]) and phase["ratio"] > 0


def _best_seconds(call, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def test_the_measured_rates_are_those_of_the_work_timed() -> None:
    # The peak is 2 n^3 FLOPs over the best time of an n x n matmul (n = max_n = 128 here, under the
    # 256 it starts at), the bandwidth the tensor's bytes over the best time of its sum. Timed here
    # too, best of 20 (each a fraction of a millisecond: a best of many escapes other processes), the
    # two agree within a factor of 8 on a loaded machine; a wrong FLOP count (n^4: 128x) or byte
    # count (numel / 4: 16x too few) does not.
    import torch.nn.functional as F

    from rlbench.measure.flops import measure_matmul_flops, measure_read_bandwidth

    n = 128
    a, b = torch.randn(n, n), torch.randn(n, n)
    rate = measure_matmul_flops("fp32", n, 3, min_total_seconds=0.1)
    here = 2 * n**3 / min(_best_seconds(lambda: torch.mm(a, b), 20), _best_seconds(lambda: F.linear(a, b), 20))
    assert 1 / 8 < rate / here < 8
    x = torch.ones(2**20)  # 4 MiB
    x.sum()
    bandwidth = measure_read_bandwidth(x.numel() * 4, 5)
    assert 1 / 8 < bandwidth / (x.numel() * 4 / _best_seconds(x.sum, 20)) < 8


def test_flop_shape_reads_the_key_value_width_and_the_head_of_each_kind_of_config() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaModel

    torch.manual_seed(0)
    # Grouped-query attention with a head size of its own: 2 key/value heads x head_dim 16 = 32
    # (not 4 heads x 16 = 64, nor 2 x hidden 32 / 4 heads = 16); the LM head is 50 x 32 = 1,600.
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16, vocab_size=50)
    shape = flop_shape(LlamaForCausalLM(config))
    assert (shape.n_layers, shape.hidden, shape.head_params, shape.kv_width) == (2, 32, 1_600, 32)
    assert flop_shape(LlamaModel(config)).head_params == 0  # a model without an output projection
    # GPT-2's config names neither head_dim nor key/value heads: 4 heads of 32 / 4 = 8, a whole number
    gpt2 = GPT2Config(n_embd=32, n_head=4, n_layer=2, vocab_size=50, n_positions=16, bos_token_id=0, eos_token_id=0)
    shape = flop_shape(GPT2LMHeadModel(gpt2))
    assert shape.kv_width == 32 and isinstance(shape.kv_width, int) and shape.head_params == 1_600  # tied: once


def test_the_size_timed_doubles_until_a_call_is_long_enough_and_a_slow_layout_is_dropped() -> None:
    from rlbench.measure.flops import next_matmul_size

    # n = 256 of up to 2,048: the fastest call (linear, 0.01 s) is under 0.2 s, so 512 next; mm took
    # 0.035 s, over 3 x 0.01 = 0.03: dropped (a layout 3x slower is not the peak's)
    assert next_matmul_size(256, 2048, {"mm": 0.035, "linear": 0.01}, 0.2) == (["linear"], 512)
    # exactly 3x the fastest is dropped too (0.75 = 3 x 0.25, exact in binary); at 0.25 s >= 0.2 s, n is timed
    assert next_matmul_size(256, 2048, {"mm": 0.75, "linear": 0.25}, 0.2) == (["linear"], None)
    # a call of exactly min_seconds is long enough; under 3x the fastest, both layouts stay
    assert next_matmul_size(512, 2048, {"mm": 0.2, "linear": 0.3}, 0.2) == (["mm", "linear"], None)
    # max_n reached: n is timed however fast its calls
    assert next_matmul_size(2048, 2048, {"mm": 0.01, "linear": 0.02}, 0.2) == (["mm", "linear"], None)
    # the default: a call of 0.15 s is too short (under 0.2 s), one of 0.2 s long enough
    assert next_matmul_size(1024, 2048, {"mm": 0.15})[1] == 2048
    assert next_matmul_size(1024, 2048, {"mm": 0.2})[1] is None


def test_the_rounds_at_the_size_chosen_by_hand() -> None:
    from rlbench.measure.flops import more_matmul_calls

    # at least reps rounds, however long they took
    assert more_matmul_calls(2, 5.0, 3, 1.0) and not more_matmul_calls(3, 5.0, 3, 1.0)
    # then on while under min_total_seconds: 0.9 s of 1.0 goes on, 1.0 s stops
    assert more_matmul_calls(3, 0.9, 3, 1.0) and not more_matmul_calls(3, 1.0, 3, 1.0)
    # up to 50 rounds: 49 goes on, 50 stops, however short they were
    assert more_matmul_calls(49, 0.1, 3, 1.0) and not more_matmul_calls(50, 0.1, 3, 1.0)
    # the default min_total_seconds is 1.0
    assert more_matmul_calls(3, 0.9, 3) and not more_matmul_calls(3, 1.0, 3)


def test_a_matmul_rate_is_2n_cubed_over_the_fastest_call() -> None:
    from rlbench.measure.flops import MatmulTiming

    # n = 256: 2 x 256^3 = 33,554,432 FLOPs over the fastest of 1.0 and 0.5 s: 67,108,864 FLOP/s (exact)
    assert MatmulTiming(256, ("mm",), 1, (1.0, 0.5)).flops_per_s == 67_108_864.0


def test_the_sizes_and_rounds_timed() -> None:
    """Real matmuls under settings whose outcome no machine's speed changes: min_seconds 0 (any call is
    long enough) or infinite (none is), min_total_seconds 0 (reps rounds) or 60 s (50 rounds of a 64 x 64
    matmul take milliseconds)."""
    from rlbench.measure.flops import time_matmul

    # max_n under the first size (256): n = 64; min_seconds 0 stops there; 2 rounds
    timing = time_matmul("fp32", 64, 2, min_seconds=0.0, min_total_seconds=0.0)
    assert (timing.n, timing.calls) == (64, 2) and set(timing.layouts) <= {"mm", "linear"} and timing.layouts
    # one call per layout in the size choice, then one per kept layout per round; none takes 10 s
    assert len(timing.seconds) == 2 + 2 * len(timing.layouts) and all(0 <= s < 10 for s in timing.seconds)
    assert timing.flops_per_s == 2 * 64**3 / min(timing.seconds)
    # min_seconds 0 at max_n 2,048: the first size, 256, is timed
    assert time_matmul("fp32", 2048, 1, min_seconds=0.0, min_total_seconds=0.0).n == 256
    # no call long enough: 256, then 512 = max_n
    assert time_matmul("fp32", 512, 1, min_seconds=float("inf"), min_total_seconds=0.0).n == 512
    # 1 round asked for, 60 s to fill: 50 rounds
    assert time_matmul("fp32", 64, 1, min_seconds=0.0, min_total_seconds=60.0).calls == 50


def test_the_bytes_read_are_the_fp32_elements_of_the_size_asked() -> None:
    from rlbench.measure.flops import read_elements

    # 4 bytes per fp32 element: 1 GiB is 2^28 of them; 7 bytes hold 1 whole one, 8 two; under 4 bytes, one
    assert (read_elements(2**30), read_elements(7), read_elements(8), read_elements(3)) == (2**28, 1, 2, 1)


def test_a_shape_without_a_head_counts_every_parameter_as_the_body() -> None:
    # FlopShape(N=100, L=1, d=4), head left out (0): log-probs of one row, prompt 3, 2 completion tokens.
    # Tokens run: 3 + 1 = 4; attended positions x 2: 3 x 4 + 1 x (6 + 1 + 1) = 20.
    # 2 x 100 x 4 + 2 x 1 x 4 x 20 = 800 + 160 = 960 (a head of 1 would give 792 + 2 x 1 x 2 + 160 = 956)
    assert pass_flops(FlopShape(100, 1, 4), [3], [2], 1, "logprobs") == 960
