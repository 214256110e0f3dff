"""`rlbench run` end to end in a subprocess on a seconds-long suite, then the report's contents."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlbench.report.schema import schema_errors

TINY = Path(__file__).parent / "data" / "tiny.yaml"


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e")
    env = dict(os.environ, RLBENCH_CACHE=str(out / "cache"))
    # The probe's exact heap and fixed-length rollouts: both settings must reach the run's worker.
    # --smoke cuts the 3 steps asked here to 2 (the tests below read 2) and marks the report.
    proc = subprocess.run([sys.executable, "-m", "rlbench", "run", str(TINY), "--output", str(out / "results"),
                           "--set", "probe_heap=exact", "--set", "rollout.ignore_eos=true", "--smoke",
                           "--set", "budget.steps=3"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [path] = list((out / "results" / "tiny").glob("*/report.json"))
    return json.loads(path.read_text()), path.parent, proc.stdout


def test_report_is_complete_and_valid(tiny_report):
    report, _, stdout = tiny_report
    assert schema_errors(report) == []
    assert report["status"] == "complete"
    assert report["environment"]["packages"]["torch"]
    assert "memory by role" in stdout and "grpo_zero/seed0" in stdout
    # The starting accuracy's error is the tables' (clustered by chain), not a binomial one beside them.
    assert "starting accuracy:" in stdout and "(clustered by arithmetic chain;" in stdout
    [run] = report["runs"]
    assert run["status"] == "ok" and run["error"] is None
    assert run["stopped_by"] == "steps"
    assert run["budget"]["steps"] == 2 and run["budget"]["completions"] == 32 and run["budget"]["prompts"] == 8
    assert run["budget"]["tokens_generated"] == 32 * 16  # ignore_eos: every completion 16 tokens
    # GRPO-Zero with a reference: generate and ref_logprobs forwards, one trained pass of the policy.
    by_phase = run["budget"]["flops_by_phase"]
    assert set(by_phase) == {"generate", "ref_logprobs", "update"}
    # Sampling runs the LM head (398 x 128 = 50,944 weights) at a group's prompt once where log-probs
    # run it for each of its 4 rows: 3 head outputs fewer per group, 4 groups a step, 2 steps.
    assert by_phase["ref_logprobs"] - by_phase["generate"] == 3 * 4 * 2 * (2 * 50_944)
    assert by_phase["update"] == 3 * by_phase["ref_logprobs"]
    assert run["budget"]["flops"] == sum(by_phase.values())


def test_smoke_run_is_cut_short_and_marked(tiny_report):
    report, out_dir, stdout = tiny_report
    assert report["smoke"] is True and "smoke run" in stdout
    assert report["suite"]["budget"]["steps"] == 2 and report["suite"]["eval"]["size"] == 16  # 16 < 32: kept
    assert "Smoke run" in (out_dir / "summary.md").read_text()
    [run] = report["runs"]
    # the training and evaluation peaks, written by the worker from its per-phase figures
    phases = {p: f["peak_bytes"]["cpu"] for role in run["roles"].values() for p, f in role["phases"].items()}
    assert run["metrics"]["memory/eval_peak_bytes"]["value"] == phases["eval"]
    assert run["metrics"]["memory/training_peak_bytes"]["value"] == max(v for p, v in phases.items() if p != "eval")


def test_roles_and_exact_static_bytes(tiny_report):
    report, _, _ = tiny_report
    [run] = report["runs"]
    assert set(run["roles"]) == {"policy", "reference"}
    policy, reference = run["roles"]["policy"]["static"], run["roles"]["reference"]["static"]
    weights = policy["weights"]
    n_tensors = 38  # the embedded model's parameter tensors (tied embedding counted once)
    # fp32 AdamW: gradients = weights, two moments = 2 x weights, plus one 4-byte `step` per tensor.
    assert policy["gradients"] == weights
    assert policy["optimizer"] == 2 * weights + 4 * n_tensors
    assert reference["weights"] == weights and reference["gradients"] == 0 and reference["optimizer"] == 0
    assert policy["total"] == 4 * weights + 4 * n_tensors + policy["buffers"]


def test_memory_phases_and_reconciliation(tiny_report):
    report, _, _ = tiny_report
    [run] = report["runs"]
    memory = run["memory"]
    assert memory["primary"] == "cpu"
    assert "MALLOC_MMAP_THRESHOLD_=65536 (probe_heap exact)" in memory["probes"][0]["method"]
    phases = run["roles"]["policy"]["phases"]
    assert {"generate", "update"} <= set(phases)
    assert "ref_logprobs" in run["roles"]["reference"]["phases"]
    recon = memory["reconciliation"]["cpu"]
    assert recon["process_peak_bytes"] >= max(p["peak_bytes"]["cpu"] for p in phases.values()) > 0
    assert recon["attributed_bytes"] + recon["baseline_bytes"] + recon["other_bytes"] == recon["process_peak_bytes"]
    assert run["metrics"]["memory/process_peak_bytes"]["probe"] == "cpu"
    assert run["metrics"]["memory/policy/peak_bytes"]["higher_is_better"] is False


def test_throughput_accuracy_and_steps(tiny_report):
    report, run_root, _ = tiny_report
    [run] = report["runs"]
    tp = run["throughput"]
    assert tp["time/generate_s"] > 0 and tp["time/update_s"] > 0 and tp["throughput/gen_tokens_per_s"] > 0
    assert 0 < tp["throughput/mfu"] < 1
    acc = run["accuracy"]
    assert acc["before"]["eval/size"] == 16 and "eval/accuracy_stderr_binomial" in acc["after"]
    assert acc["delta"] == pytest.approx(acc["after"]["eval/accuracy"] - acc["before"]["eval/accuracy"])
    assert run["metrics"]["eval/accuracy"]["higher_is_better"] is True
    outcomes, paired = acc["outcomes"], acc["paired"]  # per-problem verdicts and the paired test
    assert len(outcomes["before"]) == len(outcomes["after"]) == len(outcomes["cluster"]) == 16
    assert outcomes["after"].count("1") / 16 == pytest.approx(acc["after"]["eval/accuracy"])
    assert paired["delta"] == pytest.approx(acc["delta"]) and 0 < paired["p_value"] <= 1
    assert paired["cluster_by"] == "arithmetic chain" and paired["clusters"] == len(outcomes["cluster_keys"])
    assert "eval/outcomes" not in acc["before"] and "eval/outcomes" not in report["stages"]["eval_before"]
    steps = [json.loads(line) for line in (run_root / run["run_dir"] / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2]
    assert {"reward/mean", "gold/accuracy", "reward/answer_correct", "reward/format_strict", "kl/k3",
            "learning/entropy", "clip_fraction"} <= set(steps[0])
    assert run["reward_hacking"]["flag"] is False


def test_a_killed_suite_leaves_a_valid_report_that_says_so(tmp_path):
    """SIGTERM (like Ctrl-C) mid-run: the report is still written, valid, and marks the run interrupted."""
    import signal
    import time

    env = dict(os.environ, RLBENCH_CACHE=str(tmp_path / "cache"))
    proc = subprocess.Popen([sys.executable, "-m", "rlbench", "run", str(TINY), "--output", str(tmp_path / "out"),
                             "--set", "budget.steps=100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    deadline = time.time() + 300
    while time.time() < deadline and not list((tmp_path / "out").glob("tiny/*/runs/*/steps.jsonl")):
        time.sleep(0.5)
    steps = list((tmp_path / "out").glob("tiny/*/runs/*/steps.jsonl"))
    assert steps, "the run never started"
    while time.time() < deadline and not steps[0].read_text().strip():
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    [path] = list((tmp_path / "out").glob("tiny/*/report.json"))
    report = json.loads(path.read_text())
    assert schema_errors(report) == []
    assert report["status"] == "interrupted"
    [run] = report["runs"]
    assert run["status"] == "interrupted" and run["budget"]["steps"] >= 1
    assert "Traceback" not in stderr
