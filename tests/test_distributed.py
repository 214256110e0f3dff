"""The distributed path: suites/distributed-cpu.yaml on two ranks (torchrun, FSDP2, gloo), one
algorithm as `rlbench run` launches it (1 node x 2 ranks), the other as 2 nodes x 1 rank (two
torchrun launchers on one c10d rendezvous, benchmarks/multinode_cpu.py); one sharded update against
the single-process update on the same batch, a rank that dies and an interrupt (no process outlives
its run), and the checks of the `distributed:` block."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from rlbench.config import load_suite, resolved_dict
from rlbench.errors import UserError
from rlbench.report.schema import schema_errors
from tests.conftest import private_cache
from tests.tolerances import assert_reordered_close, llama_chain_terms, reorder_atol

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "suites" / "distributed-cpu.yaml"
FAST = ["model.sft.steps=0", "eval.size=16"]  # the distributed machinery, not the model, is under test


def _run_suite(out: Path, overrides: list[str], cache: Path) -> subprocess.Popen:
    args = [arg for o in [*FAST, *overrides] for arg in ("--set", o)]
    return subprocess.Popen([sys.executable, "-m", "rlbench", "run", str(SUITE), "--output", str(out), *args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, RLBENCH_CACHE=str(cache)))


def _only(label: str) -> str:
    """An override keeping the suite's algorithm `label` alone."""
    [algo] = [a for a in yaml.safe_load(SUITE.read_text())["algorithms"] if (a.get("label") or a["name"]) == label]
    return "algorithms=" + yaml.safe_dump([algo], default_flow_style=True).strip()


@pytest.fixture(scope="module")
def suite_report(tmp_path_factory):
    """GRPO-Zero as `rlbench run` runs the suite (one torchrun, 2 ranks), then PPO as 2 nodes x 1
    rank: the worker started by two torchrun launchers of one rank each on one c10d rendezvous on
    localhost (benchmarks/multinode_cpu.py's `launch`), from a spec written as the runner writes it,
    and its ranks merged as the runner merges them. The report, its folder, the runner's stdout and
    PPO's merged result."""
    from rlbench.rank_results import merge_ranks

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from multinode_cpu import launch
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))

    out = tmp_path_factory.mktemp("distributed")
    cache = private_cache(tmp_path_factory)
    proc = _run_suite(out, ["budget.steps=2", _only("grpo_zero")], cache)
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    [path] = list(out.glob("distributed-cpu/*/report.json"))
    # One rank per launcher: a rank takes all the cores its node has unless told (`threads` is shared by a
    # node's ranks), and here both "nodes" share this machine's.
    suite = load_suite(str(SUITE), [*FAST, "budget.steps=2", "distributed.nproc_per_node=1", "threads=1"])
    run_dir = out / "two-nodes"
    run_dir.mkdir()
    (run_dir / "suite.yaml").write_text(yaml.safe_dump(resolved_dict(suite), sort_keys=False))
    [ppo] = [i for i, algo in enumerate(suite.algorithms) if algo.label == "ppo_rules"]
    spec = {"suite_path": str(run_dir / "suite.yaml"), "algorithm_index": ppo, "seed": 0, "run_dir": str(run_dir),
            "policy_dir": str(_base_dir()), "reward_dir": None, "eval_before": None}  # sft.steps=0: the base model
    (run_dir / "spec.json").write_text(json.dumps(spec))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RLBENCH_CACHE", str(cache))
        code = launch(run_dir / "spec.json", 2, 1, run_dir / "launchers.log", 600)
    log = (run_dir / "launchers.log").read_text()
    assert code == 0, log[-3000:]
    return json.loads(path.read_text()), path.parent, stdout, {"id": "ppo_rules/2x1", **merge_ranks(run_dir, 2, log)}


def _single_process_policy_static(policy_dir: Path) -> dict[str, int]:
    """The policy role's static bytes in one process after an optimizer step (grads and AdamW state exist)."""
    from rlbench.measure.static import role_static_bytes
    from rlbench.models.loading import load_causal_lm
    from rlbench.models.optim import adamw
    from rlbench.models.precision import resolve_precision

    cfg = load_suite(str(SUITE)).model
    model = load_causal_lm(policy_dir, cfg, resolve_precision(cfg))
    optimizer = adamw(model.parameters(), lr=1e-4, weight_decay=0.0)
    sum(p.sum() for p in model.parameters()).backward()
    optimizer.step()
    return role_static_bytes(model, optimizer)


def test_the_suite_runs_on_two_ranks_with_half_the_static_bytes_per_rank(suite_report):
    report, _, stdout, two_nodes = suite_report
    assert schema_errors(report) == []
    assert schema_errors({**report, "runs": [{**report["runs"][0], **two_nodes}]}) == []  # the merged 2 x 1 run too
    assert report["status"] == "complete"
    assert [r["status"] for r in report["runs"]] == ["ok"] and two_nodes["status"] == "ok"
    single = _single_process_policy_static(Path(report["stages"].get("sft", {}).get("path") or _base_dir()))
    n_tensors = 38  # the embedded model's parameter tensors; each has a replicated 4-byte AdamW step
    for run in [*report["runs"], two_nodes]:
        d = run["distributed"]
        assert d["world_size"] == 2 and d["backend"] == "gloo" and [r["status"] for r in d["ranks"]] == ["ok", "ok"]
        assert run["budget"]["steps"] == 2 and run["budget"]["completions"] == 64  # both ranks' completions
        for rank in d["ranks"]:
            policy = rank["static_bytes"]["policy"]
            # Every dimension the embedded model shards on is even: half of each tensor, to the byte.
            assert 2 * policy["weights"] == single["weights"]
            assert 2 * policy["gradients"] == single["gradients"]
            assert 2 * (policy["optimizer"] - 4 * n_tensors) == single["optimizer"] - 4 * n_tensors
            assert policy["buffers"] == single["buffers"]  # rotary inv_freq: replicated
        assert d["static_bytes_sum"]["policy"]["weights"] == single["weights"]
        for role, phases in d["phase_peak_bytes_max"].items():
            for phase, peaks in phases.items():
                assert peaks["cpu"] == max(r["phase_peak_bytes"][role][phase]["cpu"] for r in d["ranks"])
        for role, phases in d["phase_steady_rise_bytes_max"].items():
            for phase, steady in phases.items():
                calls = run["roles"][role]["phases"][phase]["calls"]  # rank 0's; every rank calls each phase alike
                assert (steady is None) == (calls == 1), (role, phase, calls)
                if steady is not None:
                    assert steady["cpu"] == max(r["phase_steady_rise_bytes"][role][phase]["cpu"] for r in d["ranks"])
                    assert steady["cpu"] <= d["phase_rise_bytes_max"][role][phase]["cpu"]
        # One all-gather per FSDP unit (4 layers + root) per step for the whole rollout: none per token.
        assert d["collective_bytes"]["generate"] == {"fsdp_all_gather": {
            "calls": 2 * 5, "bytes": 2 * single["weights"]}}
        assert d["collective_bytes"]["update"]["fsdp_reduce_scatter"]["calls"] > 0
    assert "memory per rank" in stdout and "collectives: generate" in stdout
    # Where each rank ran: one launcher's two ranks on node 0; two launchers of one rank each, one per
    # node (global rank = node rank x ranks per node + local rank).
    one_node = report["runs"][0]["distributed"]["ranks"]
    assert [(r["node_rank"], r["local_rank"]) for r in one_node] == [(0, 0), (0, 1)]
    assert [(r["node_rank"], r["local_rank"]) for r in two_nodes["distributed"]["ranks"]] == [(0, 0), (1, 0)]
    assert all(r["host"] for r in one_node)


def test_the_per_rank_tables_show_each_rank_s_node_and_steady_rises(suite_report):
    """`rlbench report`'s per-rank table and summary.md's per-rank section, on the saved 2 x 1 run."""
    from rich.console import Console

    from rlbench.report.rank_view import rank_markdown
    from rlbench.report.views import rank_memory_table

    report, _, _, two_nodes = suite_report
    view = {**report, "runs": [two_nodes]}
    console = Console(record=True, width=200)
    console.print(rank_memory_table(view))
    assert re.search(r"node rank / local rank\s+│\s+0 / 0\s+│\s+1 / 0\s+│", console.export_text())
    lines = "\n".join(rank_markdown(view, "cpu")).splitlines()
    rank_rows = [line.split(" | ")[1:4] for line in lines if line.startswith("| ppo")][:2]
    assert rank_rows == [["0", "0", "0"], ["1", "1", "0"]]  # rank, node rank, local rank
    generate = [line for line in lines if "| generate |" in line]
    steady = two_nodes["distributed"]["ranks"][1]["phase_steady_rise_bytes"]["policy"]["generate"]["cpu"]
    assert len(generate) == 2 and generate[1].endswith(f"| {steady / 2**20:,.1f} |")


def _base_dir() -> Path:
    from rlbench.models.loading import resolve_base

    return resolve_base("embedded")


def test_a_sharded_update_equals_the_single_process_update(tmp_path):
    """Same weights, same batch of completions, same minibatch order: two ranks give the same loss,
    gradient norm and parameters after the update as one process, within 1e-5 (and the sharded
    reference the same log-probs)."""
    from rlbench.algorithms.base import Batch
    from rlbench.catalog import resolve_probe
    from rlbench.tasks import encode_prompts
    from rlbench.train import Run

    suite = load_suite(str(SUITE), [*FAST, "algorithms[0].params.num_minibatches=2"])  # two optimizer steps
    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text(yaml.safe_dump(resolved_dict(suite), sort_keys=False))
    policy_dir = _base_dir()
    run = Run.build(suite, suite.algorithms[0], 0, policy_dir, None, resolve_probe("cpu", 10.0, "fast"))
    prompts, group = run.next_prompts(), run.group_size
    rollout = run.engine.generate(encode_prompts(run.tokenizer, prompts), group, run.sampling, seed=0)
    n = len(prompts) * group
    rewards = torch.rand(n, generator=torch.Generator().manual_seed(0))  # advantages that are not all 0
    batch = Batch(rollout, [p for p in prompts for _ in range(group)], group, rewards, torch.zeros(n), rollout.logprobs)
    with torch.no_grad():
        batch.ref_logprobs = run.reference_logprobs(rollout)
    run.algorithm.compute_advantages(batch)
    torch.save(batch, tmp_path / "batch.pt")
    torch.manual_seed(1234)
    single = run._update_policy(batch)

    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(ROOT / "tests" / "distributed_update.py"), str(suite_file), str(policy_dir),
                           str(tmp_path / "batch.pt"), "1234", str(tmp_path / "sharded.pt")],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sharded = torch.load(tmp_path / "sharded.pt", weights_only=False)
    # Each rank runs half the rows through every product, and the gradients are summed across ranks:
    # any sum may be reordered, so k is the decoder chain (forward for the losses, backward for the
    # gradient norm) plus the tokens, of magnitude max(|x|, 1) as in test_lean_logprobs' micro-batches
    # (tests/tolerances.py). clip_fraction counts tokens: equal unless a ratio sits within rounding of
    # 1 +- clip (ratios are within about 1e-2 of 1 here).
    config, width, tokens = run.policy.config, rollout.input_ids.shape[1], int(batch.mask.sum())
    for key in ("loss/policy", "kl/k3", "learning/grad_norm", "learning/entropy", "clip_fraction"):
        terms = llama_chain_terms(config, width, tokens, backward=key == "learning/grad_norm")
        tolerance = 1e-5 if key == "clip_fraction" else reorder_atol(terms, max(abs(single[key]), 1.0))
        assert abs(sharded["stats"][key] - single[key]) <= tolerance, (key, sharded["stats"][key], single[key])
    assert single["learning/grad_norm"] > 0.1  # the update did move the weights
    after = run.policy.state_dict()
    assert set(sharded["params"]) == set(after)
    # AdamW moves each parameter by lr * m_hat / (sqrt(v_hat) + eps) per step: on its first step
    # m_hat / sqrt(v_hat) = g / |g| = +-1, so a gradient element within rounding of 0 whose sign the
    # reordered sums flip moves by +lr on one side and -lr on the other: 2 * lr apart, whatever the
    # rounding. On the second step |m_hat / sqrt(v_hat)| <= sqrt(sum_i a_i^2 / b_i) (Cauchy-Schwarz) with
    # a = (0.9 * 0.1, 0.1) / (1 - 0.9^2), b = (0.999 * 0.001, 0.001) / (1 - 0.999^2): 1.0014. Two
    # optimizer steps (num_minibatches=2): at most 2 * lr + 2 * 1.0014 * lr apart, plus the rounding of
    # the elements whose sign did not flip (1e-5, as for the losses). Only elements with a gradient within
    # rounding of 0 can flip, so nearly all of them stay within the rounding alone.
    lr = suite.algorithms[0].params["lr"]
    diffs = torch.cat([(sharded["params"][k] - after[k]).abs().flatten() for k in after])
    assert diffs.max().item() <= (2 + 2 * 1.0014) * lr + 1e-5, diffs.max().item()
    assert (diffs > 1e-5).float().mean().item() <= 0.01  # sign flips are rare: not a wrong update everywhere
    assert sharded["static"][0]["weights"] * 2 == sum(t.numel() * 4 for t in run.policy.parameters())
    # The frozen reference, sharded, scores the batch as one process does, and gives its root back.
    mask = batch.mask.bool()
    assert_reordered_close(sharded["ref_logprobs"][mask], batch.ref_logprobs[mask],
                           llama_chain_terms(config, width, backward=False), msg="reference log-probs")
    assert sharded["ref_resharded"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead; only its parent has not collected it yet
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _wait_for(predicate, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_a_dead_rank_fails_its_run_and_an_interrupt_ends_the_next_with_no_process_left(tmp_path):
    """SIGKILL to rank 1 of the first run (what the OOM killer sends, but here it did not run):
    that run ends `failed`, naming the signal, and the suite goes on; SIGTERM to the runner during the second run: `interrupted`. The report is valid
    and no rank or torchrun process of either run is left."""
    proc = _run_suite(tmp_path, ["budget.steps=100000"], Path(os.environ["RLBENCH_CACHE"]))
    runs = tmp_path / "distributed-cpu"

    def pids(run: str) -> list[int]:
        return [int(p.read_text()) for p in runs.glob(f"*/runs/{run}/rank*/pid") if p.read_text().strip()]

    def stepped(run: str) -> bool:
        steps = list(runs.glob(f"*/runs/{run}/steps.jsonl"))
        return bool(steps) and bool(steps[0].read_text().strip())

    try:
        assert _wait_for(lambda: stepped("grpo_zero-seed0") and len(pids("grpo_zero-seed0")) == 2, 300)
        first = pids("grpo_zero-seed0")
        os.kill(first[1] if first[1] != first[0] else first[0], signal.SIGKILL)
        assert _wait_for(lambda: len(pids("ppo_rules-seed0")) == 2, 300), "the second run never started"
        second = pids("ppo_rules-seed0")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    [path] = list(runs.glob("*/report.json"))
    report = json.loads(path.read_text())
    assert schema_errors(report) == []
    dead, interrupted = report["runs"]
    assert dead["status"] == "failed" and "signal 9" in dead["error"], dead.get("error")
    assert interrupted["status"] == "interrupted"
    assert _wait_for(lambda: not any(_alive(pid) for pid in first + second), 10), "a rank outlived its run"
    assert "Traceback" not in stderr


def test_distributed_checks_name_each_unsupported_combination():
    assert load_suite(str(SUITE)).distributed.nproc_per_node == 2
    with pytest.raises(UserError) as err:
        load_suite(str(SUITE), ["rollout.engine=vllm", "model.lora={r: 4}", "distributed.nproc_per_node=3",
                                "algorithms[1].params.num_minibatches=32"])
    lines = str(err.value).splitlines()
    assert any(line.startswith("rollout.engine: 'vllm' is not supported with distributed") for line in lines)
    assert any(line.startswith("model.lora: LoRA is not supported") for line in lines)
    assert any("grpo_zero samples 8 prompts per step" in line and "multiple of 12" in line for line in lines)
    with pytest.raises(UserError, match=r"algorithms\[1\].params.num_minibatches: ppo_rules's 32 prompts"):
        load_suite(str(SUITE), ["algorithms[1].params.num_minibatches=32"])
    assert load_suite(str(SUITE), ["distributed=null"]).distributed is None


def test_evaluations_of_slices_merge_into_one():
    from rlbench.distributed import merge_evals

    a = {"eval/accuracy": 0.5, "eval/accuracy_stderr_binomial": 0.25, "eval/completion_length": 10.0, "eval/size": 4.0,
         "eval/outcomes": "1010"}
    b = {"eval/accuracy": 0.25, "eval/accuracy_stderr_binomial": 0.2, "eval/completion_length": 4.0, "eval/size": 12.0,
         "eval/outcomes": "000000000111"}
    merged = merge_evals([a, b, {}])  # a rank with no problems scores nothing
    assert merged["eval/outcomes"] == "1010000000000111"  # rank 0's slice first: the problems' order
    # 2 + 3 correct of 16; lengths (40 + 48) / 16; stderr sqrt(p (1 - p) / 16) on the merged p.
    assert merged["eval/accuracy"] == pytest.approx(5 / 16) and merged["eval/size"] == 16
    assert merged["eval/completion_length"] == pytest.approx(5.5)
    assert merged["eval/accuracy_stderr_binomial"] == pytest.approx(((5 / 16) * (11 / 16) / 16) ** 0.5)


def test_the_rollout_block_keeps_every_unit_gathered_through_module_forwards():
    # A policy that samples through its module (checkpointing on) runs FSDP2's hooks: without the
    # block's setting, each layer's post-forward reshards it, and every later token all-gathers it
    # again. Traced on PyTorch's fake process group of 2 ranks (real tensors, no data exchanged).
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    from rlbench.distributed import Dist
    from rlbench.estimate.ranks import fake_process_group

    def sharded(module):
        return [isinstance(p, DTensor) for p in module.parameters()]

    with fake_process_group(2):
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
        for layer in model:
            fully_shard(layer)
        fully_shard(model, reshard_after_forward=True)
        dist = Dist(rank=0, world=2, backend="fake")
        with torch.no_grad(), dist.rollout_context(model):
            for _ in range(2):  # two tokens
                model(torch.ones(1, 4))
                assert not any(sharded(model)), "a unit was resharded by its forward inside the block"
        assert all(sharded(model))
        out = model(torch.ones(1, 4))  # outside the block, each layer's own setting again
        assert all(sharded(model[0])) and all(sharded(model[1])), "a layer kept its weights after forward"
        out.sum().backward()
