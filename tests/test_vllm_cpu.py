"""The `vllm` engine against a real vLLM (its CPU build): generation, sampling parameters, weight sync.

Run by `make test-vllm` (marked `vllm`; skipped with the reason where vLLM cannot run). Two engines
on the embedded model: fp32 with vLLM inline (engine core and worker in this process: weights
passed by reference) and bf16 in vLLM's own layout (engine core and worker in child processes:
weights through a file in shared memory). After a policy update, vLLM's greedy tokens and per-token
log-probs equal the hf engine's on the same weights, within tolerances derived in
tests/vllm_support.py, and differ from those before the update.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from rlbench.models.embedded import build_embedded, save_pretrained_pair
from rlbench.rollout import SamplingParams
from rlbench.rollout.hf import HFEngine
from tests.vllm_support import VLLM, bf16_tolerance, fp32_tolerance, logit_scale, teacher_forced_logprobs

pytestmark = VLLM

PROMPT_TEXT = "Q: Tom has 3 apples and buys 4 more. How many apples does he have?\n"
MAX_MODEL_LEN = 128


def _engine(policy, tokenizer, path, **options):
    from rlbench.rollout.vllm import VLLMEngine
    from rlbench.rollout.vllm_options import VLLMOptions

    return VLLMEngine(policy, tokenizer, model_path=path, options=VLLMOptions(kv_rows=8, **options),
                      max_model_len=MAX_MODEL_LEN, seed=0)


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    """(engine, policy, tokenizer, prompt): the embedded model in fp32, vLLM inline."""
    policy, tokenizer = build_embedded(0)
    path = save_pretrained_pair(policy, tokenizer, tmp_path_factory.mktemp("embedded-fp32"))
    engine = _engine(policy, tokenizer, path, dtype="float32", inline=True)
    yield engine, policy, tokenizer, tokenizer(PROMPT_TEXT)["input_ids"]
    engine.close()


def _greedy(engine, prompt, n_tokens=24):
    rollout = engine.generate([prompt], 1, SamplingParams(n_tokens, greedy=True))
    length = int(rollout.lengths[0])
    return rollout.completion_ids[0, :length].tolist(), rollout.logprobs[0, :length].float()


def _perturb(policy, scale: float, seed: int) -> None:
    """An "update" that moves every weight (more than any rounding could)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in policy.parameters():
            param.add_(torch.randn(param.shape, generator=generator).to(param.dtype) * scale)


def _agree(tokens, logprobs, hf_tokens, hf_logprobs, reference, tolerance):
    """vLLM's greedy tokens equal the hf engine's, and its log-probs the policy's on them, within tolerance."""
    assert tokens == hf_tokens
    assert (logprobs - reference).abs().max() <= tolerance
    assert (logprobs - hf_logprobs).abs().max() <= tolerance


# ---- generation and sampling parameters (fp32, inline) ----------------------------------------------


def test_generate_lays_rows_out_like_the_hf_engine(fp32):
    engine, policy, tokenizer, prompt = fp32
    other = prompt[:-3]
    rollout = engine.generate([prompt, other], 3, SamplingParams(10, ignore_eos=True), seed=1)
    assert rollout.completion_ids.shape == (6, 10)  # n = 3 rows per prompt, max_new_tokens columns
    assert rollout.prompt_width == len(prompt)
    assert rollout.input_ids[3:, :3].tolist() == [[tokenizer.pad_token_id] * 3] * 3  # left-padded shorter prompt
    assert rollout.input_ids[0, :len(prompt)].tolist() == prompt and rollout.input_ids[3, 3:len(prompt)].tolist() == other
    assert rollout.lengths.tolist() == [10] * 6 and rollout.truncated.all()  # ignore_eos: all run to max tokens
    assert len(rollout.texts) == 6 and rollout.texts[0] == tokenizer.decode(rollout.completion_ids[0],
                                                                            skip_special_tokens=True)
    # The sampled tokens' log-probs are the policy's (temperature 1), within the fp32 tolerance.
    completion = rollout.completion_ids[0].tolist()
    reference = teacher_forced_logprobs(policy, prompt, completion)
    assert (rollout.logprobs[0] - reference).abs().max() <= fp32_tolerance(
        policy.config, logit_scale(policy, prompt, completion))


def test_max_tokens_and_stop_at_eos_keep_the_eos(fp32):
    engine, policy, tokenizer, prompt = fp32
    tokens, _ = _greedy(engine, prompt, 12)
    assert len(tokens) == 12  # an untrained model: EOS (one token in 448) does not come within 12 greedy tokens
    # Make a greedy token that first appears at position k >= 2 the EOS: generation stops there, keeps
    # it (k + 1 tokens), and is not truncated.
    k = next(i for i in range(2, len(tokens)) if tokens[i] not in tokens[:i])
    eos = SimpleNamespace(eos_token_id=tokens[k], pad_token_id=tokenizer.pad_token_id, batch_decode=tokenizer.batch_decode)
    engine.tokenizer = eos
    try:
        stopped = engine.generate([prompt], 1, SamplingParams(12, greedy=True))
        ignoring = engine.generate([prompt], 1, SamplingParams(12, greedy=True, ignore_eos=True))
    finally:
        engine.tokenizer = tokenizer
    assert stopped.lengths.tolist() == [k + 1] and stopped.completion_ids[0, :k + 1].tolist() == tokens[:k + 1]
    assert not stopped.truncated[0] and stopped.completion_mask[0].tolist() == [1.0] * (k + 1)
    hf = HFEngine(policy, eos).generate([prompt], 1, SamplingParams(12, greedy=True))
    assert hf.lengths.tolist() == [k + 1] and not hf.truncated[0]  # the hf engine stops at the same place
    assert ignoring.lengths.tolist() == [12] and ignoring.truncated[0]


def test_seeds_repeat_and_differ(fp32):
    engine, _, _, prompt = fp32
    params = SamplingParams(12, temperature=1.0, ignore_eos=True)
    a = engine.generate([prompt], 4, params, seed=7).completion_ids
    b = engine.generate([prompt], 4, params, seed=7).completion_ids
    c = engine.generate([prompt], 4, params, seed=8).completion_ids
    assert torch.equal(a, b)  # same seed, same tokens
    assert not torch.equal(a, c)  # 4 x 12 draws over 448 tokens: a coincidence has probability ~1e-100
    assert len({tuple(row) for row in a.tolist()}) == 4  # the n samples of one request differ


def test_temperature_scales_the_logprobs_and_top_p_keeps_the_nucleus(fp32):
    engine, policy, _, prompt = fp32
    hot = engine.generate([prompt], 2, SamplingParams(12, temperature=0.7, ignore_eos=True), seed=3)
    for row in range(2):  # log-probs under logits / 0.7, as the trainer computes them
        completion = hot.completion_ids[row].tolist()
        reference = teacher_forced_logprobs(policy, prompt, completion, temperature=0.7)
        tolerance = fp32_tolerance(policy.config, logit_scale(policy, prompt, completion) / 0.7)
        assert (hot.logprobs[row] - reference).abs().max() <= tolerance
    # top_p = 0.001: every next-token probability of this untrained model is above 0.001 for its top token
    # (log-probs near -3.5), so the nucleus is the top token alone and sampling is greedy.
    greedy_tokens, _ = _greedy(engine, prompt, 12)
    narrow = engine.generate([prompt], 3, SamplingParams(12, top_p=0.001, ignore_eos=True), seed=5)
    assert narrow.completion_ids.tolist() == [greedy_tokens] * 3


# ---- weight sync (fp32 inline, then bf16 in child processes) ------------------------------------------


def test_weight_sync_fp32_inline_matches_the_hf_engine_after_an_update(fp32):
    engine, policy, tokenizer, prompt = fp32
    hf = HFEngine(policy, tokenizer)
    assert engine.describe()["weight_sync"] == "collective_rpc:inline"

    def hf_greedy():
        rollout = hf.generate([prompt], 1, SamplingParams(24, greedy=True))
        length = int(rollout.lengths[0])
        return rollout.completion_ids[0, :length].tolist(), rollout.logprobs[0, :length].float()

    def tolerance(tokens):
        return fp32_tolerance(policy.config, logit_scale(policy, prompt, tokens))

    tokens, logprobs = _greedy(engine, prompt)
    hf_tokens, hf_logprobs = hf_greedy()
    _agree(tokens, logprobs, hf_tokens, hf_logprobs, teacher_forced_logprobs(policy, prompt, tokens),
           tolerance(tokens))
    before = (tokens, logprobs)

    _perturb(policy, 0.05, seed=1)
    version = engine.version
    engine.sync_weights(policy)
    assert engine.version == version + 1 and engine.llm.get_weight_version() == str(engine.version)
    tokens, logprobs = _greedy(engine, prompt)
    hf_tokens, hf_logprobs = hf_greedy()
    _agree(tokens, logprobs, hf_tokens, hf_logprobs, teacher_forced_logprobs(policy, prompt, tokens),
           tolerance(tokens))
    # ... and they are not what the engine gave before the update.
    assert tokens != before[0]
    old_reference = teacher_forced_logprobs(policy, prompt, before[0])
    assert (old_reference - before[1]).abs().max() > 10 * tolerance(before[0])


def test_weight_sync_bf16_in_child_processes_matches_the_hf_engine(tmp_path):
    from rlbench.measure.cpu_probe import descendant_pids

    policy32, tokenizer = build_embedded(0)
    path = save_pretrained_pair(policy32, tokenizer, tmp_path / "embedded")
    policy = copy.deepcopy(policy32).to(torch.bfloat16)
    engine = _engine(policy, tokenizer, path, dtype="bfloat16")
    try:
        assert engine.describe()["weight_sync"] == "collective_rpc:file" and engine.describe()["processes"] == "child"
        assert len(descendant_pids()) >= 2  # vLLM's engine core and its worker
        prompt = tokenizer(PROMPT_TEXT)["input_ids"]
        before, _ = _greedy(engine, prompt)
        before_logprobs = engine.generate([prompt], 1, SamplingParams(len(before), greedy=True)).logprobs[0].float()

        _perturb(policy32, 0.05, seed=2)  # the update, in fp32, then the bf16 policy that computes with it
        policy.load_state_dict({k: v.to(torch.bfloat16) for k, v in policy32.state_dict().items()})
        engine.sync_weights(policy)
        assert engine.llm.get_weight_version() == "1"
        tokens, logprobs = _greedy(engine, prompt)
        hf = HFEngine(policy, tokenizer).generate([prompt], 1, SamplingParams(24, greedy=True))
        hf_tokens = hf.completion_ids[0, :int(hf.lengths[0])].tolist()
        tolerance = bf16_tolerance(policy32, prompt, tokens)
        reference = teacher_forced_logprobs(policy, prompt, tokens)
        assert (logprobs - reference).abs().max() <= tolerance
        # Greedy tokens agree up to the first near-tie, where the two best log-probs of the fp32 model lie
        # within 2 x tolerance of each other (either engine may then pick either): none is expected in
        # 24 tokens, and then the whole completion agrees.
        ties = _near_ties(policy32, prompt, hf_tokens, 2 * tolerance)
        agree = ties[0] if ties else len(hf_tokens)
        assert tokens[:agree] == hf_tokens[:agree] and agree >= 1
        old = teacher_forced_logprobs(policy, prompt, before)
        assert (old - before_logprobs).abs().max() > 2 * bf16_tolerance(policy32, prompt, before)
        memory = engine.memory_bytes()
        # Embedded model: 904,064 parameters x 2 bytes (bf16) = 1,808,128 (tests/test_vllm_engine.py).
        assert memory["weights"] == 1_808_128 and memory["kv_cache"] > 0
    finally:
        engine.close()


def _near_ties(policy, prompt: list[int], tokens: list[int], margin: float) -> list[int]:
    """Positions where the policy's two most likely next tokens lie within `margin` in log-prob."""
    ids = torch.tensor([prompt + tokens])
    with torch.no_grad():
        logp = torch.log_softmax(policy.eval()(input_ids=ids).logits[0, len(prompt) - 1:-1].float(), -1)
    top = logp.topk(2, dim=-1).values
    return [i for i, gap in enumerate((top[:, 0] - top[:, 1]).tolist()) if gap < margin]
