"""`rlbench estimate`'s tracing: the tracker on hand-sized tensors, depth extrapolation, the decode
fast-forward and the operator memo against exact traces, and gradient checkpointing's smaller update.
(The roles rlbench builds, scalar heads and LoRA's free reference: test_estimate.py.)"""

from __future__ import annotations

import json
from unittest import mock

import pytest
import torch

from rlbench.config import load_suite
from rlbench.estimate import estimate_suite, opmemo
from rlbench.estimate.predict import assemble
from rlbench.estimate.simulate import trace_run
from rlbench.estimate.source import config_from_dict
from rlbench.estimate.standins import FastForwardDecoder
from rlbench.estimate.trace import PhaseTracker
from tests.test_estimate import MIB, TINY_CONFIG, TINY_SUITE, suite_file

# ---- the tracker ----------------------------------------------------------------------------------


def test_tracker_counts_fake_tensors_by_role_and_kind():
    tracker = PhaseTracker("cpu", vocab_size=1000, worst_token=7)
    with tracker:
        with tracker.loading("policy"):
            layer = torch.nn.Linear(256, 512, bias=False)  # 512 KiB of fp32 weights, allocated nowhere
        tracker.grads_as(layer, "policy")
        optimizer = torch.optim.AdamW(layer.parameters(), fused=True)
        assert tracker.live().parts == {"policy/weights": 512 * 1024}
        with tracker.phase("update", "policy"):
            a = torch.empty(2**20)  # 4 MiB
            b = torch.empty(2 * 2**20)  # 8 MiB: live 12 MiB above the start
            del a
            c = torch.empty(2**20)  # 4 MiB: live 12 MiB again, never more
            layer(torch.empty(8, 256)).sum().backward()
            optimizer.step()
        del b, c
        assert isinstance(layer.weight, torch._subclasses.fake_tensor.FakeTensor)
        live = tracker.live().parts
        # fp32 AdamW: a gradient the size of the weight, two moments, and a 4-byte step.
        assert live == {"policy/weights": 512 * 1024, "policy/gradients": 512 * 1024,
                        "policy/optimizer": 2 * 512 * 1024 + 4}
        start = tracker.starts[("update", 1)].total
        assert start == 512 * 1024
        peak = max(p.total for key, p in tracker.peaks.items() if key[0] == "update")
        assert peak >= start + 12 * MIB

        with tracker.phase("generate", "policy"):
            mask = torch.ones(4, 6, dtype=torch.long)  # real: its values can be read
            assert int(mask.sum()) == 24 and mask.nonzero().shape == (24, 2)
            logits = torch.empty(4, 1000)  # fake, vocabulary-wide: logits
            token = torch.multinomial(logits.softmax(-1), 1)
            assert not isinstance(token, torch._subclasses.fake_tensor.FakeTensor)
            assert token.flatten().tolist() == [7, 7, 7, 7]  # the worst case: never EOS
            assert tracker.live().parts.get("policy/logits", 0) >= 4 * 1000 * 4


def test_gradients_of_a_tensor_used_several_times_are_summed_in_place():
    # A tied weight W (the LM head applied to 3 chunks of tokens, and the embedding): autograd sums
    # its 4 gradients in place into the one buffer it holds, so at most the sum so far and the newest
    # gradient exist: 2 W, as a real run's resident memory shows. On fake tensors autograd makes a
    # new tensor for every sum (3 W at that instant), which the tracker counts as the in-place sum.
    from torch.utils.checkpoint import checkpoint

    vocab, hidden, tokens_n = 20_000, 256, 30
    weight_bytes = vocab * hidden * 4  # 19.5 MiB
    tracker = PhaseTracker("cpu", vocab_size=vocab)
    with tracker:
        with tracker.loading("policy"):
            weight = torch.nn.Parameter(torch.empty(vocab, hidden))
        x, tokens = torch.empty(tokens_n, hidden), torch.randint(0, vocab, (tokens_n,))

        def chunk(h, t):
            return torch.nn.functional.linear(h, weight).log_softmax(-1).gather(-1, t[:, None]).sum()

        with tracker.phase("update", "policy"):
            loss = sum(checkpoint(chunk, x[i:i + 10], tokens[i:i + 10], use_reentrant=False) for i in (0, 10, 20))
            (loss + torch.nn.functional.embedding(tokens, weight).sum()).backward()
    rise = max(p.total for key, p in tracker.peaks.items() if key[0] == "update") - tracker.starts[("update", 1)].total
    # 2 W, and 3 chunks' logits and log-softmax (10 x 20,000 x 4 bytes each): 2.5 MiB more at most.
    assert 2 * weight_bytes <= rise <= 2 * weight_bytes + 3 * MIB, rise / MIB
    assert weight.grad is not None and weight.grad.shape == weight.shape


def test_a_tied_head_s_gradient_arriving_first_is_summed_out_of_place():
    # A language model's tied weight: the embedding feeds the layers and the head reads their output, so
    # the head's gradient (a transposed product: a view) reaches the weight's buffer first, and autograd
    # makes a new tensor for the sum: 3 W at that instant (the real resident high-water mark reads 2.89 W:
    # benchmarks/tied_gradient_sum.py). With the embedding's gradient first it sums in place: 2 W.
    vocab, hidden, tokens_n = 20_000, 256, 30
    weight_bytes = vocab * hidden * 4

    def rise(head_reads_embedding: bool) -> int:
        tracker = PhaseTracker("cpu", vocab_size=vocab)
        with tracker:
            with tracker.loading("policy"):
                weight = torch.nn.Parameter(torch.empty(vocab, hidden))
            x, tokens = torch.empty(tokens_n, hidden), torch.randint(0, vocab, (tokens_n,))

            def head(h):
                return torch.nn.functional.linear(h, weight).log_softmax(-1).gather(-1, tokens[:, None]).sum()

            with tracker.phase("update", "policy"):
                if head_reads_embedding:
                    loss = head(torch.nn.functional.embedding(tokens, weight) * 1.0)
                else:  # two branches, the embedding's made last: its gradient arrives first
                    loss = head(x) + torch.nn.functional.embedding(tokens, weight).sum()
                loss.backward()
        return max(p.total for key, p in tracker.peaks.items() if key[0] == "update") - tracker.starts[("update", 1)].total

    assert 3 * weight_bytes <= rise(True) <= 3 * weight_bytes + 3 * MIB
    assert 2 * weight_bytes <= rise(False) <= 2 * weight_bytes + 3 * MIB


def test_the_traced_step_starts_from_the_steady_state(tmp_path):
    # One step is traced, from what a run holds between steps: the policy's AdamW state (two fp32
    # moments per parameter and a step count per tensor) and its gradients, as an update leaves them.
    suite = load_suite(suite_file(tmp_path, TINY_SUITE))
    config, algo = config_from_dict(dict(TINY_CONFIG, num_hidden_layers=2)), suite.algorithms[0]
    trace = trace_run(suite, algo, config, 2, 10, torch.device("cpu"))
    start = trace.starts[("generate", 1)].parts
    grads = start["policy/gradients"]  # one per trained parameter: the weights but the rotary buffer
    assert 0.99 * start["policy/weights"] <= grads < start["policy/weights"]
    assert 2 * grads < start["policy/optimizer"] <= 2 * grads + 4 * 64
    assert ("generate", 2) not in trace.starts  # one step
    assert trace.end.parts["policy/optimizer"] == start["policy/optimizer"]  # the update leaves it as it found it


# ---- extrapolation over depth and the decode fast-forward are exact ---------------------------------


def test_three_and_four_layers_extrapolate_to_five_exactly(tmp_path):
    suite = load_suite(suite_file(tmp_path, TINY_SUITE))
    config, algo, cpu = config_from_dict(TINY_CONFIG), suite.algorithms[0], torch.device("cpu")
    exact = assemble("x", algo, [trace_run(suite, algo, config, 5, 10, cpu)], 5)
    line = assemble("x", algo, [trace_run(suite, algo, config, d, 10, cpu) for d in (3, 4)], 5)
    assert exact.static == line.static
    for name, phase in exact.phases.items():
        assert (line.phases[name].peak_bytes, line.phases[name].rise_bytes) == (phase.peak_bytes, phase.rise_bytes)
        assert line.phases[name].by_role == phase.by_role


@pytest.mark.parametrize("checkpointing", ["false", "true"])  # the lean decoder; the module's own, and its cache
def test_decode_fast_forward_equals_every_step(tmp_path, checkpointing):
    suite = load_suite(suite_file(tmp_path, TINY_SUITE.replace("max_new_tokens: 4", "max_new_tokens: 7")),
                       [f"model.gradient_checkpointing={checkpointing}"])
    config, algo, cpu = config_from_dict(dict(TINY_CONFIG, num_hidden_layers=2)), suite.algorithms[0], torch.device("cpu")
    made = []
    init = FastForwardDecoder.__init__

    def traced(skip: bool):
        made.clear()
        with mock.patch.object(FastForwardDecoder, "__init__", lambda self, *a, **k: (init(self, *a, **k),
                                                                                       made.append(self))[0]):
            trace = trace_run(suite, algo, config, 2, 10, cpu, skip_decode=skip)
        return assemble("x", algo, [trace], 2), {(d.calls, d.ran) for d in made}

    (skipped, fast), (every, slow) = traced(True), traced(False)
    # 7 new tokens: sample() steps the decoder 6 times; fast-forwarded, the first and the last run.
    assert fast == {(6, 2)} and slow == {(6, 6)}, (fast, slow)
    for name in ("generate", "eval"):
        assert skipped.phases[name].peak_bytes == every.phases[name].peak_bytes
        assert skipped.phases[name].by_role == every.phases[name].by_role


def test_operator_memo_changes_no_figure(tmp_path):
    # The memo of fake operators' outputs (opmemo) against the fake mode alone, on rank 0 of 2 (the
    # model's own operators and FSDP2's views of sharded weights): every region peak, start and end equal.
    suite = load_suite(suite_file(tmp_path, TINY_SUITE), ["rollout.completions_per_step=8"])  # a group per rank
    config, algo, cpu = config_from_dict(dict(TINY_CONFIG, num_hidden_layers=2)), suite.algorithms[0], torch.device("cpu")
    with opmemo.disabled():
        plain = trace_run(suite, algo, config, 2, 10, cpu, ranks=2)
    hits = opmemo.stats["hits"]
    memoised = trace_run(suite, algo, config, 2, 10, cpu, ranks=2)
    assert opmemo.stats["hits"] > hits  # the memo answered
    assert (memoised.peaks, memoised.starts, memoised.ends, memoised.end) == \
        (plain.peaks, plain.starts, plain.ends, plain.end)


def test_operator_memo_answers_splits_and_in_place_operators():
    # FSDP2 splits every weight into its ranks' shards, and the update copies and adds in place: a
    # split's outputs are views of its input's storage, an in-place operator returns its own argument;
    # one that changes its argument's metadata (resize_) or writes an out= argument never comes from the memo.
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode, aten = FakeTensorMode(), torch.ops.aten
    with mode:
        x, y = torch.empty(12, 4), torch.empty(12, 4)
    assert [opmemo.memo_kind(f) for f in (aten.split.Tensor, aten.copy_.default, aten.resize_.default,
                                          aten.split_with_sizes_copy.out)] == ["pure", "self", None, None]
    for _ in range(2):  # the second call of each from the memo
        hits = opmemo.stats["hits"]
        parts = opmemo.memo_call(mode, aten.split.Tensor, (x, 5, 0), {})
        assert [tuple(p.shape) for p in parts] == [(5, 4), (5, 4), (2, 4)]
        assert [p.storage_offset() for p in parts] == [0, 20, 40]
        assert all(p.untyped_storage()._cdata == x.untyped_storage()._cdata for p in parts)
        assert opmemo.memo_call(mode, aten.copy_.default, (y, x), {}) is y
    assert opmemo.stats["hits"] == hits + 2


def test_gradient_checkpointing_lowers_the_update(tmp_path):
    # PPO (one completion per prompt, and a value model), and GRPO-Zero with groups of 4, which a run
    # takes too (the checkpointed module keeps no cache, so its update runs every row in full).
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(dict(TINY_CONFIG, num_hidden_layers=2)))
    ppo = [f"model.name={config_path}", "algorithms=[{name: ppo, reward: rules, params: {value_init: policy}}, "
           "{name: grpo_zero, params: {beta: 0.04}}]"]
    runs = {gc: estimate_suite(load_suite(suite_file(tmp_path, TINY_SUITE), [*ppo, f"model.gradient_checkpointing={gc}"]),
                               device="cpu", prompt_tokens=20).algorithms for gc in ("false", "true")}
    for plain, checkpointed in zip(runs["false"], runs["true"]):
        assert checkpointed.error is None and checkpointed.static == plain.static
    for phase, role in (("update", "policy"), ("value_update", "value")):
        activations = {gc: a[0].phases[phase].by_role[role].get("activations", 0) for gc, a in runs.items()}
        assert activations["true"] < activations["false"], (phase, activations)
    # With groups, checkpointing gives up the shared prompt and the lean forward: at 2 layers of
    # width 32 that costs more than the recomputation saves (what a run does: no crash, more memory).
    assert runs["true"][1].phases["update"].peak_bytes > 0
