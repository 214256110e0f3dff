"""Static bytes of a role, on a tiny real Llama with tied embeddings and AdamW."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rlbench.measure.static import dedupe_bytes, optimizer_state_tensors, role_static_bytes

# Hand count for the config below (hidden 32, intermediate 64, 2 layers, vocab 50, tied head):
#   embedding 50*32                                  =  1,600
#   per layer: q,k,v,o 4*32*32 = 4,096; gate,up,down 3*32*64 = 6,144; two norms 2*32 = 64
#                                                    = 10,304, x2 layers = 20,608
#   final norm                                       =     32
#   lm_head: tied to the embedding                   =      0
#   total 22,240 parameters x 4 bytes (fp32)         = 88,960 bytes, in 20 parameter tensors
WEIGHT_BYTES = 88_960
PARAMETER_TENSORS = 20


def tiny_llama(tie: bool = True) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=50,
        tie_word_embeddings=tie,
    )
    return LlamaForCausalLM(config)


def one_adamw_step(model: LlamaForCausalLM) -> torch.optim.AdamW:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 50, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    return optimizer


def test_llama_with_adamw_after_one_step() -> None:
    model = tiny_llama()
    optimizer = one_adamw_step(model)
    static = role_static_bytes(model, optimizer)

    # Tied weights counted once: the head is the embedding's Parameter, and the figure equals
    # the unique storages summed independently (and the hand count).
    assert model.lm_head.weight is model.model.embed_tokens.weight
    unique_storages = {
        p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()
    }
    assert static["weights"] == sum(unique_storages.values()) == WEIGHT_BYTES

    assert static["gradients"] == static["gradients_expected"] == WEIGHT_BYTES
    # AdamW: exp_avg + exp_avg_sq = 2 x weights, plus a 0-d fp32 `step` per parameter tensor:
    # 2 * 88,960 + 20 * 4 = 178,000.
    assert len(optimizer.state) == PARAMETER_TENSORS
    step_bytes = sum(state["step"].untyped_storage().nbytes() for state in optimizer.state.values())
    assert step_bytes == PARAMETER_TENSORS * 4
    assert static["optimizer"] == 2 * WEIGHT_BYTES + step_bytes == 178_000

    buffer_bytes = sum(b.numel() * b.element_size() for b in model.buffers())  # rotary frequencies
    assert static["buffers"] == buffer_bytes > 0
    assert static["total"] == WEIGHT_BYTES + WEIGHT_BYTES + 178_000 + buffer_bytes


def test_untied_head_adds_its_own_weights() -> None:
    # An untied lm_head adds 50*32 = 1,600 parameters = 6,400 bytes.
    assert role_static_bytes(tiny_llama(tie=False))["weights"] == WEIGHT_BYTES + 6_400


def test_gradients_before_backward_and_after_zero_grad() -> None:
    model = tiny_llama()
    fresh = role_static_bytes(model)
    assert fresh["gradients"] == 0 and fresh["optimizer"] == 0
    assert fresh["gradients_expected"] == WEIGHT_BYTES
    optimizer = one_adamw_step(model)
    optimizer.zero_grad(set_to_none=True)
    after = role_static_bytes(model, optimizer)
    assert after["gradients"] == 0 and after["optimizer"] == 178_000


def test_frozen_reference_expects_no_gradients() -> None:
    model = tiny_llama().requires_grad_(False)
    static = role_static_bytes(model)
    assert static["weights"] == WEIGHT_BYTES
    assert static["gradients_expected"] == 0
    assert static["total"] == WEIGHT_BYTES + static["buffers"]


def test_meta_model_counts_like_a_real_one() -> None:
    # `rlbench estimate` can size a model without allocating it.
    with torch.device("meta"):
        model = tiny_llama()
    assert role_static_bytes(model)["weights"] == WEIGHT_BYTES


def test_dedupe_counts_each_storage_once() -> None:
    base = torch.zeros(100)  # 400 bytes
    # Views share the storage; a view of part of it still keeps all 400 bytes alive.
    assert dedupe_bytes([base, base[:10], base.view(10, 10), base[50:]]) == 400
    # Two Parameters made from slices of one tensor share its storage.
    halves = [torch.nn.Parameter(base[:50]), torch.nn.Parameter(base[50:])]
    assert dedupe_bytes(halves) == 400
    # Distinct tensors of equal size are both counted: 400 + 400.
    assert dedupe_bytes([torch.zeros(100), torch.zeros(100)]) == 800
    # Meta tensors have no data pointer; they are still told apart: 4 * 4 + 4 * 4.
    with torch.device("meta"):
        a, b = torch.empty(4), torch.empty(4)
    assert dedupe_bytes([a, b, a]) == 32
    # `seen` skips storages counted earlier.
    seen: set[tuple[str, int]] = set()
    assert dedupe_bytes([base], seen) == 400
    assert dedupe_bytes([base[:3], torch.zeros(2)], seen) == 8


def test_two_storage_objects_over_the_same_memory_count_once() -> None:
    import numpy as np

    array = np.zeros(100, dtype=np.float32)  # 400 bytes
    a, b = torch.from_numpy(array), torch.from_numpy(array)  # two storages, one buffer
    assert a.untyped_storage()._cdata != b.untyped_storage()._cdata
    assert a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    assert dedupe_bytes([a, b]) == 400
    seen: set[tuple[str, int]] = set()
    assert dedupe_bytes([a], seen) == 400 and dedupe_bytes([b], seen) == 0  # known by its memory too


@pytest.mark.filterwarnings("ignore:Accessing the data pointer of FakeTensor")
def test_fake_tensors_are_told_apart() -> None:
    # Fake tensors (what `rlbench estimate` traces on) all have data pointer 0; each storage still
    # counts once: 4 * 100 + 4 * 100, the view of the first adding nothing.
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        a, b = torch.zeros(100), torch.zeros(100)
        view = a[10:]
    assert a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr() == 0
    assert dedupe_bytes([a, b, view, a]) == 800


def test_fake_llama_with_adamw_matches_the_real_count() -> None:
    # The same hand count as the real model (weights, gradients, AdamW state), on fake tensors.
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    with FakeTensorMode():
        model = tiny_llama()
        optimizer = one_adamw_step(model)
    assert all(isinstance(p, FakeTensor) for p in model.parameters())
    static = role_static_bytes(model, optimizer)
    assert static["weights"] == static["gradients"] == WEIGHT_BYTES
    assert static["optimizer"] == 2 * WEIGHT_BYTES + PARAMETER_TENSORS * 4


@pytest.mark.parametrize("nested", [False, True])
def test_optimizer_state_tensors_walks_nested_state(nested: bool) -> None:
    weight = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    momentum = torch.zeros(3)
    optimizer.state[weight] = {"buffers": [momentum, (torch.zeros(1),)]} if nested else {"momentum": momentum}
    tensors = list(optimizer_state_tensors(optimizer))
    assert tensors[0] is momentum
    assert len(tensors) == (2 if nested else 1)


# ---- per precision, through the loading path every run uses --------------------------------------
# The same tiny Llama (22,240 parameters in 20 tensors) saved and loaded as a role:
#   fp32        weights 4 B/param = 88,960; grads 88,960; AdamW 2 x 88,960 + 20 x 4 = 178,000
#   bf16-mixed  trained: master 4 B/param = 88,960 (no persistent bf16 copy), grads 88,960 (fp32),
#               AdamW 178,000 (fp32 moments): 16 B/param in all; frozen: weights 2 B/param = 44,480
#   bf16-pure   weights 44,480; grads 44,480; AdamW 2 x 44,480 + 20 x 4 (fp32 steps) = 89,040
PER_PRECISION = {
    ("float32", "fp32", True): dict(weights=88_960, master=0, gradients=88_960, optimizer=178_000),
    ("float32", "fp32", False): dict(weights=88_960, master=0, gradients=0, optimizer=0),
    ("bfloat16", "bf16-mixed", True): dict(weights=0, master=88_960, gradients=88_960, optimizer=178_000),
    ("bfloat16", "bf16-mixed", False): dict(weights=44_480, master=0, gradients=0, optimizer=0),
    ("bfloat16", "bf16-pure", True): dict(weights=44_480, master=0, gradients=44_480, optimizer=89_040),
    ("bfloat16", "bf16-pure", False): dict(weights=44_480, master=0, gradients=0, optimizer=0),
}


@pytest.mark.parametrize("dtype,precision,trained", list(PER_PRECISION))
def test_static_bytes_per_precision_are_exact(tmp_path, dtype: str, precision: str, trained: bool) -> None:
    from rlbench.config import ModelConfig
    from rlbench.models.loading import load_causal_lm
    from rlbench.models.optim import adamw
    from rlbench.models.precision import resolve_precision

    tiny_llama().save_pretrained(tmp_path)
    resolved = resolve_precision(ModelConfig(dtype=dtype, precision=precision))
    model = load_causal_lm(tmp_path, ModelConfig(dtype=dtype, precision=precision), resolved, trainable=trained)
    model.requires_grad_(trained)
    optimizer = None
    if trained:
        optimizer = adamw(model.parameters(), lr=1e-3)
        ids = torch.randint(0, 50, (2, 8))
        with resolved.context("cpu"):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
    static = role_static_bytes(model, optimizer, resolved.compute_dtype)
    expected = PER_PRECISION[(dtype, precision, trained)]
    assert {k: static[k] for k in expected} == expected
    assert static["total"] == sum(expected.values()) + static["buffers"]
