"""Each phase against its floor (rlbench/measure/roofline.py), numbers worked by hand; its report views."""

from __future__ import annotations

import pytest

from rlbench.measure.flops import FlopShape
from rlbench.measure.roofline import decode_bytes, pass_bytes, phase_floor, roofline
from rlbench.report.roofline import floor_ratio, roofline_markdown

# N 1,000 matmul weights, 2 layers, keys and values 2 wide per layer: in bf16 (2 bytes) the weights
# are 2,000 bytes and a position's keys and values 2 x 2 layers x 2 x 2 bytes = 16 bytes.
SHAPE = FlopShape(n_params=1000, n_layers=2, hidden=4, head_params=200, kv_width=2)


def test_decoding_reads_the_weights_per_step_and_each_live_rows_keys_and_values() -> None:
    # One group of 2 rows, 3-token prompt, completions of 3 and 1 tokens: 2 decoding steps (both for
    # row 0; row 1's only token came from the prefill). Weights: prefill + 2 steps = 3 x 2,000.
    # KV: step 0 row 0 reads the prompt's 3 + its 1 own position, step 1 3 + 2: 9 x 16 = 144.
    assert decode_bytes(SHAPE, [3, 3], [3, 1], 2, element_bytes=2) == 6_000 + 144
    # As two groups of one the prompt is the same, the positions too (row 1 never reads its prompt).
    assert decode_bytes(SHAPE, [3, 3], [3, 1], 1, element_bytes=2) == 6_144
    # Two rows of 3 tokens in one group: the prompt once per step (2 x 3), own 2 x (1 + 2): 12 x 16.
    assert decode_bytes(SHAPE, [3, 3], [3, 3], 2, element_bytes=2) == 6_000 + 192
    # fp32 doubles every byte.
    assert decode_bytes(SHAPE, [3, 3], [3, 1], 2, element_bytes=4) == 2 * 6_144


def test_a_trained_pass_reads_its_weights_twice() -> None:
    assert pass_bytes(SHAPE, 4) == 4_000 and pass_bytes(SHAPE, 2, reads=2) == 4_000


def test_the_floor_is_the_larger_bound_and_the_ratio_is_measured_over_it() -> None:
    # Peak 1e10 FLOP/s, 1e10 B/s. generate: 1e9 FLOPs = 0.1 s, 4e9 bytes = 0.4 s: memory-bound,
    # 2.0 / 0.4 = 5. update: 6e9 FLOPs = 0.6 s against 1e9 bytes = 0.1 s: compute-bound, 3.0 / 0.6 = 5.
    # advantages (no FLOPs, no bytes) has no floor.
    out = roofline({"generate": 2.0, "update": 3.0, "advantages": 0.1}, {"generate": 10**9, "update": 6 * 10**9},
                   {"generate": 4 * 10**9, "update": 10**9}, 1e10, 1e10)
    assert set(out) == {"generate", "update"}
    assert out["generate"] == {"compute_s": pytest.approx(0.1), "memory_s": pytest.approx(0.4),
                               "floor_s": pytest.approx(0.4), "bound": "memory", "measured_s": 2.0,
                               "ratio": pytest.approx(5.0)}
    assert out["update"]["bound"] == "compute" and out["update"]["ratio"] == pytest.approx(5.0)
    # No bandwidth (a GPU): the compute bound alone; neither known: no floor.
    assert phase_floor(10**9, 4 * 10**9, 1e10, None) == {"compute_s": 0.1, "memory_s": None, "floor_s": 0.1,
                                                         "bound": "compute"}
    assert phase_floor(10**9, 4 * 10**9, None, None) is None
    # The run's ratio: (2 + 3) s over (0.4 + 0.6) s of floors = 5.
    report = {"runs": [{"id": "grpo_zero/seed0", "roofline": out, "read_bytes_per_s": 1e10}, {"id": "failed/seed0"}]}
    assert floor_ratio(report["runs"][0]) == pytest.approx(5.0) and floor_ratio(report["runs"][1]) is None
    text = "\n".join(roofline_markdown(report))
    assert "| grpo\\_zero/seed0 | generate | 0.100 | 0.400 | 0.400 | memory | 2.00 | 5.0 |" in text
    assert "| grpo\\_zero/seed0 | all phases |  |  | 1.000 |  | 5.00 | 5.0 |" in text
    assert "10.0 GB/s" in text
    assert roofline_markdown({"runs": [{"id": "x"}]}) == []


def test_precision_advice_names_the_measured_bf16_speedup_only_where_bf16_is_native(monkeypatch, tmp_path) -> None:
    import rlbench.measure.flops as flops
    from rlbench.measure.roofline import precision_advice

    peaks = {"fp32": 4e11, "bf16": 3e12}  # an AMX CPU's figures: 3,000 / 400 = 7.5x
    monkeypatch.setattr(flops, "cpu_peak_flops", lambda cache_dir, dtype="fp32", **kw: peaks[dtype])
    line = precision_advice("fp32", "cpu", tmp_path, features=["avx2", "avx512f", "amx_bf16"])
    assert line is not None and "7.5x" in line and "amx_bf16" in line and "model.precision=bf16-mixed" in line
    assert "\n" not in line
    assert precision_advice("fp32", "cpu", tmp_path, features=["avx2", "avx512_bf16"]) is not None
    # No advice: an AVX2 CPU (bf16 slower than fp32), a suite already in bf16, a GPU.
    assert precision_advice("fp32", "cpu", tmp_path, features=["avx2", "fma"]) is None
    assert precision_advice("bf16-mixed", "cpu", tmp_path, features=["amx_bf16"]) is None
    assert precision_advice("fp32", "cuda", tmp_path, features=["amx_bf16"]) is None
