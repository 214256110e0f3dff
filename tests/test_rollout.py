"""The hf engine: layout of a rollout, EOS handling, and log-probs that match a full forward pass.

Both decoders are covered: the lean one (`fast_llama`, used for Llama-architecture models) and the
module's own forward (`lean=False`, used for everything else); the module's forward of every row in
full is the reference they are held to, up to float32 sums taken in another order (another number
of rows per product, a key/value cache instead of the whole sequence): tolerances derived in
tests/tolerances.py.
"""

import warnings

import pytest
import torch
from torch import nn
from torch.testing import assert_close
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from rlbench.catalog import load_problems
from rlbench.config import TaskConfig
from rlbench.models.batching import left_pad, position_ids_from_mask
from rlbench.models.embedded import build_embedded
from rlbench.models.forward import completion_logits, completion_logprobs, packed_logits
from rlbench.models.lean_llama import LlamaDecoder, llama_parts
from rlbench.rollout import SamplingParams
from rlbench.rollout.hf import (
    HFEngine,
    ModuleDecoder,
    make_decoder,
    sample,
    top_p_filter,
)
from rlbench.tasks import encode_prompts
from tests.tolerances import assert_reordered_close, llama_chain_terms


def _rollout(group: int = 4, prompts: int = 4, new_tokens: int = 24, seed: int = 1, lean: bool = True):
    """Seed 1: two of the 16 rows end with EOS before 24 tokens (the layout tests need both kinds)."""
    torch.manual_seed(0)
    model, tokenizer = build_embedded(0)
    problems = load_problems(TaskConfig(), "train", prompts, 0)
    prompts = encode_prompts(tokenizer, problems)
    ids = [p for p in prompts for _ in range(group)]  # one per completion
    engine = HFEngine(model, tokenizer, lean=lean)
    return model, tokenizer, ids, engine.generate(prompts, group, SamplingParams(new_tokens), seed=seed)


def _qwen2_gqa_with_biases() -> nn.Module:
    """A tiny Qwen2: grouped-query attention (4 query heads, 2 key/value heads) and q/k/v biases."""
    config = Qwen2Config(vocab_size=104, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=False, pad_token_id=0)
    torch.manual_seed(1)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.normal_(0, 0.5)  # initialised to zero: make them count
    return model


ARCHITECTURES = {"llama": lambda: build_embedded(0)[0], "qwen2_gqa_bias": _qwen2_gqa_with_biases}


def _grouped_prompts(group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three prompts of different lengths (so two are left-padded), each repeated `group` times."""
    prompts = [[1, 40, 41, 42, 43, 44], [1, 50, 51], [1, 60, 61, 62, 63]]
    return left_pad([p for p in prompts for _ in range(group)], pad_id=0)


def test_left_pad():
    ids, mask = left_pad([[5, 6, 7], [8, 9]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 8, 9]]
    assert mask.tolist() == [[1, 1, 1], [0, 1, 1]]


def test_rollout_layout_and_masks():
    _, tokenizer, ids, r = _rollout()
    n, t = r.completion_ids.shape
    assert n == 16 and t <= 24
    assert r.input_ids.shape == (n, r.prompt_width + t)
    assert torch.equal(r.input_ids[:, r.prompt_width:], r.completion_ids)
    for i in range(n):
        length = int(r.lengths[i])
        assert r.completion_mask[i, :length].eq(1).all() and r.completion_mask[i, length:].eq(0).all()
        assert (r.completion_ids[i, length:] == tokenizer.pad_token_id).all()
        ended = tokenizer.eos_token_id in r.completion_ids[i, :length].tolist()
        assert ended != bool(r.truncated[i])  # a row ends with EOS or is cut by max_new_tokens
        assert (r.logprobs[i, length:] == 0).all() and (r.logprobs[i, :length] <= 0).all()
    assert len(r.texts) == n


def test_ignore_eos_runs_every_completion_to_max_new_tokens():
    """Same seed with and without ignore_eos: the same tokens up to each row's first EOS, then the
    fixed-length rollout keeps sampling (mask all ones, every row cut by max_new_tokens)."""
    model, tokenizer, ids, stopped = _rollout()
    prompts = list(dict.fromkeys(map(tuple, ids)))
    fixed = HFEngine(model, tokenizer).generate([list(p) for p in prompts], 4, SamplingParams(24, ignore_eos=True),
                                                seed=1)
    assert fixed.completion_ids.shape == (16, 24) and bool(fixed.completion_mask.eq(1).all())
    assert bool(fixed.truncated.all()) and not bool(stopped.truncated.all())  # seed 1: two rows end early
    # Equal tokens: after a row ends the other rows' products run on fewer rows, so their logits may
    # differ in the last bits; a token could differ only where a seeded draw falls within that of a
    # boundary of the cumulative distribution (about 1e-6 per draw; fixed seeds: a machine passes
    # every time or never).
    for i in range(16):
        length = int(stopped.lengths[i])
        assert torch.equal(fixed.completion_ids[i, :length], stopped.completion_ids[i, :length])


@pytest.mark.parametrize("lean", [True, False])
def test_sampled_logprobs_match_a_full_forward_pass(lean):
    model, _, _, r = _rollout(lean=lean)
    model.eval()
    with torch.no_grad():  # the reference: the module's own forward over every row in full
        full = completion_logprobs(model, r.input_ids, r.attention_mask, r.prompt_width, r.completion_ids,
                                   lean=False)
        shared = completion_logprobs(model, r.input_ids, r.attention_mask, r.prompt_width, r.completion_ids,
                                     group_size=4)
    mask = r.completion_mask
    assert bool((r.lengths < 24).any()), "some row should end with EOS before max_new_tokens"
    # Sampling (a cache, one token at a time), the shared prompt and every row in full run every
    # product on other rows: k is the decoder chain, forward, at the largest |log-prob|: 2 k u 8.4 = 5e-3.
    # Measured here (AMD EPYC, AVX2): 3.3e-6 at most.
    terms = llama_chain_terms(model.config, r.input_ids.shape[1], backward=False)
    assert_reordered_close(r.logprobs * mask, full * mask, terms, msg="sampled")
    assert_reordered_close(shared * mask, full * mask, terms, msg="shared prompt")
    assert (shared[mask == 0] == 0).all()  # documented: 0 where the completion mask is 0


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_lean_decoder_matches_the_module_forward(arch):
    model = ARCHITECTURES[arch]().eval()
    ids, mask = _grouped_prompts(group=3)
    assert isinstance(make_decoder(model, ids, mask, 3, 8), LlamaDecoder)  # the lean path really runs
    assert isinstance(make_decoder(model, ids, mask, 3, 8, lean=False), ModuleDecoder)
    params = SamplingParams(16, greedy=True)
    lean = sample(model, ids, mask, params, eos_id=2, pad_id=0, group=3)
    module = sample(model, ids, mask, params, eos_id=2, pad_id=0, lean=False, group=3)
    # The same tokens: the two decoders' logits differ by float32 rounding (about 1e-6 here), so a
    # token could differ only where two logits tie to within that, or a seeded draw falls that close
    # to a boundary of the cumulative distribution: with 48 tokens a chance of about 1e-4 per
    # machine (seeds and weights are fixed, so a machine passes every time or never).
    assert torch.equal(lean[0], module[0]) and torch.equal(lean[2], module[2])
    # Log-probs: k is the decoder chain, forward (a cache against the whole sequence), at the largest
    # |log-prob|.
    assert_reordered_close(lean[1], module[1], llama_chain_terms(model.config, ids.shape[1] + 16, backward=False))
    # Sampled with one seed: the same tokens (the two distributions agree to ~1e-6).
    sampled = [sample(model, ids, mask, SamplingParams(16), 2, 0, torch.Generator().manual_seed(7), lean=flag, group=3)
               for flag in (True, False)]
    assert torch.equal(sampled[0][0], sampled[1][0])


def test_decoding_only_the_live_rows_leaves_their_logits_unchanged():
    model = _qwen2_gqa_with_biases().eval()
    ids, mask = _grouped_prompts(group=3)
    every_row, live_rows = (LlamaDecoder(llama_parts(model), ids, mask, position_ids_from_mask(mask), 3, 4)
                            for _ in range(2))
    alive = torch.tensor([True, False, False, True, False, True, False, False, True])  # 4 of 9: below 3/4
    tokens = torch.arange(10, 19)
    with torch.no_grad():
        assert_close(live_rows.prefill(), every_row.prefill())
        for step in range(3):
            full, compact = every_row.step(tokens), live_rows.step(tokens, alive)
            # 4 rows against 9 per product: k is the decoder chain, forward, at the largest |logit|.
            terms = llama_chain_terms(model.config, ids.shape[1] + step + 1, backward=False)
            assert_reordered_close(compact[alive], full[alive], terms)
            assert (compact[~alive] == 0).all()  # finished rows: zero logits, their samples are discarded
            tokens = tokens + 1


def test_bf16_mixed_decoding_keeps_a_bf16_cache_and_decodes_only_the_live_rows():
    """Under bf16 autocast (bf16-mixed) the decoder's linears are bf16 copies: keys and values are
    cached in bf16 (every matmul reading them is bf16), and decoding only the live rows stores
    them without a dtype clash (it raised "Index put requires the source and destination dtypes
    match" once a quarter of the rows had finished)."""
    from rlbench.rollout.hf import make_decoder

    model = _qwen2_gqa_with_biases().eval()
    ids, mask = _grouped_prompts(group=3)
    alive = torch.tensor([True, False, False, True, False, True, False, False, True])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        decoder = make_decoder(model, ids, mask, 3, 4)
        decoder.prefill()
        assert decoder.keys.dtype == decoder.values.dtype == decoder.prompt_keys[0].dtype == torch.bfloat16
        logits = decoder.step(torch.arange(10, 19), alive)
    assert torch.isfinite(logits[alive]).all() and (logits[~alive] == 0).all()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_packed_forward_matches_the_module_forward_and_its_gradients(arch):
    model = ARCHITECTURES[arch]()
    ids, mask = _grouped_prompts(group=2)
    # Completions of different lengths (masks 1 up to EOS), so padding after EOS is exercised.
    completion = torch.tensor([[7, 8, 9, 2], [7, 2, 0, 0], [11, 12, 2, 0], [13, 2, 0, 0], [14, 15, 16, 17],
                               [18, 19, 2, 0]])
    completion_mask = (torch.arange(4)[None] < torch.tensor([4, 2, 3, 2, 4, 3])[:, None]).long()
    input_ids, attention_mask = torch.cat([ids, completion], 1), torch.cat([mask, completion_mask], 1)
    results = {}
    for lean in (True, False):
        for group in (1, 2):
            model.zero_grad()
            lp = completion_logprobs(model, input_ids, attention_mask, ids.shape[1], completion, group_size=group,
                                     lean=lean)
            (lp * completion_mask * torch.arange(1.0, 5.0)).sum().backward()
            results[lean, group] = lp.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])
    reference_lp, reference_grad = results[False, 1]
    # Each variant runs every product on other rows (shared prompts, packed tokens): k is the decoder
    # chain, forward for the log-probs; backward for the gradients, plus the tokens every weight
    # gradient sums, at the largest |gradient| of all parameters (flattened together here).
    width, tokens = input_ids.shape[1], int(completion_mask.sum())
    for variant, (lp, grad) in results.items():
        assert_reordered_close(lp * completion_mask, reference_lp * completion_mask,
                               llama_chain_terms(model.config, width, backward=False), msg=f"{variant}")
        assert_reordered_close(grad, reference_grad, llama_chain_terms(model.config, width, tokens), msg=f"{variant}")


def test_packed_logits_are_the_real_completion_tokens_in_row_major_order():
    model = build_embedded(0)[0].eval()
    ids, mask = left_pad([[1, 40, 41], [1, 50]], pad_id=0)
    completion = torch.tensor([[7, 2, 0], [8, 9, 10]])
    completion_mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    input_ids, attention_mask = torch.cat([ids, completion], 1), torch.cat([mask, completion_mask], 1)
    with torch.no_grad():
        logits, index = packed_logits(model, input_ids, attention_mask, prompt_width=3)
        padded = completion_logits(model, input_ids, attention_mask, 3, lean=False)
    # Row 0 has tokens 0, 1; row 1 has tokens 0, 1, 2; with T = 3: 0*3+0, 0*3+1, 1*3+0, 1*3+1, 1*3+2.
    assert index.tolist() == [0, 1, 3, 4, 5]
    # Packed against padded rows: k is the decoder chain, forward, at the largest |logit|.
    assert_reordered_close(logits, padded.reshape(6, -1)[index], llama_chain_terms(model.config, 6, backward=False))


def test_the_lean_path_is_declined_where_it_would_not_equal_the_module():
    from rlbench.models.loading import _enable_gradient_checkpointing

    model = build_embedded(0)[0]
    assert llama_parts(model) is not None
    _enable_gradient_checkpointing(model)  # as a run turns it on (transformers' name for it differs by version)
    assert llama_parts(model) is None
    small = {"vocab_size": 104, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
             "num_attention_heads": 2, "num_key_value_heads": 2}
    dynamic_rope = LlamaConfig(**small, rope_parameters={"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0})
    assert llama_parts(LlamaForCausalLM(dynamic_rope)) is None  # its frequencies change with the length
    assert llama_parts(MistralForCausalLM(MistralConfig(**small))) is None  # not a supported architecture


def test_prompt_sharing_gives_the_same_gradients():
    model, _, _, r = _rollout(new_tokens=12)
    grads = []
    for group in (1, 4):
        model.zero_grad()
        lp = completion_logprobs(model, r.input_ids, r.attention_mask, r.prompt_width, r.completion_ids,
                                 group_size=group)
        (lp * r.completion_mask).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    # The prompt once per group against once per row: k is the decoder chain, backward, plus the
    # tokens every weight gradient sums, at the largest |gradient|.
    terms = llama_chain_terms(model.config, r.input_ids.shape[1], int(r.completion_mask.sum()))
    assert_reordered_close(grads[1], grads[0], terms)


def test_same_seed_same_rollout_and_greedy_is_deterministic():
    _, _, _, a = _rollout(seed=3)
    _, _, _, b = _rollout(seed=3)
    _, _, _, c = _rollout(seed=4)
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert not torch.equal(a.completion_ids, c.completion_ids)
    model, tokenizer = build_embedded(0)
    engine = HFEngine(model, tokenizer)
    prompts = encode_prompts(tokenizer, load_problems(TaskConfig(), "eval", 3, 0))
    g1 = engine.generate(prompts, 1, SamplingParams(10, greedy=True))
    g2 = engine.generate(prompts, 1, SamplingParams(10, greedy=True))
    assert torch.equal(g1.completion_ids, g2.completion_ids)


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = top_p_filter(logits, 0.7).isfinite()
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 < 0.7, 0.5 + 0.3 reaches it
    assert top_p_filter(logits, 1.0).isfinite().all()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_module_decoder_s_prefill_makes_only_the_last_position_s_logits(arch):
    # Sampling reads the next token's logits; the whole prompt's ([prompts, tokens, vocabulary])
    # were the largest tensor of a module decoder's prefill.
    model = ARCHITECTURES[arch]().eval()
    ids, mask = _grouped_prompts(group=3)
    shapes = []
    model.lm_head.register_forward_hook(lambda module, args, output: shapes.append(tuple(output.shape)))
    decoder = make_decoder(model, ids, mask, 3, 4, lean=False)
    with torch.no_grad():
        first = decoder.prefill()
        full = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits[:, -1]
    assert shapes[0] == (ids.shape[0] // 3, 1, model.config.vocab_size)
    # The same next-token logits as the whole forward's last position: one row per prompt against
    # every row, so every product may be reordered: k is the decoder chain, forward, at the largest |logit|.
    assert_reordered_close(first, full, llama_chain_terms(model.config, ids.shape[1], backward=False))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_module_paths_pass_the_cache_under_the_forward_s_own_name(arch):
    # transformers 5.2x renamed past_key_values to cache and warns at every call given the old name
    # (and at every read of an output's past_key_values): once per token of every module decoder.
    model = ARCHITECTURES[arch]().eval()
    ids, mask = _grouped_prompts(group=3)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*past_key_values", category=FutureWarning)
        sample(model, ids, mask, SamplingParams(4, greedy=True), eos_id=2, pad_id=0, lean=False, group=3)
        completion_logits(model, ids, mask, ids.shape[1] - 2, group_size=3, lean=False)


@pytest.mark.parametrize("group_size", [1, 3])
def test_the_module_path_makes_logits_only_where_a_completion_token_is_predicted(group_size):
    # [N, P + T, V] before: the prompt's positions too, none of which predicts a completion token.
    model = _qwen2_gqa_with_biases().eval()
    ids, mask = _grouped_prompts(group=3)
    completion = torch.arange(10, 10 + 4 * ids.shape[0]).reshape(ids.shape[0], 4) % model.config.vocab_size
    input_ids, attention = torch.cat([ids, completion], 1), torch.cat([mask, torch.ones_like(completion)], 1)
    shapes = []
    model.lm_head.register_forward_hook(lambda module, args, output: shapes.append(tuple(output.shape[:2])))
    with torch.no_grad():
        logits = completion_logits(model, input_ids, attention, ids.shape[1], group_size=group_size, lean=False)
        whole = model(input_ids=input_ids, attention_mask=attention,
                      position_ids=position_ids_from_mask(attention)).logits[:, ids.shape[1] - 1: -1]
    n = ids.shape[0]
    assert shapes[0] == ((n, 5) if group_size == 1 else (n // 3, 1))  # T + 1 positions; a shared prompt's last
    # The shared prompt's cache against the whole sequence, and the LM head over fewer positions: every
    # product may be reordered (k: the decoder chain, forward, at the largest |logit|).
    assert_reordered_close(logits, whole, llama_chain_terms(model.config, input_ids.shape[1], backward=False))
