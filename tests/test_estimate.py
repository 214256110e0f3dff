"""`rlbench estimate` against what rlbench builds and runs: a real run on the embedded model (static
bytes exact, each phase's rise call by call, the JSON's phases by role and kind, the printed table),
and the roles as rlbench loads them (scalar heads without an LM head, LoRA's free reference). The
suites and helpers here are shared by the other estimate test files (test_estimate_trace.py: the
tracker and what the traced run shows; test_estimate_cli.py: the command line, fits and the GPU
check script)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rlbench.config import load_suite
from rlbench.estimate import estimate_suite
from rlbench.estimate.check import compare, run_prompt_lengths
from rlbench.estimate.fit import card_gib
from rlbench.estimate.source import resolve_model
from rlbench.estimate.standins import WorstCaseTokenizer
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


def test_estimate_prints_a_table_per_algorithm_with_the_verdict(small_pair):
    from rich.console import Console

    from rlbench.estimate.view import print_estimate

    _, _, estimate = small_pair
    console = Console(record=True, width=150)
    print_estimate(estimate, console, card_gib(None, "l4"), None, None)
    text = console.export_text()
    assert "grpo_zero: predicted peak of live tensors per phase (MiB)" in text
    assert "process peak" in text and "L4 (22.5 GiB): fits with a 20% margin" in text and "KV" in text


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


def test_a_region_whose_two_traced_peaks_are_different_moments_is_named():
    # Gathered weights grow by a layer's 30 MiB, as they should; activations fall by 20 MiB with a
    # layer more, which no one moment of a region does: the line would take it 23 layers on (the
    # 4 -> 5 -> 28 extrapolation) and the phase's figure with it.
    from rlbench.estimate.predict import crossed_phases
    from rlbench.estimate.simulate import Trace
    from rlbench.estimate.trace import Peak

    mib = 2**20

    def trace(depth: int, eval_parts: dict[str, int], update_parts: dict[str, int]) -> Trace:
        peaks = {("eval", 1, 0, "last"): Peak(sum(eval_parts.values()), eval_parts),
                 ("update", 1, 1, "middle"): Peak(sum(update_parts.values()), update_parts)}
        return Trace(depth, {}, {}, peaks, Peak(), ("policy",))

    low = trace(4, {"policy/gathered": 60 * mib, "policy/activations": 40 * mib},
                {"policy/gradients": 10 * mib, "policy/activations": 50 * mib})
    high = trace(5, {"policy/gathered": 90 * mib, "policy/activations": 20 * mib},
                 {"policy/gradients": 12 * mib, "policy/activations": 50 * mib - mib // 2})  # under 1 MiB: rounding
    [note] = crossed_phases([low, high])
    assert note.startswith("eval: its peaks at 4 and 5 layers are different moments (policy/activations 40.0 -> 20.0")
    assert crossed_phases([low, trace(5, {"policy/gathered": 90 * mib, "policy/activations": 40 * mib},
                                      {"policy/gradients": 12 * mib, "policy/activations": 50 * mib})]) == []
    assert crossed_phases([high]) == []  # one trace (every layer traced): nothing to compare
