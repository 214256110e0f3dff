"""The hf engine: layout of a rollout, EOS handling, and log-probs that match a full forward pass."""

import torch
from torch.testing import assert_close

from rlbench.config import TaskConfig
from rlbench.models.embedded import build_embedded
from rlbench.models.forward import completion_logprobs
from rlbench.rollout import SamplingParams
from rlbench.rollout.hf import HFEngine, left_pad, shared_prefix_size, top_p_filter
from rlbench.tasks import encode_prompts, load_problems


def _rollout(group: int = 4, prompts: int = 4, new_tokens: int = 24, seed: int = 0):
    torch.manual_seed(0)
    model, tokenizer = build_embedded(0)
    problems = load_problems(TaskConfig(), "train", prompts, 0)
    ids = [p for p in encode_prompts(tokenizer, problems) for _ in range(group)]
    engine = HFEngine(model, tokenizer)
    return model, tokenizer, ids, engine.generate(ids, SamplingParams(new_tokens), seed=seed)


def test_left_pad_and_prefix_detection():
    ids, mask = left_pad([[5, 6, 7], [8, 9]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 8, 9]]
    assert mask.tolist() == [[1, 1, 1], [0, 1, 1]]
    grouped, grouped_mask = left_pad([[5, 6], [5, 6], [7], [7]], pad_id=0)
    assert shared_prefix_size(grouped, grouped_mask) == 2
    assert shared_prefix_size(ids, mask) == 1


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


def test_sampled_logprobs_match_a_full_forward_pass():
    model, _, _, r = _rollout()
    model.eval()
    with torch.no_grad():
        full = completion_logprobs(model, r.input_ids, r.attention_mask, r.prompt_width, r.completion_ids)
        shared = completion_logprobs(model, r.input_ids, r.attention_mask, r.prompt_width, r.completion_ids,
                                     group_size=4)
    mask = r.completion_mask
    assert_close(full * mask, r.logprobs * mask, atol=1e-4, rtol=0)
    assert_close(shared * mask, full * mask, atol=1e-5, rtol=0)


def test_prompt_sharing_gives_the_same_gradients():
    model, _, _, r = _rollout(new_tokens=12)
    grads = []
    for group in (1, 4):
        model.zero_grad()
        lp = completion_logprobs(model, r.input_ids, r.attention_mask, r.prompt_width, r.completion_ids,
                                 group_size=group)
        (lp * r.completion_mask).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert_close(grads[1], grads[0], atol=1e-3, rtol=1e-4)


def test_same_seed_same_rollout_and_greedy_is_deterministic():
    _, _, _, a = _rollout(seed=3)
    _, _, _, b = _rollout(seed=3)
    _, _, _, c = _rollout(seed=4)
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert not torch.equal(a.completion_ids, c.completion_ids)
    model, tokenizer = build_embedded(0)
    engine = HFEngine(model, tokenizer)
    prompts = encode_prompts(tokenizer, load_problems(TaskConfig(), "eval", 3, 0))
    g1 = engine.generate(prompts, SamplingParams(10, greedy=True))
    g2 = engine.generate(prompts, SamplingParams(10, greedy=True))
    assert torch.equal(g1.completion_ids, g2.completion_ids)


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = top_p_filter(logits, 0.7).isfinite()
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 < 0.7, 0.5 + 0.3 reaches it
    assert top_p_filter(logits, 1.0).isfinite().all()
