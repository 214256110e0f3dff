"""A finished run's report entry, every figure worked by hand: roles' static bytes, the reconciliation,
per-role peaks (total and anonymous), throughput, accuracy with its noise, and where learning ended.

The run is a finished one as `summarize_run` reads it (rlbench.measure.summary.Run): real models and
optimizers, a real Budget and PhaseStats filled with recorded probe readings."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from rlbench.cache import cache_root
from rlbench.config import load_suite
from rlbench.measure.budget import Budget
from rlbench.measure.flops import CPU_PEAK_CACHE_FILE, cpu_identity
from rlbench.measure.hacking import PAIRED_INTERVAL, STDERR_SUM
from rlbench.measure.phases import PhaseStats
from rlbench.measure.summary import heldout_witness, summarize_run
from rlbench.models.precision import resolve_precision

SUITE = """
name: summary
model: {name: embedded, sft: {steps: 0}}
algorithms: [{name: grpo_zero}]
budget: {steps: 2}
"""


class RecordedProbe:
    """The cpu probe's readings of a finished run, as recorded (what summarize_run asks a probe)."""

    name = primary = "cpu"

    def describe(self) -> dict:
        return {"probe": "cpu", "primary": "cpu", "probes": ["cpu"]}

    def process_peak_bytes(self) -> dict[str, int]:
        return {"cpu": 9500}

    def anon_memory(self) -> dict:
        return {"cpu": {"phase_peak_bytes": {"generate": 4000, "update": 8000, "ref_logprobs": 2500},
                        "process_peak_bytes": 8200, "rise_bytes": 7000}}


class FinishedRun:
    """Two steps of a run: a trained policy (Linear 4 -> 2 after one AdamW step), a frozen reference
    (the same shape), an engine holding a 1,000-byte cache, and the phases' recorded readings."""

    def __init__(self, suite, evals_steps: int = 8) -> None:
        self.suite = suite
        self.precision = resolve_precision(suite.model)
        torch.manual_seed(0)
        self.policy, self.reference = torch.nn.Linear(4, 2), torch.nn.Linear(4, 2).requires_grad_(False)
        self.optimizer = torch.optim.AdamW(self.policy.parameters())
        self.policy(torch.ones(1, 4)).sum().backward()
        self.optimizer.step()
        self.reward_model = self.value_model = None
        self.engine = SimpleNamespace(memory_bytes=lambda: {"kv_cache": 1000})
        self.role_load_bytes = {"policy": {"cpu": 300}, "reference": {"cpu": 50}}
        self.passes = 1
        self.budget = Budget(suite.budget, steps=2, completions=16, prompts=4, tokens=320, trained_tokens=800,
                             seconds=10.0, flops_by_phase={"generate": 10**9, "update": 3 * 10**9})
        self.phases = PhaseStats()

        def reading(start: int, peak: int) -> dict:
            return {"cpu": SimpleNamespace(start_bytes=start, peak_bytes=peak, note="")}

        # generate rises 4,000 to 5,000; the reference 1,800 to 3,000; the first update reaches the peak,
        # 9,000, rising 7,000 of which 100 are gradients and AdamW state it created (static, not
        # transient): 6,900, with 180 static bytes held when it ended; a second update peaks lower (8,000)
        # but rises more (from 0, 28 bytes of state created: 7,972), ending with the final 208 static bytes.
        self.phases.add("generate", 2.0, reading(1000, 5000), 0, 80)
        self.phases.add("ref_logprobs", 1.0, reading(1200, 3000), 0, 80)
        self.phases.add("update", 3.0, reading(2000, 9000), 100, 180)
        self.phases.add("update", 1.0, reading(0, 8000), 28, 208)
        self.phases.add("eval", 0.5)
        self.step_metrics = [{"reward/mean": 0.1 * i, "gold/accuracy": 0.05 * i, "kl/k3": 0.01 * i,
                              "time/step_s": 5.0} for i in range(1, evals_steps + 1)]
        self.step_metrics[-1]["loss/value"] = 5.0  # only the last step has it

    def role_models(self) -> dict:
        return {"policy": (self.policy, self.optimizer), "reference": (self.reference, None)}


def evals(before: float, before_se: float, after: float, after_se: float) -> list[dict]:
    return [{"eval/accuracy": before, "eval/accuracy_stderr_binomial": before_se, "eval/pass@4": 0.5, "eval/pass@4_stderr_binomial": 0.03},
            {"eval/accuracy": 0.9, "eval/accuracy_stderr_binomial": 0.5},  # the curve's middle: neither before nor after
            {"eval/accuracy": after, "eval/accuracy_stderr_binomial": after_se, "eval/pass@4": 0.6, "eval/pass@4_stderr_binomial": 0.035,
             "eval/mean_length": 18.0}]


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    path = tmp_path_factory.mktemp("summary") / "suite.yaml"
    path.write_text(SUITE)
    return load_suite(path)


@pytest.fixture(autouse=True)
def _recorded_rates(monkeypatch, tmp_path):
    """The CPU's fp32 peak and read bandwidth as measured once on a machine (2e10 FLOP/s, 1e9 bytes/s),
    instead of timing a 2048 x 2048 matmul and 1 GiB reads again under a shared CPU (10-20 s): the MFU
    and the roofline below are then figures worked by hand. A cache of this test's own, so a peak
    another test measured and cached is not read instead."""
    monkeypatch.setenv("RLBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("rlbench.measure.flops.measure_matmul_flops", lambda *args, **kwargs: 2e10)
    monkeypatch.setattr("rlbench.measure.flops.measure_read_bandwidth", lambda *args, **kwargs: 1e9)


@pytest.fixture
def summary(suite):
    paired = {"outcomes": {"before": "01", "after": "11"},
              "paired": {"delta": 0.1, "ci95": [0.02, 0.18], "stderr": 0.04, "after_stderr": 0.021,
                         "before_stderr": 0.019}}
    return summarize_run(FinishedRun(suite), RecordedProbe(),
                         {"baseline_bytes": {"cpu": 800}, "evals": evals(0.3, 0.02, 0.4, 0.025),
                          "paired_accuracy": paired})


def test_roles_static_bytes_and_peaks(summary):
    roles = summary["roles"]
    # policy: weight 4 x 2 + bias 2 = 10 floats = 40 bytes; gradients 40; AdamW exp_avg 40, exp_avg_sq 40
    # and a 4-byte step per parameter tensor: 88. Total 168. The reference: 40. The engine: its 1,000.
    assert {k: roles["policy"]["static"][k] for k in ("weights", "master", "gradients", "optimizer", "total")} == {
        "weights": 40, "master": 0, "gradients": 40, "optimizer": 88, "total": 168}
    assert roles["reference"]["static"]["total"] == 40
    assert roles["rollout"]["static"] == {"kv_cache": 1000, "total": 1000}
    assert roles["policy"]["load_bytes"] == {"cpu": 300} and roles["rollout"]["load_bytes"] == {}
    # policy's phases: generate (peak 5,000), update (9,000) and eval (no reading); reference: ref_logprobs
    assert set(roles["policy"]["phases"]) == {"generate", "update", "eval"}
    # The steady rise is the second update's alone (7,972; the first call's 6,900 left out); generate ran
    # once, so it has none.
    assert roles["policy"]["phases"]["update"] == {"seconds": 4.0, "calls": 2, "peak_bytes": {"cpu": 9000},
                                                   "rise_bytes": {"cpu": 7972}, "steady_rise_bytes": {"cpu": 7972},
                                                   "anon_peak_bytes": {"cpu": 8000}}
    assert roles["policy"]["phases"]["generate"]["steady_rise_bytes"] is None
    assert roles["policy"]["phases"]["eval"]["peak_bytes"] == {}
    assert roles["policy"]["peak_bytes"] == {"cpu": 9000}  # the higher of its phases
    assert roles["reference"]["peak_bytes"] == {"cpu": 3000}
    assert roles["rollout"]["phases"] == {} and roles["rollout"]["peak_bytes"] == {}
    assert roles["policy"]["anon_peak_bytes"] == {"cpu": 8000} and roles["reference"]["anon_peak_bytes"] == {"cpu": 2500}


def test_reconciliation_by_hand(summary):
    # peak phase update (9,000); process peak max(9,000, the probe's 9,500) = 9,500. The call that reached
    # the peak, not the phase's largest rise nor the roles' final static bytes: static when it ended 180
    # + the engine's 1,000 = 1,180; its transient 6,900; attributed 8,080; other = 9,500 - 800 - 8,080 = 620
    assert summary["memory"]["reconciliation"]["cpu"] == {
        "process_peak_bytes": 9500, "peak_phase": "update", "baseline_bytes": 800, "static_bytes": 1180,
        "peak_phase_transient_bytes": 6900, "attributed_bytes": 8080, "other_bytes": 620}
    assert summary["memory"]["probe"] == "cpu" and summary["memory"]["baseline_bytes"] == {"cpu": 800}


def test_throughput_by_hand(summary):
    t = summary["throughput"]
    assert {k: t[k] for k in ("time/generate_s", "time/ref_logprobs_s", "time/update_s", "time/rl_s", "time/eval_s")} \
        == {"time/generate_s": 2.0, "time/ref_logprobs_s": 1.0, "time/update_s": 4.0, "time/rl_s": 10.0,
            "time/eval_s": 0.5}
    assert t["time/step_s"] == 5.0  # 10 s / 2 steps
    assert t["throughput/completions_per_s"] == 1.6  # 16 / 10 s
    assert t["throughput/tokens_per_s"] == 32.0  # 320 / 10 s
    assert t["throughput/gen_tokens_per_s"] == 160.0  # 320 tokens / 2 s of generation
    assert t["throughput/trained_tokens_per_s"] == 200.0  # 800 / 4 s of update
    assert t["throughput/model_flops_per_s"] == 4e8  # (1e9 + 3e9) / 10 s
    assert t["throughput/mfu"] == pytest.approx(0.02, rel=1e-12)  # 4e8 FLOP/s over the 2e10 peak


def test_accuracy_and_its_metrics_by_hand(summary):
    accuracy = summary["accuracy"]
    assert accuracy["before"]["eval/accuracy"] == 0.3 and accuracy["after"]["eval/accuracy"] == 0.4
    assert len(accuracy["curve"]) == 3
    # delta 0.4 - 0.3 = 0.1; noise 0.025 + 0.02 = 0.045; 0.1 > 0.045: significant
    assert accuracy["delta"] == pytest.approx(0.1) and accuracy["delta_stderr_sum"] == pytest.approx(0.045)
    assert accuracy["significant"] is True
    metrics = summary["metrics"]
    # the paired, clustered errors where the run kept per-problem outcomes
    assert (metrics["eval/accuracy"]["value"], metrics["eval/accuracy"]["stderr"]) == (0.4, 0.021)
    assert (metrics["eval/accuracy_before"]["value"], metrics["eval/accuracy_before"]["stderr"]) == (0.3, 0.019)
    assert metrics["eval/accuracy_delta"]["stderr"] == 0.04
    assert (metrics["eval/pass@4"]["value"], metrics["eval/pass@4"]["stderr"]) == (0.6, 0.035)
    assert metrics["eval/pass@4"]["stderr_kind"] == "binomial"  # the after-evaluation's own binomial error
    assert metrics["eval/mean_length"]["value"] == 18.0 and "stderr" not in metrics["eval/mean_length"]
    assert "eval/accuracy_stderr_binomial" not in metrics and "eval/pass@4_stderr_binomial" not in metrics


def test_memory_metrics_by_hand(summary):
    metrics = summary["metrics"]
    assert metrics["memory/policy/total_bytes"]["value"] == 168
    assert metrics["memory/policy/gradients_bytes"]["value"] == 40
    assert metrics["memory/rollout/total_bytes"]["value"] == 1000
    assert "memory/rollout/weights_bytes" not in metrics  # the engine reported no weights
    assert metrics["memory/policy/peak_bytes"]["value"] == 9000 and "memory/rollout/peak_bytes" not in metrics
    assert metrics["memory/process_peak_bytes"]["value"] == 9500
    assert metrics["memory/policy/anon_peak_bytes"]["value"] == 8000
    assert metrics["memory/process_anon_peak_bytes"]["value"] == 8200
    assert metrics["memory/process_anon_rise_bytes"]["value"] == 7000


def test_learning_is_the_mean_of_the_last_quarter(summary):
    # 8 steps: the last 8 // 4 = 2. reward/mean (0.7 + 0.8) / 2 = 0.75; gold (0.35 + 0.4) / 2 = 0.375;
    # kl 0.075; loss/value only in the last step: 5.0; time/ keys are not learning figures
    learning = summary["learning"]
    assert learning == pytest.approx({"reward/mean": 0.75, "gold/accuracy": 0.375, "kl/k3": 0.075, "loss/value": 5.0})
    assert summary["metrics"]["reward/mean"]["value"] == pytest.approx(0.75)


def test_learning_of_a_short_run_is_its_last_step(suite):
    # 3 steps: 3 // 4 = 0, at least 1 step: the last, reward 0.3
    out = summarize_run(FinishedRun(suite, evals_steps=3), RecordedProbe(), {"evals": evals(0.3, 0.02, 0.4, 0.025)})
    assert out["learning"]["reward/mean"] == pytest.approx(0.3)
    assert out["memory"]["baseline_bytes"] == {}
    # no baseline reading: 0, so other = 9,500 - 8,080 = 1,420
    recon = out["memory"]["reconciliation"]["cpu"]
    assert (recon["baseline_bytes"], recon["other_bytes"]) == (0, 1420)
    # without paired outcomes the binomial errors are the metrics' errors
    assert out["metrics"]["eval/accuracy"]["stderr"] == 0.025 and out["metrics"]["eval/accuracy_delta"]["stderr"] \
        == pytest.approx(0.045)


def test_a_run_that_took_no_measurable_time_still_has_finite_rates(suite):
    # 2 steps in 0 s (a clock too coarse): rates over 1 ns, 16 completions -> 1.6e10 per second
    run = FinishedRun(suite)
    run.budget.seconds = 0.0
    throughput = summarize_run(run, RecordedProbe(), {})["throughput"]
    assert throughput["throughput/completions_per_s"] == pytest.approx(1.6e10)
    assert throughput["time/step_s"] == 0.0


def test_a_run_without_flops_counted_has_no_flops_rate_or_mfu(suite):
    run = FinishedRun(suite)
    run.budget.flops_by_phase = {}
    throughput = summarize_run(run, RecordedProbe(), {})["throughput"]
    assert "throughput/model_flops_per_s" not in throughput and "throughput/mfu" not in throughput
    assert throughput["time/step_s"] == 5.0


def test_two_evaluations_give_a_change(suite):
    # before and after only: 0.3 -> 0.4, noise 0.02 + 0.025
    two = evals(0.3, 0.02, 0.4, 0.025)
    out = summarize_run(FinishedRun(suite), RecordedProbe(), {"evals": [two[0], two[2]]})
    assert out["accuracy"]["delta"] == pytest.approx(0.1) and out["accuracy"]["delta_stderr_sum"] == pytest.approx(0.045)


def test_a_change_equal_to_its_noise_is_not_significant(suite):
    # 0.25 -> 0.5 with standard errors 0.125 each: delta 0.25 = noise 0.25 (exact in binary): not significant
    out = summarize_run(FinishedRun(suite), RecordedProbe(), {"evals": evals(0.25, 0.125, 0.5, 0.125)})
    assert out["accuracy"]["delta"] == out["accuracy"]["delta_stderr_sum"] == 0.25
    assert out["accuracy"]["significant"] is False


def test_one_evaluation_has_no_change_and_none_has_no_accuracy(suite):
    one = summarize_run(FinishedRun(suite), RecordedProbe(), {"evals": evals(0.3, 0.02, 0.4, 0.025)[:1]})
    assert "delta" not in one["accuracy"] and one["accuracy"]["before"] is one["accuracy"]["after"]
    assert summarize_run(FinishedRun(suite), RecordedProbe(), {})["accuracy"] == {}


def test_heldout_witness():
    # the paired interval's half-width where there is one: (0.18 - 0.02) / 2 = 0.08
    paired = {"delta": 0.1, "delta_stderr_sum": 0.3, "paired": {"delta": 0.12, "ci95": [0.02, 0.18]}}
    (change, noise), kind = heldout_witness(paired)
    assert (change, kind) == (0.12, PAIRED_INTERVAL) and noise == pytest.approx(0.08)
    # no interval (one cluster: NaN ends), or no paired entry: the sum of the two standard errors
    for accuracy in ({"delta": 0.1, "delta_stderr_sum": 0.3, "paired": {"delta": 0.12, "ci95": [math.nan, math.nan]}},
                     {"delta": 0.1, "delta_stderr_sum": 0.3, "paired": {"delta": 0.12, "ci95": [0.0, math.nan]}},
                     {"delta": 0.1, "delta_stderr_sum": 0.3, "paired": {"delta": 0.12, "ci95": None}},
                     {"delta": 0.1, "delta_stderr_sum": 0.3}):
        assert heldout_witness(accuracy) == ((0.1, 0.3), STDERR_SUM)
    assert heldout_witness({"paired": {"delta": 0.12, "ci95": [0.02, 0.18]}}) == (None, STDERR_SUM)
    assert heldout_witness({}) == (None, STDERR_SUM)


def test_the_mfu_peak_is_named_exactly_when_an_mfu_is_reported(summary, suite):
    assert summary["mfu_peak"]["flops_per_s"] == 2e10  # the recorded matmul rate behind the 0.02 MFU
    run = FinishedRun(suite)
    run.budget.flops_by_phase = {}  # no FLOPs counted: no MFU, so no peak to name
    assert "mfu_peak" not in summarize_run(run, RecordedProbe(), {})


class EngineChildren:
    """The cpu probe's record of the rollout engine's child processes (vLLM's engine core)."""

    name = "cpu"

    def children_memory(self) -> dict:
        return {"method": "VmRSS", "peak_call": {}, "resident_bytes": {"EngineCore": 5000, "worker": 700}}


class RecordedProbeWithChildren(RecordedProbe):
    probes = [EngineChildren()]


def test_the_engines_child_processes_go_to_the_rollout_role(summary, suite):
    # without child processes recorded, nothing is said of them
    assert "engine_processes" not in summary["memory"] and "resident_bytes" not in summary["roles"]["rollout"]
    out = summarize_run(FinishedRun(suite), RecordedProbeWithChildren(), {})
    assert out["memory"]["engine_processes"] == {"cpu": EngineChildren().children_memory()}
    assert out["roles"]["rollout"]["resident_bytes"] == {"cpu": 5700}  # 5,000 + 700


def test_the_steady_rise_leaves_out_a_phase_s_first_call():
    """A first generate that rises 15,000 (library code paged in, one-time heap), later ones 7,000 and
    8,000: the rise over all calls is the first's, the steady rise the largest of the later ones."""
    stats = PhaseStats()
    for start, peak in ((1000, 16000), (1000, 8000), (2000, 10000)):
        stats.add("generate", 1.0, {"cpu": SimpleNamespace(start_bytes=start, peak_bytes=peak, note="")})
    stats.add("eval", 1.0, {"cpu": SimpleNamespace(start_bytes=0, peak_bytes=500, note="")})
    assert stats.rise_bytes["cpu"] == {"generate": 15000, "eval": 500}
    assert stats.steady_rise_bytes["cpu"] == {"generate": 8000}  # eval ran once: no steady figure


class EngineChildrenAtThePeak(EngineChildren):
    def children_memory(self) -> dict:
        # the engine's processes held 1,300 bytes when the peak call (update) began
        return {"method": "VmRSS", "peak_call": {"update": {"start_bytes": 1300}},
                "resident_bytes": {"EngineCore": 1300}}


class RecordedProbeWithChildrenAtThePeak(RecordedProbe):
    probes = [EngineChildrenAtThePeak()]


def test_the_engine_s_workspace_at_the_peak_call_is_attributed(suite):
    # As test_reconciliation_by_hand, with the engine's processes at 1,300 bytes when the update began:
    # beyond its 1,000-byte cache (static), 300 bytes of workspace. Attributed 1,180 + 6,900 + 300 = 8,380;
    # other = 9,500 - 800 - 8,380 = 320.
    out = summarize_run(FinishedRun(suite), RecordedProbeWithChildrenAtThePeak(), {"baseline_bytes": {"cpu": 800}})
    r = out["memory"]["reconciliation"]["cpu"]
    assert (r["engine_processes_bytes"], r["engine_workspace_bytes"]) == (1300, 300)
    assert (r["static_bytes"], r["attributed_bytes"], r["other_bytes"]) == (1180, 8380, 320)


def test_each_phase_against_its_floor_by_hand(summary, suite):
    # FLOPs counted, no bytes: each floor is the compute bound over the 2e10 peak. generate 1e9 / 2e10 =
    # 0.05 s, measured 2 s: ratio 40; update 3e9 / 2e10 = 0.15 s, measured 4 s: ratio 26.67; reference and
    # eval counted nothing: not listed. The CPU's read bandwidth is given beside it (recorded: 1e9 bytes/s).
    roofline = summary["roofline"]
    assert set(roofline) == {"generate", "update"} and summary["read_bytes_per_s"] == 1e9
    for phase, floor, measured in (("generate", 0.05, 2.0), ("update", 0.15, 4.0)):
        assert roofline[phase]["compute_s"] == roofline[phase]["floor_s"] == pytest.approx(floor, rel=1e-12)
        assert (roofline[phase]["memory_s"], roofline[phase]["bound"], roofline[phase]["measured_s"]) \
            == (None, "compute", measured)
        assert roofline[phase]["ratio"] == pytest.approx(measured / floor, rel=1e-12)
    # bytes counted, no FLOPs: generate reads 5e8 bytes at 1e9 bytes/s, a 0.5 s memory floor; 2 s measured:
    # ratio 4 (all exact in binary)
    run = FinishedRun(suite)
    run.budget.flops_by_phase, run.budget.bytes_by_phase = {}, {"generate": 5 * 10**8}
    out = summarize_run(run, RecordedProbe(), {})
    assert out["roofline"] == {"generate": {"compute_s": None, "memory_s": 0.5, "floor_s": 0.5, "bound": "memory",
                                            "measured_s": 2.0, "ratio": 4.0}}
    assert out["read_bytes_per_s"] == 1e9


def test_a_run_with_no_step_or_nothing_counted_has_no_roofline(suite):
    # bytes counted by a first step that never finished: no step, no roofline (nor bandwidth, nor peak)
    run = FinishedRun(suite)
    run.budget.steps, run.budget.bytes_by_phase = 0, {"generate": 5 * 10**8}
    out = summarize_run(run, RecordedProbe(), {})
    assert "roofline" not in out and "read_bytes_per_s" not in out and "mfu_peak" not in out
    run = FinishedRun(suite)
    run.budget.flops_by_phase = {}  # two steps, neither FLOPs nor bytes counted
    assert "roofline" not in summarize_run(run, RecordedProbe(), {})


def test_a_cached_peak_below_the_rate_the_run_reached_is_measured_again(suite):
    # The run reached (1e9 + 3e9) FLOPs / 10 s = 4e8 FLOP/s (exact): a cached fp32 peak of 4e8 stands; one
    # of 3.9e8 was measured under load, so it is measured again (the recorded 2e10).
    path, key = cache_root() / CPU_PEAK_CACHE_FILE, f"{cpu_identity()} | fp32 mm and linear up to 2048"
    path.parent.mkdir(parents=True, exist_ok=True)
    for cached, peak in ((4e8, 4e8), (3.9e8, 2e10)):
        path.write_text(json.dumps({key: {"value": cached}}))
        assert summarize_run(FinishedRun(suite), RecordedProbe(), {})["mfu_peak"]["flops_per_s"] == peak
    # A run that took no measurable time reached 4e9 FLOPs over 1 ns (its rates are over 1 ns) = 4e18
    # FLOP/s: a cached 6e18 stands, its entry untouched (over 0.5 ns it would be 8e18: measured again).
    run = FinishedRun(suite)
    run.budget.seconds = 0.0
    path.write_text(json.dumps({key: {"value": 6e18}}))
    assert summarize_run(run, RecordedProbe(), {})["mfu_peak"]["flops_per_s"] == 6e18
    assert json.loads(path.read_text())[key] == {"value": 6e18}
