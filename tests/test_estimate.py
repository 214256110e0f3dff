"""`rlbench estimate`: the tracker on hand-sized tensors, the traced run against a real one on the
embedded model, depth extrapolation and decode fast-forward against exact traces, the roles rlbench
really builds (scalar heads without an LM head, LoRA's free reference, beta 0), the command line's
errors, fits and the headroom search, and the GPU calibration script run on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from rlbench.config import load_suite
from rlbench.errors import UserError
from rlbench.estimate import estimate_suite
from rlbench.estimate.check import compare, run_prompt_lengths
from rlbench.estimate.fit import CARDS, card_gib, largest_fitting, with_value
from rlbench.estimate.predict import assemble
from rlbench.estimate.simulate import trace_run
from rlbench.estimate.source import config_from_dict, resolve_model
from rlbench.estimate.standins import WorstCaseTokenizer
from rlbench.estimate.trace import PhaseTracker
from rlbench.estimate.view import as_json

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20
SMALL = """
name: estimate-small
model: {name: embedded, sft: {steps: 0}}
task: {name: synthetic, max_steps: 1, train_size: 64}
algorithms:
  - name: grpo_zero
budget: {steps: 2}
rollout: {completions_per_step: 64, group_size: 4, max_new_tokens: 32}
eval: {size: 16, batch_size: 16}
probe: cpu
threads: 1
"""
TINY_SUITE = SMALL.replace("completions_per_step: 64", "completions_per_step: 4").replace(
    "max_new_tokens: 32", "max_new_tokens: 4").replace("size: 16, batch_size: 16", "size: 2, batch_size: 2")
# A tiny Llama with its own LM head (untied), as a config.json: nothing to download.
TINY_CONFIG = {"model_type": "llama", "vocab_size": 96, "hidden_size": 32, "intermediate_size": 64,
               "num_hidden_layers": 8, "num_attention_heads": 4, "num_key_value_heads": 2,
               "max_position_embeddings": 256, "tie_word_embeddings": False, "pad_token_id": 0, "bos_token_id": 1,
               "eos_token_id": 2}


def suite_file(tmp_path: Path, text: str = SMALL, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def rlbench(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlbench", *args], capture_output=True, text=True, cwd=cwd)


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


# ---- the estimate against a run on the embedded model ----------------------------------------------


def test_prompt_lengths_of_a_run_reach_the_tokenizer_stand_in(tmp_path):
    suite = load_suite(suite_file(tmp_path))
    lengths = run_prompt_lengths(suite)
    tokenizer = resolve_model(suite.model.name).tokenizer
    # 16 prompts a step (64 completions in groups of 4) for 2 steps, then the evaluation batch of 16.
    assert 16 < len(lengths) <= 16 * 2 + 16
    assert all(len(tokenizer([text])["input_ids"][0]) == n for text, n in lengths.items())
    assert len(set(lengths.values())) > 1  # the synthetic task's prompts differ in length
    stand_in = WorstCaseTokenizer(398, 50, 0, 2, 1, lengths)
    text, n = next(iter(lengths.items()))
    assert [len(ids) for ids in stand_in([text, "a prompt it does not know"])["input_ids"]] == [n, 50]


LIKE_FOR_LIKE = ["rollout.ignore_eos=true", "probe_heap=exact"]  # the estimate's worst case; live tensors


@pytest.fixture(scope="module")
def small_report(tmp_path_factory) -> Path:
    """report.json of a real run of the small suite, run as the estimate predicts (fixed-length
    completions, the exact heap)."""
    tmp = tmp_path_factory.mktemp("estimate")
    path = suite_file(tmp)
    sets = [arg for o in LIKE_FOR_LIKE for arg in ("--set", o)]
    proc = rlbench("run", str(path), "--output", str(tmp / "results"), *sets)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    [report_path] = (tmp / "results").glob("*/*/report.json")
    return report_path


@pytest.fixture(scope="module")
def small_pair(small_report):
    """The small run's report and its estimate on the prompts that run drew."""
    suite = load_suite(suite_file(small_report.parent, name="estimated.yaml"), LIKE_FOR_LIKE)
    estimate = estimate_suite(suite, device="cpu", prompt_lengths=run_prompt_lengths(suite))
    return json.loads(small_report.read_text()), as_json(estimate, None, None, None), estimate


RISES_BY_CALL = """
    import json, sys
    from pathlib import Path

    import torch

    from rlbench.catalog import resolve_probe
    from rlbench.config import load_suite
    from rlbench.train import Run

    spec = json.loads(Path(sys.argv[1]).read_text())  # the run's own: suite as resolved, seed, policy
    suite = load_suite(spec["suite_path"])
    torch.set_num_threads(suite.threads)
    probe = resolve_probe(suite.probe, suite.probe_period_ms, suite.probe_heap)
    probe.snapshot()
    run = Run.build(suite, suite.algorithms[spec["algorithm_index"]], spec["seed"], Path(spec["policy_dir"]), None, probe)
    rises, add = {}, run.phases.add

    def each_call(phase, seconds, memory=None, static_created=0, static_end=0):
        mem = (memory or {}).get("cpu")  # the rise PhaseStats.add keeps the largest of, call by call
        if mem is not None:
            rises.setdefault(phase, []).append(max(0, mem.peak_bytes - mem.start_bytes - static_created))
        add(phase, seconds, memory, static_created, static_end)

    run.phases.add = each_call
    for _ in range(suite.budget.steps):
        run.step()
    print(json.dumps(rises))
"""


@pytest.fixture(scope="module")
def rises_by_call(small_report) -> dict[str, list[int]]:
    """The small run's steps again, as its worker runs them (same suite, seed, policy, heap setting),
    with each phase's rise call by call: what the report's largest-over-calls figure hides."""
    from rlbench.measure.memory import cpu_worker_env

    [spec] = small_report.parent.glob("runs/*/spec.json")
    suite = load_suite(json.loads(spec.read_text())["suite_path"])
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(RISES_BY_CALL), str(spec)], capture_output=True,
                          text=True, cwd=ROOT, env=dict(os.environ, **cpu_worker_env(suite.probe_heap)), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_static_bytes_are_exact_and_phases_agree_with_a_run(small_pair, rises_by_call):
    report, estimate, _ = small_pair
    rows = compare(estimate, report, "cpu")
    static = [r for r in rows if r["what"] == "static"]
    assert {r["role"] for r in static} == {"policy", "reference"}
    assert all(r["predicted_bytes"] == r["measured_bytes"] for r in static), static
    rises = {r["phase"]: r for r in rows if r["what"] == "rise"}
    assert {"generate", "ref_logprobs", "update", "eval"} <= set(rises)
    # The update holds more than 100 MiB (gradients and AdamW state made, logits and the backward): within
    # 10% is the target; like for like it reads 0.9% over the prediction here (146.4 against 145.1 MiB).
    assert rises["update"]["predicted_bytes"] > 100 * MIB and abs(rises["update"]["error"]) < 0.05, rises["update"]
    # A phase's first call also pages in the code of the kernels it is the first to run (file-backed
    # pages of libtorch_cpu.so, which VmHWM counts) and makes one-time heap (lazy imports, arenas):
    # the worker's first generate read 8.6 MB of library pages and 2.6 MB of heap more than its second,
    # which read what was predicted (14.8 against 14.9 MB; AMD EPYC, AVX2, from /proc/self/smaps).
    # The code paged in depends on the kernels the CPU's ISA selects, and the report's rise is the
    # largest over calls, the first for generate: 23 MB in a run on its own here, 35 MB once in a
    # full `make test` here, 38 MB on an Intel AVX-512 machine, against 14.9 predicted. So the later
    # calls are held to the prediction, and the report to the prediction plus the first call's excess
    # over the later ones, measured call by call on this machine (`rises_by_call`).
    for phase, calls in rises_by_call.items():
        if phase not in rises or len(calls) < 2:
            continue
        predicted, later = rises[phase]["predicted_bytes"], max(calls[1:])
        # The probe also sees memory that is no tensor (small heap blocks, malloc's headers), and the
        # allocator may reuse a freed block inside a phase: measured reads up to 3% under (seen: 1.7%).
        floor = max(2 * MIB, 0.03 * predicted)
        assert -floor < later - predicted < 16 * MIB, (phase, calls, predicted)
    for phase, r in rises.items():
        calls = rises_by_call.get(phase, [])
        warm_up = max(0, calls[0] - min(calls[1:])) if len(calls) > 1 else 0
        floor = max(2 * MIB, 0.03 * r["predicted_bytes"])
        assert -floor < r["measured_bytes"] - r["predicted_bytes"] < 16 * MIB + warm_up, (r, calls)


def test_estimate_json_has_every_phase_by_role_and_kind(small_pair):
    _, estimate, _ = small_pair
    [algo] = estimate["algorithms"]
    assert algo["roles"] == ["policy", "reference"]
    assert list(algo["phases"]) == ["generate", "score", "ref_logprobs", "advantages", "update", "eval"]
    update = algo["phases"]["update"]
    # At the peak (the forward's logits and saved activations) the last step's gradients are freed already.
    assert set(update["by_role"]["policy"]) >= {"weights", "optimizer", "activations", "logits"}
    assert algo["static"]["policy"]["gradients"] == algo["static"]["policy"]["weights"] - 128  # less the rotary buffer
    assert sum(sum(k.values()) for k in update["by_role"].values()) == update["peak_bytes"]
    assert "kv_cache" in algo["phases"]["generate"]["by_role"]["policy"]
    assert algo["process_peak_bytes"] == max(p["peak_bytes"] for p in algo["phases"].values())


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


def test_decode_fast_forward_equals_every_step(tmp_path):
    suite = load_suite(suite_file(tmp_path, TINY_SUITE.replace("max_new_tokens: 4", "max_new_tokens: 7")))
    config, algo, cpu = config_from_dict(dict(TINY_CONFIG, num_hidden_layers=2)), suite.algorithms[0], torch.device("cpu")
    skipped = assemble("x", algo, [trace_run(suite, algo, config, 2, 10, cpu, skip_decode=True)], 2)
    every = assemble("x", algo, [trace_run(suite, algo, config, 2, 10, cpu, skip_decode=False)], 2)
    for name in ("generate", "eval"):
        assert skipped.phases[name].peak_bytes == every.phases[name].peak_bytes
        assert skipped.phases[name].by_role == every.phases[name].by_role


# ---- roles as rlbench builds them -------------------------------------------------------------------

ROLES_SUITE = """
name: roles
model: {name: MODEL, dtype: float32, sft: {steps: 0}}
task: {name: synthetic, max_steps: 1, train_size: 64}
algorithms:
  - name: ppo
    params: {ppo_epochs: 1, num_minibatches: 1}
  - name: grpo_zero
    label: no_reference
    params: {beta: 0.0}
budget: {steps: 1}
rollout: {completions_per_step: 4, group_size: 2, max_new_tokens: 4}
eval: {size: 2, batch_size: 2}
"""


def test_reward_and_value_roles_have_a_scalar_head_and_no_lm_head(tmp_path):
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(dict(TINY_CONFIG, num_hidden_layers=2)))
    suite = load_suite(suite_file(tmp_path, ROLES_SUITE.replace("MODEL", str(config_path))))
    ppo, no_reference = estimate_suite(suite, device="cpu", prompt_tokens=8).algorithms
    vocab, hidden = TINY_CONFIG["vocab_size"], TINY_CONFIG["hidden_size"]
    policy = ppo.static["policy"]["weights"]
    head = (hidden + 1) * 4  # the scalar head: one weight row and a bias, fp32
    assert ppo.static["reward"]["weights"] == policy - vocab * hidden * 4 + head
    assert ppo.static["value"]["weights"] == ppo.static["reward"]["weights"]  # value_init: the reward model
    # fp32 AdamW: two moments per parameter and a 4-byte step per tensor (2 layers of 9, embedding, norm, head's 2).
    params = vocab * hidden + 2 * (2 * 32 * 32 + 2 * 32 * 16 + 3 * 32 * 64 + 2 * 32) + hidden + hidden + 1
    assert ppo.static["value"]["gradients"] == 4 * params
    assert ppo.static["value"]["optimizer"] == 2 * 4 * params + 4 * 22
    assert ppo.static["reward"]["gradients"] == 0 and ppo.static["reference"]["weights"] == policy
    assert set(ppo.roles) == {"policy", "value", "reference", "reward"}
    assert no_reference.roles == ("policy",) and "ref_logprobs" not in no_reference.phases


def test_lora_reference_costs_nothing(tmp_path):
    pytest.importorskip("peft")
    from rlbench.models.embedded import build_embedded

    model, _ = build_embedded(0)
    base = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    suite = load_suite(suite_file(tmp_path, TINY_SUITE), ["model.lora.r=4"])
    lora = estimate_suite(suite, device="cpu", prompt_tokens=20).algorithms[0]
    assert lora.error is None and lora.static["reference"]["total"] == 0
    adapters = lora.static["policy"]["weights"] - base
    # r=4 on q, k, v, o of 4 layers, width 128: A is 4 x 128 and B 128 x 4, fp32.
    assert adapters == 4 * 4 * (4 * 128 + 128 * 4) * 4 and lora.static["policy"]["gradients"] == adapters


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


# ---- command line, fits and headroom ---------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--gpu-gib", "-3"], "--gpu-gib: must be a positive number of GiB, got -3"),
    (["--gpu", "tpu9000"], "--gpu: unknown card 'tpu9000'"),
    (["--algos", "grpo_zeroo"], "did you mean 'grpo_zero'"),
    (["--headroom", "batch", "--gpu", "h100"], "--headroom: unknown setting 'batch'"),
    (["--headroom", "max_new_tokens"], "--headroom: needs a card"),
    (["--dtype", "float8"], "--dtype: must be one of"),
    (["no/such/suite.yaml"], "suite: no such file"),
])
def test_bad_arguments_exit_2_with_one_line(args, message):
    proc = rlbench("estimate", *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr


def test_estimate_prints_a_table_per_algorithm_with_the_verdict(small_pair):
    from rich.console import Console

    from rlbench.estimate.view import print_estimate

    _, _, estimate = small_pair
    console = Console(record=True, width=150)
    print_estimate(estimate, console, card_gib(None, "l4"), None, None)
    text = console.export_text()
    assert "grpo_zero: predicted peak of live tensors per phase (MiB)" in text
    assert "process peak" in text and "L4 (22.5 GiB): fits with a 20% margin" in text and "KV" in text


def test_cli_estimate_json_with_a_card(tmp_path):
    path = suite_file(tmp_path, TINY_SUITE)
    out = rlbench("estimate", str(path), "--json", "--gpu-gib", "1.0", "--prompt-tokens", "20", "--algos", "grpo_zero")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    [algo] = data["algorithms"]
    assert data["settings"]["prompt_tokens"] == 20 and data["settings"]["max_new_tokens"] == 4
    assert algo["fit"]["fits"] is False  # 1 GiB less the 1 GiB device overhead holds nothing
    assert algo["sizing"]["smallest_ranks"] is None and "device overhead alone" in algo["sizing"]["note"]
    assert algo["fit"]["required_bytes"] == algo["process_peak_bytes"] + 2**30


def test_cards_and_the_largest_value_that_fits():
    assert card_gib(None, "H100") == (CARDS["h100-80gb"], "H100-80GB") and card_gib(80, None)[0] == 80
    with pytest.raises(UserError):
        card_gib(0, None)
    fits_below_100 = lambda v: v <= 100  # noqa: E731 - a monotone stand-in for "the estimate fits"
    assert largest_fitting(fits_below_100, 8) == (100, largest_fitting(fits_below_100, 8)[1])
    assert largest_fitting(fits_below_100, 512)[0] == 100  # searched downwards from a value that does not fit
    assert largest_fitting(fits_below_100, 8, step=4)[0] == 100 and largest_fitting(fits_below_100, 8, step=3)[0] == 99
    assert largest_fitting(lambda v: False, 8)[0] is None


def test_headroom_settings_change_the_suite_as_a_user_would(tmp_path):
    suite = load_suite(suite_file(tmp_path))
    algo = suite.algorithms[0]
    assert with_value(suite, "max_new_tokens", 99, algo).rollout.max_new_tokens == 99
    more = with_value(suite, "group_size", 8, algo)  # 16 prompts per step, now 8 completions each
    assert (more.rollout.group_size, more.rollout.completions_per_step) == (8, 128)


# ---- the GPU calibration script, on the CPU ----------------------------------------------------------


def test_gpu_check_runs_on_the_cpu(tmp_path):
    from transformers import AutoModelForCausalLM

    from rlbench.models.embedded import save_pretrained_pair
    from rlbench.models.tokenizer import build_tokenizer
    from rlbench.tasks.synthetic import vocabulary

    tokenizer = build_tokenizer(vocabulary())
    config = config_from_dict(dict(TINY_CONFIG, vocab_size=len(tokenizer), num_hidden_layers=2))
    save_pretrained_pair(AutoModelForCausalLM.from_config(config), tokenizer, tmp_path / "tiny")
    output = tmp_path / "gpu_check.json"
    small = ["rollout.completions_per_step=4", "rollout.max_new_tokens=4", "eval.size=2", "eval.batch_size=2",
             "model.dtype=float32", "threads=1",
             "algorithms=[{name: ppo, reward: rules, params: {value_init: policy}}]"]  # policy, reference, value
    cmd = [sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--no-tests", "--models", str(tmp_path / "tiny"),
           "--output", str(output), *(x for o in small for x in ("--set", o))]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(output.read_text())
    [model] = result["models"]
    assert result["device"] == "cpu" and model["static_exact"] is True
    assert set(model["rows"]) == {"cpu"}
    phases = {(r["algorithm"], r["phase"]) for r in model["rows"]["cpu"] if r["what"] == "rise"}
    assert {("ppo", "update"), ("ppo", "ref_logprobs"), ("ppo", "values"), ("ppo", "value_update")} <= phases
    assert {a["label"] for a in model["estimate"]["algorithms"]} == {"ppo"}
