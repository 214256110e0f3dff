"""What the `vllm`-marked tests share: the skip rule, the models they load, the tolerance derivation.

The tests run with vLLM's CPU build (`make test-vllm` builds .venv-vllm with it) and are skipped,
with the reason, where vLLM cannot run: not installed (the default `make test`), a GPU build on a
machine without a GPU, or a CPU without the AVX2/AVX-512 kernels its wheel carries.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from rlbench.models.forward import completion_logprobs


def vllm_skip_reason() -> str | None:
    """Why vLLM cannot run here, or None."""
    if importlib.util.find_spec("vllm") is None:
        return "needs vllm (vLLM's CPU build: `make test-vllm` builds .venv-vllm with it)"
    from rlbench.requirements import cpu_flags, vllm_cpu_build

    if torch.cuda.is_available():
        return None
    if not vllm_cpu_build():
        return "the installed vllm is not vLLM's CPU build and there is no GPU"
    flags = cpu_flags()
    if flags is not None and not flags & {"avx2", "avx512f"}:
        return "vLLM's CPU kernels need AVX2 or AVX-512"
    return None


REASON = vllm_skip_reason()
VLLM = [pytest.mark.vllm, pytest.mark.skipif(REASON is not None, reason=REASON or "")]
"""`pytestmark` of every vllm test module."""

QWEN2_2LAYER = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864,
    "num_hidden_layers": 2, "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
    "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": True,
    "hidden_act": "silu", "torch_dtype": "bfloat16", "use_sliding_window": False,
}
"""Qwen2.5-0.5B's config cut to 2 layers: the real vocabulary (151,936) and widths, tied embeddings."""


def write_qwen2_config(folder: Path) -> Path:
    import json

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.json"
    path.write_text(json.dumps(QWEN2_2LAYER))
    return path


def teacher_forced_logprobs(policy: torch.nn.Module, prompt: list[int], completion: list[int],
                            temperature: float = 1.0) -> torch.Tensor:
    """The policy's log-probs of `completion` after `prompt` (one sequence, no padding), as float32."""
    ids = torch.tensor([prompt + completion])
    was_training = policy.training
    policy.eval()
    with torch.no_grad():
        out = completion_logprobs(policy, ids, torch.ones_like(ids), len(prompt), ids[:, len(prompt):], temperature)
    policy.train(was_training)
    return out[0].float()


def bf16_tolerance(policy_fp32: torch.nn.Module, prompt: list[int], completion: list[int]) -> float:
    """Largest log-prob difference two bf16 engines may show on these tokens, derived from the model.

    Both engines store every matmul input and output in bf16 and accumulate in fp32; they round in
    different places (vLLM fuses qkv and gate/up, has its own attention and RMSNorm kernels). Each
    one's distance to the fp32 result is the accumulated effect of its roundings: measured here
    for the hf computation as d = max |logp_bf16 - logp_fp32| on these very tokens. vLLM rounds at
    no more places, so its distance to fp32 is of the same size, but at other places: allow it
    twice d. By the triangle inequality |vllm - hf| <= |vllm - fp32| + |fp32 - hf| <= 2d + d = 3d.
    """
    reference = teacher_forced_logprobs(policy_fp32, prompt, completion)
    bf16 = teacher_forced_logprobs(_copy(policy_fp32).to(torch.bfloat16), prompt, completion)
    return 3 * float((bf16 - reference).abs().max())


def fp32_tolerance(config, logit_scale: float) -> float:
    """Largest log-prob difference two fp32 engines may show, derived from the computation.

    Both accumulate dot products of length K in fp32 in different orders (oneDNN against MKL and
    their own attention kernels): each sum may differ by up to K x 2^-24 of the sum of its terms'
    magnitudes (Higham's bound for recursive summation). Along the residual stream the errors of
    every matmul add up undamped: 6 matmul outputs per layer (q, k, v, o, gate/up, down) and the LM
    head, on each of the two engines: 2 (6L + 1) K 2^-24 relative to the activations' scale. With
    the logits' scale z_max (|logits| of this model), log-softmax at most doubles an absolute
    logit error: tolerance = 2 x 2 (6L + 1) K 2^-24 z_max, with z_max the largest |logit| of the
    compared positions (`logit_scale`) and K the widest matmul.
    """
    widest = max(config.hidden_size, config.intermediate_size)
    return 2 * 2 * (6 * config.num_hidden_layers + 1) * widest * 2.0**-24 * logit_scale


def logit_scale(policy: torch.nn.Module, prompt: list[int], completion: list[int]) -> float:
    """The largest |logit| the policy gives at the positions that predict `completion`."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = policy.eval()(input_ids=ids).logits[0, len(prompt) - 1:-1]
    policy.train()
    return float(logits.float().abs().max())


def _copy(module: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(module)
