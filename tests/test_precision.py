"""model.precision: fp32 master weights and moments make small updates stick where pure bf16 rounds
them away; bf16-mixed samples with the numbers it trains with."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rlbench.config import ModelConfig
from rlbench.models.forward import completion_logprobs, packed_logits
from rlbench.models.loading import embedded_base_dir, load_causal_lm, load_policy
from rlbench.models.optim import adamw
from rlbench.models.precision import resolve_precision
from rlbench.rollout import SamplingParams, hf
from rlbench.rollout.hf import HFEngine


def test_auto_precision_follows_the_dtype() -> None:
    assert resolve_precision(ModelConfig(dtype="float32")).name == "fp32"
    assert resolve_precision(ModelConfig(dtype="bfloat16")).name == "bf16-mixed"
    assert resolve_precision(ModelConfig(dtype="float16")).name == "fp16-pure"
    mixed = resolve_precision(ModelConfig(dtype="bfloat16", precision="bf16-mixed"))
    assert mixed.parameter_dtype(trained=True) == torch.float32  # master weights
    assert mixed.parameter_dtype(trained=False) == torch.bfloat16  # frozen roles
    assert mixed.compute_dtype == torch.bfloat16
    pure = resolve_precision(ModelConfig(dtype="bfloat16", precision="bf16-pure"))
    assert pure.parameter_dtype(trained=True) == torch.bfloat16 and pure.compute_dtype is None


def train_steps(cfg: ModelConfig, steps: int, lr: float) -> tuple[float, torch.nn.Module]:
    """`steps` AdamW steps of next-token loss on fixed random sequences through the packed forward;
    returns the fraction of weight elements that changed, and the policy."""
    precision = resolve_precision(cfg)
    policy, _ = load_policy(embedded_base_dir(), cfg, precision)
    before = [p.detach().clone() for p in policy.parameters()]
    optimizer = adamw(policy.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(8, 300, (8, 24), generator=generator)
    mask = torch.ones_like(ids)
    for _ in range(steps):
        with precision.context("cpu"):
            logits, where = packed_logits(policy, ids, mask, prompt_width=8)
            loss = F.cross_entropy(logits.float(), ids[:, 8:].flatten()[where])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    changed = sum(int((p.detach() != b).sum()) for p, b in zip(policy.parameters(), before))
    return changed / sum(b.numel() for b in before), policy


def test_bf16_mixed_trains_at_lr_1e6_where_bf16_pure_barely_moves() -> None:
    mixed, mixed_policy = train_steps(ModelConfig(dtype="bfloat16", precision="bf16-mixed"), steps=3, lr=1e-6)
    pure, pure_policy = train_steps(ModelConfig(dtype="bfloat16", precision="bf16-pure"), steps=3, lr=1e-6)
    assert next(mixed_policy.parameters()).dtype == torch.float32
    assert next(pure_policy.parameters()).dtype == torch.bfloat16
    # Adam's first steps move every weight by about lr (1e-6); a bf16 weight of size ~0.08 has a step
    # of 2^-11 (~5e-4), so pure bf16 rounds nearly all of these updates away. Measured: 1.0 vs 0.005.
    assert mixed > 0.95
    assert pure < 0.05


def test_bf16_mixed_samples_with_the_numbers_autocast_gives(monkeypatch) -> None:
    cfg = ModelConfig(dtype="bfloat16", precision="bf16-mixed")
    precision = resolve_precision(cfg)
    policy, tokenizer = load_policy(embedded_base_dir(), cfg, precision)
    engine = HFEngine(policy, tokenizer)
    prompts = [tokenizer("Q: Mia has 12 apples.\n")["input_ids"], tokenizer("Q: 3 times 4?\n")["input_ids"]]
    params = SamplingParams(max_new_tokens=12)
    with precision.context("cpu"):
        cast_once = engine.generate(prompts, 2, params, seed=0)
        recomputed = completion_logprobs(policy, cast_once.input_ids, cast_once.attention_mask,
                                         cast_once.prompt_width, cast_once.completion_ids, group_size=2)
        monkeypatch.setattr(hf, "cast_linears", lambda parts, dtype: parts)  # let autocast cast at every call
        cast_by_autocast = engine.generate(prompts, 2, params, seed=0)
    # Casting the linear weights once per generate call is exactly what autocast computes: autocast
    # rounds each fp32 weight to bf16 as .to(bfloat16) does, and both paths then call the same
    # kernels, in this process, on bitwise-equal tensors of the same shapes and strides. That makes
    # the results bitwise equal on any CPU whose kernels are deterministic for equal inputs and
    # thread counts (MKL, oneDNN and ATen's own are), whichever ISA they were chosen for.
    assert torch.equal(cast_once.completion_ids, cast_by_autocast.completion_ids)
    assert torch.equal(cast_once.logprobs, cast_by_autocast.logprobs)
    assert {p.dtype for p in policy.parameters()} == {torch.float32}  # the copies were the call's own
    # The training forward under autocast agrees up to bf16 rounding in another order of operations.
    # A logit passes through R = 50 roundings to bfloat16 (per layer: the input casts and outputs of
    # the q, score, value and o products, the MLP's input cast, gate, SiLU, product and down output;
    # then the LM head's two), each within u = 2^-8 of the value rounded (activations are of the
    # logits' size). Taken as independent (Higham's rule of thumb for rounding errors), one path's
    # logit is off by u sqrt(R / 3) |logit| (one standard deviation), a log-prob (logit less a
    # log-sum-exp) by up to twice that, two paths' difference sqrt(2) times that: at 4 standard
    # deviations 4 sqrt(2) 2 u sqrt(R / 3) max |logit| = 0.67 here (max |logit| = 3.7). Measured: 0.031
    # (AMD EPYC, AVX2), 0.033 (ATEN_CPU_CAPABILITY=default). The bitwise checks above carry the
    # precision claim: at this size fp32 sampling would also be within 0.05 of the bf16 training forward.
    with torch.no_grad():
        logits, _ = packed_logits(policy, cast_once.input_ids, cast_once.attention_mask, cast_once.prompt_width, 2)
    bf16_u, roundings = torch.finfo(torch.bfloat16).eps / 2, 50
    tolerance = 4 * 2**0.5 * 2 * bf16_u * (roundings / 3) ** 0.5 * float(logits.abs().max())
    mask = cast_once.completion_mask.bool()
    assert (cast_once.logprobs - recomputed)[mask].abs().max() < tolerance


@pytest.mark.parametrize("precision,trained,dtype", [
    ("bf16-mixed", True, torch.float32), ("bf16-mixed", False, torch.bfloat16), ("bf16-pure", True, torch.bfloat16),
])
def test_roles_load_in_their_precision(precision: str, trained: bool, dtype: torch.dtype) -> None:
    cfg = ModelConfig(dtype="bfloat16", precision=precision)
    model = load_causal_lm(embedded_base_dir(), cfg, resolve_precision(cfg), trainable=trained)
    assert {p.dtype for p in model.parameters()} == {dtype}


def test_precision_and_dtype_must_agree() -> None:
    from rlbench.config import load_suite
    from rlbench.errors import UserError

    tiny = "tests/data/tiny.yaml"
    assert load_suite(tiny, ["model.dtype=bfloat16", "model.precision=bf16-pure"]).model.precision == "bf16-pure"
    with pytest.raises(UserError, match="model.precision: bf16-mixed needs model.dtype bfloat16, got float32"):
        load_suite(tiny, ["model.precision=bf16-mixed"])


def _two_steps_in_one_phase(precision, model: torch.nn.Module) -> tuple[list[torch.Tensor], list[list]]:
    """Two forward/backward/step rounds inside one phase's precision context, as PPO's minibatches
    run: each round's output, and after each backward the gradients each parameter holds."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    x = torch.linspace(-1.0, 1.0, 32).reshape(4, 8)
    outputs, grads = [], []
    with precision.context("cpu"):
        for _ in range(2):
            out = model(x)
            outputs.append(out.detach().float())
            out.float().square().sum().backward()
            grads.append([p.grad for p in model.parameters()])
            optimizer.step()
            optimizer.zero_grad()
    return outputs, grads


def test_a_step_inside_a_phase_reaches_the_next_forward_under_bf16_mixed() -> None:
    # With autocast's cast cache on, the second forward reuses the bf16 copy of the weights made
    # before the step and returns exactly the first output (a step of lr 0.5 moves these weights by
    # far more than a bf16 rounding step, so the outputs must differ).
    precision = resolve_precision(ModelConfig(dtype="bfloat16", precision="bf16-mixed"))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))
    outputs, _ = _two_steps_in_one_phase(precision, model)
    assert not torch.equal(outputs[0], outputs[1])


def test_fsdp2_reduces_every_layer_s_gradients_at_every_step_under_bf16_mixed() -> None:
    # FSDP2 reduce-scatters a unit's gradients in its post-backward hook. A cached bf16 copy made
    # in the first round carries the first round's autograd node, which runs last in the second
    # round's backward: the layers' gradients then arrive after their hooks and are never reduced
    # (each layer's sharded gradient stays None and the full unsharded one stays allocated).
    import torch.distributed as c10d
    from torch.distributed.fsdp import fully_shard

    precision = resolve_precision(ModelConfig(dtype="bfloat16", precision="bf16-mixed"))
    c10d.init_process_group("gloo", store=c10d.HashStore(), rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))
        for layer in model:
            fully_shard(layer)
        fully_shard(model)
        outputs, grads = _two_steps_in_one_phase(precision, model)
    finally:
        c10d.destroy_process_group()
    assert not torch.equal(outputs[0], outputs[1])
    for step in grads:
        assert all(g is not None for g in step), "a layer's sharded gradient was never reduced"
