"""The vllm engine against a stand-in with the attributes and methods of the vLLM objects it uses.

The stand-ins copy the shapes of vLLM's classes: `vllm.outputs.RequestOutput` (`outputs`,
`prompt_logprobs`), `vllm.outputs.CompletionOutput` (`index`, `token_ids`, `logprobs` as one
`dict[token_id, Logprob]` per generated token, `finish_reason`), `vllm.logprobs.Logprob`
(`logprob`, `rank`, `decoded_token`), the keyword fields of `vllm.SamplingParams`, and the
`vllm.LLM` methods the engine calls (`generate`, `sleep`, `wake_up`, `reset_prefix_cache`, the RL
weight-update methods, `collective_rpc` into rlbench's worker extension, `update_weight_version`,
and `llm_engine.vllm_config.cache_config`). The real engine is tested in tests/test_vllm_cpu.py
(marked `vllm`, run by `make test-vllm`).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch.testing import assert_close

from rlbench.errors import UserError
from rlbench.models.embedded import build_embedded
from rlbench.models.forward import completion_logprobs
from rlbench.rollout import SamplingParams
from rlbench.rollout.vllm import CPU_SLEEP_REFUSED, VLLMEngine
from rlbench.rollout.vllm_options import AUTO_KV_CAP_GIB, VLLMOptions, auto_kv_cache_bytes
from rlbench.rollout.vllm_requests import kv_bytes_per_token, sampling_kwargs
from rlbench.rollout.vllm_weights import LLMWeightSyncClient
from rlbench.rollout.vllm_worker import safetensors_weights
from rlbench.rollout.weight_names import PolicyWeights, engine_weights
from tests.tolerances import assert_reordered_close, llama_chain_terms

# ---- stand-ins for vLLM's objects -------------------------------------------------------------


@dataclass
class Logprob:  # vllm.logprobs.Logprob
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:  # vllm.outputs.CompletionOutput
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    routed_experts: Any = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class RequestOutput:  # vllm.outputs.RequestOutput
    def __init__(self, request_id: str, prompt: str | None, prompt_token_ids: list[int] | None,
                 prompt_logprobs: list[dict[int, Logprob] | None] | None, outputs: list[CompletionOutput],
                 finished: bool) -> None:
        self.request_id, self.prompt, self.prompt_token_ids = request_id, prompt, prompt_token_ids
        self.prompt_logprobs, self.outputs, self.finished = prompt_logprobs, outputs, finished


@dataclass
class StandInSamplingParams:  # the vllm.SamplingParams keyword fields the engine sets
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = 16
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    seed: int | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    detokenize: bool = True


class RecordingModel:
    """The vLLM model's `load_weights(weights: Iterable[tuple[str, Tensor]])`."""

    def __init__(self) -> None:
        self.loaded: dict[str, torch.Tensor] = {}

    def load_weights(self, weights) -> set[str]:
        for name, tensor in weights:
            self.loaded[name] = tensor.clone()
        return set(self.loaded)


EOS = 2  # the embedded tokenizer's <eos>


@dataclass
class StandInLLM:
    """vllm.LLM's methods used by the engine. Sample j of a request is three scripted tokens
    [10 + j, 11 + j, EOS] (or, for j == 1, four tokens cut by max_tokens), each logged with a
    distractor entry, as vLLM also returns a top token when it differs from the sampled one."""

    calls: list[tuple] = field(default_factory=list)
    model: RecordingModel = field(default_factory=RecordingModel)

    weight_version: str = "0"

    def __post_init__(self) -> None:
        cache_config = SimpleNamespace(num_gpu_blocks=10, block_size=16, cache_dtype="auto")
        self.llm_engine = SimpleNamespace(vllm_config=SimpleNamespace(cache_config=cache_config))

    def collective_rpc(self, method: str, timeout=None, args=(), kwargs=None) -> list:
        """rlbench's worker extension on one worker: weights from a folder of safetensors files (or
        the tensors), the KV bytes its cache config implies."""
        kwargs = kwargs or {}
        if method == "rlbench_load_weights":
            self.calls.append(("collective_rpc", method, sorted(kwargs)))
            weights = kwargs.get("weights") or safetensors_weights(kwargs["weights_path"])
            self.model.load_weights(weights)
            return [0]
        assert method == "rlbench_kv_cache_bytes", method
        return [10 * 16 * 2 * 4 * 4 * 32 * 2]  # blocks x block size x (K and V x layers x heads x dim x 2 bytes)

    def update_weight_version(self, version: str) -> None:
        self.weight_version = version

    def generate(self, prompts, sampling_params, use_tqdm=True):
        self.calls.append(("generate", prompts, sampling_params))
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        outputs = []
        for number, (prompt, p) in enumerate(zip(prompts, params)):
            ids = prompt["prompt_token_ids"]
            prompt_logprobs = None
            if p.prompt_logprobs is not None:
                prompt_logprobs = [None] + [{tok: Logprob(-0.01 * t, rank=1), 99: Logprob(-9.0, rank=2)}
                                            for t, tok in enumerate(ids) if t > 0]
            samples = []
            for j in reversed(range(p.n)):  # out of order: the engine must sort by index
                tokens = [10 + j, 11 + j, 12 + j, 13 + j][:p.max_tokens] if j == 1 else [10 + j, 11 + j, EOS]
                logprobs = [{tok: Logprob(-0.5 * (k + 1) - j, rank=1), 3: Logprob(-7.0, rank=2)}
                            for k, tok in enumerate(tokens)]
                samples.append(CompletionOutput(j, "", tokens, None, logprobs,
                                                finish_reason="length" if j == 1 else "stop"))
            outputs.append(RequestOutput(str(number), None, ids, prompt_logprobs, samples, True))
        return outputs

    def sleep(self, level: int = 1) -> None:
        self.calls.append(("sleep", level))

    def wake_up(self, tags: list[str] | None = None) -> None:
        self.calls.append(("wake_up", tags))

    def reset_prefix_cache(self) -> bool:
        self.calls.append(("reset_prefix_cache",))
        return True

    # vllm.entrypoints.rl.offline.RLOfflineMixin: requests wrap their info dicts
    def init_weight_transfer_engine(self, request: dict) -> None:
        self.calls.append(("init_weight_transfer_engine", request))

    def start_weight_update(self) -> None:
        self.calls.append(("start_weight_update",))

    def update_weights(self, request: dict) -> None:
        self.calls.append(("update_weights", request))

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self.calls.append(("finish_weight_update", weight_version))


def _engine(**options):
    policy, tokenizer = build_embedded(0)
    llm = StandInLLM()
    options = {"dtype": "float32", **options}
    engine = VLLMEngine(policy, tokenizer, llm=llm, sampling_params=StandInSamplingParams, **options)
    return engine, llm, policy, tokenizer


# ---- requests --------------------------------------------------------------------------------


def test_sampling_kwargs():
    sampled = sampling_kwargs(SamplingParams(32, temperature=0.7, top_p=0.9), n=4, seed=11, eos_id=2)
    assert sampled == {"n": 4, "temperature": 0.7, "top_p": 0.9, "max_tokens": 32, "logprobs": 0, "seed": 11,
                       "stop_token_ids": [2], "ignore_eos": False, "detokenize": False}
    greedy = sampling_kwargs(SamplingParams(8, temperature=0.7, top_p=0.9, greedy=True), n=1, seed=None, eos_id=2)
    assert greedy["temperature"] == 0.0 and greedy["top_p"] == 1.0
    StandInSamplingParams(**sampled)  # every key is a SamplingParams field
    fixed = sampling_kwargs(SamplingParams(8, ignore_eos=True), n=2, seed=None, eos_id=2)
    assert fixed["ignore_eos"] is True and fixed["stop_token_ids"] == []


def test_generate_builds_one_request_per_group_and_unpacks_in_order():
    engine, llm, _, tokenizer = _engine()
    a, b = [1, 40, 41, 42], [1, 50]
    rollout = engine.generate([a, b], 2, SamplingParams(max_new_tokens=4), seed=7)

    _, requests, params = llm.calls[0]
    assert requests == [{"prompt_token_ids": a}, {"prompt_token_ids": b}]
    assert [(p.n, p.seed, p.logprobs, p.max_tokens) for p in params] == [(2, 7, 0, 4), (2, 8, 0, 4)]

    # Rows: a/sample 0, a/sample 1, b/sample 0, b/sample 1. Sample 0 is [10, 11, EOS] (stop),
    # sample 1 is [11, 12, 13, 14] (cut by max_tokens), so T = 4 and P = 4 (b is left-padded by 2).
    pad = tokenizer.pad_token_id
    assert rollout.prompt_width == 4
    assert rollout.input_ids.tolist() == [
        [1, 40, 41, 42, 10, 11, EOS, pad],
        [1, 40, 41, 42, 11, 12, 13, 14],
        [pad, pad, 1, 50, 10, 11, EOS, pad],
        [pad, pad, 1, 50, 11, 12, 13, 14],
    ]
    assert rollout.attention_mask.tolist() == [
        [1, 1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1, 1, 1]]
    assert rollout.completion_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]]
    assert rollout.truncated.tolist() == [False, True, False, True]
    assert rollout.lengths.tolist() == [3, 4, 3, 4]
    # The sampled token's Logprob, never the distractor's -7: sample j, token k logs -0.5 (k + 1) - j.
    assert_close(rollout.logprobs, torch.tensor([[-0.5, -1.0, -1.5, 0.0], [-1.5, -2.0, -2.5, -3.0],
                                                 [-0.5, -1.0, -1.5, 0.0], [-1.5, -2.0, -2.5, -3.0]]))
    assert rollout.texts == [tokenizer.decode(t, skip_special_tokens=True)
                             for t in ([10, 11], [11, 12, 13, 14], [10, 11], [11, 12, 13, 14])]


def test_rollout_layout_is_what_the_trainer_scores():
    """Per-token log-probs of the padded batch equal those of each sequence scored on its own."""
    engine, _, policy, _ = _engine()
    a, b = [1, 40, 41, 42], [1, 50]
    rollout = engine.generate([a, b], 2, SamplingParams(max_new_tokens=4))
    policy.eval()
    with torch.no_grad():
        batched = completion_logprobs(policy, rollout.input_ids, rollout.attention_mask, rollout.prompt_width,
                                      rollout.completion_ids)
        for row, (prompt, length) in enumerate(zip([a, a, b, b], rollout.lengths.tolist())):
            completion = rollout.completion_ids[row, :length]
            ids = torch.tensor([prompt + completion.tolist()])
            alone = completion_logprobs(policy, ids, torch.ones_like(ids), len(prompt), completion[None])
            # One row against four per product: k is the decoder chain, forward (tests/tolerances.py).
            terms = llama_chain_terms(policy.config, rollout.input_ids.shape[1], backward=False)
            assert_reordered_close(batched[row, :length], alone[0], terms, float(batched.abs().max()))


def test_score_reads_prompt_logprobs_of_the_completion():
    engine, llm, _, _ = _engine()
    scores = engine.score([[1, 40, 41], [1, 50]], [[60, 61], [70]])
    # Position t of the prompt+completion logs -0.01 t for its own token (distractor 99 at -9).
    assert len(scores) == 2
    assert scores[0] == pytest.approx([-0.03, -0.04]) and scores[1] == pytest.approx([-0.02])
    _, requests, params = llm.calls[-1]
    assert requests == [{"prompt_token_ids": [1, 40, 41, 60, 61]}, {"prompt_token_ids": [1, 50, 70]}]
    assert params.prompt_logprobs == 0 and params.max_tokens == 1 and params.temperature == 1.0


# ---- weights ---------------------------------------------------------------------------------


def test_engine_weights_of_a_plain_model_are_its_checkpoint_names():
    policy, _ = build_embedded(0)
    weights = dict(engine_weights(policy, torch.bfloat16))
    assert list(weights) == [name for name, _ in policy.named_parameters()]
    assert "lm_head.weight" not in weights  # tied to model.embed_tokens.weight: sent once
    assert weights["model.layers.0.self_attn.q_proj.weight"].dtype == torch.bfloat16
    assert_close(weights["model.norm.weight"].float(), policy.model.norm.weight.detach())
    source = PolicyWeights(policy, torch.bfloat16)
    assert source.specs() == [(n, t.dtype, tuple(t.shape)) for n, t in source]  # the two channels agree


def test_sync_loads_every_weight_into_the_engine_model_and_resets_the_prefix_cache():
    engine, llm, policy, _ = _engine()
    assert engine.describe()["weight_sync"] == "collective_rpc:file"  # a CPU engine in child processes
    with torch.no_grad():
        policy.model.layers[0].mlp.down_proj.weight.add_(1.0)  # an "update"
    engine.sync_weights(policy)
    assert set(llm.model.loaded) == {name for name, _ in policy.named_parameters()}
    assert_close(llm.model.loaded["model.layers.0.mlp.down_proj.weight"],
                 policy.model.layers[0].mlp.down_proj.weight.detach())
    engine.generate([[1, 5]], 1, SamplingParams(4))
    assert [c[0] for c in llm.calls] == ["collective_rpc", "reset_prefix_cache", "generate"]  # stale KV dropped first
    assert llm.calls[0] == ("collective_rpc", "rlbench_load_weights", ["weights_path"])  # a path, no tensors
    engine.sync_weights(policy)
    assert engine.version == 2 and llm.weight_version == "2" and engine.describe()["weight_version"] == 2


def test_inline_sync_passes_the_tensors_themselves():
    engine, llm, policy, _ = _engine(options=VLLMOptions(dtype="float32", inline=True))
    engine.sync_weights(policy)
    assert engine.describe()["weight_sync"] == "collective_rpc:inline"
    assert llm.calls == [("collective_rpc", "rlbench_load_weights", ["weights"])]
    assert set(llm.model.loaded) == {name for name, _ in policy.named_parameters()}


def test_sleep_is_refused_on_a_cpu_with_one_line():
    policy, tokenizer = build_embedded(0)
    with pytest.raises(UserError) as error:
        VLLMEngine(policy, tokenizer, llm=StandInLLM(), sampling_params=StandInSamplingParams,
                   sleep_between_phases=True)
    assert str(error.value) == CPU_SLEEP_REFUSED and "\n" not in CPU_SLEEP_REFUSED


def test_sleep_between_phases_frees_the_engine_and_wakes_weights_before_loading():
    engine, llm, policy, _ = _engine()
    engine.sleep_between_phases = True  # what a GPU engine does (a CPU one refuses it, above)
    engine.generate([[1, 5]], 1, SamplingParams(4))
    engine.sync_weights(policy)
    engine.generate([[1, 5]], 1, SamplingParams(4))
    assert [c[0] for c in llm.calls] == ["generate", "sleep", "wake_up", "collective_rpc", "wake_up",
                                         "reset_prefix_cache", "generate", "sleep"]
    assert llm.calls[1] == ("sleep", 1)
    assert llm.calls[2] == ("wake_up", ["weights"])  # weights back before they are overwritten
    assert llm.calls[4] == ("wake_up", ["kv_cache"])  # the KV cache only when generating again
    assert len(llm.model.loaded) > 0


def test_weight_sync_client_wraps_infos_as_the_llm_methods_expect():
    llm = StandInLLM()
    client = LLMWeightSyncClient(llm)
    client.init_weight_transfer_engine({"packed": False})
    client.start_weight_update()
    client.update_weights({"names": ["w"], "dtype_names": ["bfloat16"], "shapes": [[2]], "ipc_handles": [{}]})
    client.finish_weight_update("step-3")
    assert llm.calls == [
        ("init_weight_transfer_engine", {"init_info": {"packed": False}}),
        ("start_weight_update",),
        ("update_weights", {"update_info": {"names": ["w"], "dtype_names": ["bfloat16"], "shapes": [[2]],
                                            "ipc_handles": [{}]}}),
        ("finish_weight_update", "step-3"),
    ]


@pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="needs peft (pip install peft)")
def test_lora_weights_are_merged_under_the_base_names():
    import peft

    from rlbench.models.embedded import embedded_config

    policy, tokenizer = build_embedded(0)
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    lora_policy = peft.get_peft_model(policy, config)
    with torch.no_grad():
        for name, param in lora_policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)
    weights = dict(engine_weights(lora_policy))
    plain_names = [n for n, _ in build_embedded(0)[0].named_parameters()]
    assert list(weights) == plain_names  # no base_model.model. prefix, no .base_layer, no lora_ matrices

    # q_proj of layer 0: W + (alpha / r) B @ A = W + 2 B @ A
    layer = lora_policy.base_model.model.model.layers[0].self_attn.q_proj
    expected = layer.base_layer.weight + 2.0 * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    assert_close(weights["model.layers.0.self_attn.q_proj.weight"], expected.detach())

    # A plain model holding the engine weights computes what the adapted policy computes.
    from transformers import LlamaForCausalLM

    plain = LlamaForCausalLM(embedded_config(len(tokenizer), tokenizer.pad_token_id, tokenizer.bos_token_id,
                                             tokenizer.eos_token_id))
    missing, unexpected = plain.load_state_dict(weights, strict=False)
    assert set(missing) <= {"lm_head.weight"} and not unexpected
    ids = torch.tensor([[1, 20, 30, 40, 50]])
    lora_policy.eval()
    with torch.no_grad():
        merged, adapted = plain.eval()(input_ids=ids).logits, lora_policy(input_ids=ids).logits
    # W x + 2 B (A x) against (W + 2 B A) x: the r = 2 adapter terms join each q/v sum in another order
    # and the merged weight is rounded once more; k is the decoder chain, forward, plus r per layer.
    terms = llama_chain_terms(plain.config, ids.shape[1], backward=False) + 2 * plain.config.num_hidden_layers
    assert_reordered_close(merged, adapted, terms)


# ---- memory ----------------------------------------------------------------------------------


def test_kv_bytes_per_token_by_hand():
    # Qwen2.5-0.5B: 24 layers, 2 KV heads, head dim 896 / 14 = 64, bf16: 2 x 24 x 2 x 64 x 2 = 12,288 bytes.
    qwen = SimpleNamespace(num_hidden_layers=24, num_key_value_heads=2, hidden_size=896, num_attention_heads=14)
    assert kv_bytes_per_token(qwen, 2) == 12_288


def test_auto_kv_cache_holds_the_rows_at_the_longest_length():
    # Embedded model in fp32: 2 x 4 layers x 4 heads x 32 dims x 4 bytes = 4,096 bytes per token. 64 rows of
    # 560 tokens, each rounded up to 5 blocks of 128 = 640 tokens: 64 x 640 x 4,096 = 167,772,160 = 160 MiB.
    assert auto_kv_cache_bytes(64, 560, 4096) == 160 << 20
    assert auto_kv_cache_bytes(1, 10, 4096) == 1 << 20  # 128 x 4,096 = 512 KiB, rounded up to whole MiB
    assert auto_kv_cache_bytes(10**6, 560, 4096) == int(AUTO_KV_CAP_GIB * (1 << 30))  # capped


def test_memory_bytes_are_the_engine_weights_and_its_kv_cache():
    engine, _, _, _ = _engine(dtype="bfloat16")
    # Embedded model: per layer q, k, v, o 4 x 128 x 128 = 65,536, MLP 3 x 128 x 384 = 147,456, two
    # norms 256: 213,248; x 4 layers = 852,992; tied embedding 398 x 128 = 50,944 (104 characters,
    # tags and special tokens, 294 word tokens); final norm 128. 904,064 parameters x 2 bytes (bf16)
    # = 1,808,128.
    # KV cache: 10 blocks x 16 tokens x (2 x 4 layers x 4 heads x 32 dims x 2 bytes = 2,048) = 327,680.
    assert engine.memory_bytes() == {"weights": 1_808_128, "kv_cache": 327_680}


# ---- without vllm ----------------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_without_vllm_the_engine_is_a_user_error_naming_the_extra():
    policy, tokenizer = build_embedded(0)
    with pytest.raises(UserError, match="extra 'vllm'"):
        VLLMEngine(policy, tokenizer, model_path="/nonexistent", dtype="float32")
