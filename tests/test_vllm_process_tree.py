"""The cpu probe measures the process tree: an engine's child processes (vLLM's engine core and
worker) count in every phase and go to the rollout role, and the reconciliation still adds up.

No vLLM here: the children are real processes holding real memory (a Python child that touches a
buffer), behind an engine stand-in at the vLLM boundary. The real engine's process tree is checked
in tests/test_vllm_runs.py (`make test-vllm`).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest

from rlbench.catalog import resolve_probe
from rlbench.config import load_suite
from rlbench.measure.cpu_probe import CpuProbe, reset_peak_rss
from rlbench.measure.summary import summarize_run
from rlbench.models.embedded import build_embedded, save_pretrained_pair
from rlbench.rollout.hf import HFEngine
from rlbench.train import Run, run_parts

MIB = 1 << 20
HOLD = """
import sys
held = bytearray({size})
for i in range(0, len(held), 4096):
    held[i] = 1                      # touch every page: resident
print("ready", flush=True)
sys.stdin.readline()                 # a line: touch {more} more MiB, then wait for the end
more = bytearray({more} << 20)
for i in range(0, len(more), 4096):
    more[i] = 1
del more
print("done", flush=True)
sys.stdin.read()
"""

pytestmark = pytest.mark.skipif(not reset_peak_rss(), reason="/proc/self/clear_refs is not writable here")


class Holder:
    """A child process holding `size` bytes, which can briefly touch `more` MiB on request."""

    def __init__(self, size: int, more: int = 0) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLD.format(size=size, more=more)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def spike(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "done"

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def test_a_child_spike_counts_in_the_phase_peak_and_the_children_record():
    probe = CpuProbe(period_ms=5)
    holder = Holder(64 * MIB, more=96)
    try:
        with probe.phase("generate") as mem:
            holder.spike()  # the child touches 96 MiB more and frees them within the phase
        # The child's VmHWM was reset at phase start, so its phase peak is its start plus the 96 MiB spike:
        # at least 95 MiB above (a few of the spike's pages may be ones the child's heap already held).
        assert mem.extra["children_peak_bytes"] >= mem.extra["children_start_bytes"] + 95 * MIB
        assert mem.peak_bytes - mem.start_bytes >= 95 * MIB
        children = probe.children_memory()
        call = children["peak_call"]["generate"]
        assert call["processes"] == 1 and call["start_bytes"] >= 64 * MIB
        assert sum(children["resident_bytes"].values()) >= 64 * MIB  # held, after the spike was freed
        assert probe.process_peak_bytes() >= mem.peak_bytes
    finally:
        holder.close()


def test_without_children_there_is_no_children_record():
    probe = CpuProbe(period_ms=5)
    with probe.phase("update") as mem:
        pass
    assert probe.children_memory() is None and "children_peak_bytes" not in mem.extra


class ChildEngine(HFEngine):
    """An engine with its own weights in a child process (as vLLM's worker holds them): samples from the
    policy like the hf engine, while a real child process holds `size` bytes it reports as its weights."""

    has_own_weights = True

    def __init__(self, policy, tokenizer, size: int) -> None:
        super().__init__(policy, tokenizer)
        self.size, self.holder = size, Holder(size)
        self.syncs = 0

    def sync_weights(self, policy) -> None:
        super().sync_weights(policy)
        self.syncs += 1

    def memory_bytes(self) -> dict[str, int]:
        return {"weights": self.size}

    def describe(self) -> dict:
        return {"weight_sync": "test", "weight_version": self.syncs}


SUITE = """
name: tree
model: {name: embedded, sft: {steps: 0}}
task: {name: synthetic, max_steps: 1, train_size: 200}
algorithms:
  - {name: grpo_zero, params: {lr: 1.0e-3}}
budget: {steps: 1}
rollout: {completions_per_step: 8, group_size: 4, max_new_tokens: 8}
probe: cpu
"""


def test_the_engine_processes_are_the_rollout_role_and_the_reconciliation_adds_up(tmp_path):
    (tmp_path / "suite.yaml").write_text(SUITE)
    suite = load_suite(tmp_path / "suite.yaml")
    model, tokenizer = build_embedded(seed=0)
    policy_dir = save_pretrained_pair(model, tokenizer, tmp_path / "policy")
    engines = []

    def child_engine(policy, tokenizer, options):
        engines.append(ChildEngine(policy, tokenizer, 48 * MIB))
        return engines[0]

    probe = resolve_probe("cpu", 10.0, "fast")
    baseline = probe.snapshot()
    try:
        parts = replace(run_parts(suite, suite.algorithms[0], probe, seed=0, policy_dir=policy_dir), engine=child_engine)
        run = Run(suite, suite.algorithms[0], 0, policy_dir, None, parts)
        run.step()  # generate, score, reference, update, then the sync into the engine
        summary = summarize_run(run, probe, {"baseline_bytes": baseline})
    finally:
        for engine in engines:
            engine.holder.close()
    roles, memory = summary["roles"], summary["memory"]
    rollout = roles["rollout"]
    assert rollout["static"] == {"weights": 48 * MIB, "total": 48 * MIB}
    assert rollout["engine"] == {"weight_sync": "test", "weight_version": 1}
    assert set(rollout["phases"]) == {"generate", "sync_weights"}  # the engine's phases, not the policy's
    assert rollout["resident_bytes"]["cpu"] >= 48 * MIB
    assert rollout["load_bytes"]["cpu"] >= 48 * MIB  # the child started while the engine loaded
    recon = memory["reconciliation"]["cpu"]
    # baseline + static + transient + the engine's processes beyond its static bytes + other = the tree's peak
    assert recon["engine_processes_bytes"] >= 48 * MIB
    assert recon["engine_workspace_bytes"] == recon["engine_processes_bytes"] - 48 * MIB >= 0
    assert recon["baseline_bytes"] + recon["static_bytes"] + recon["peak_phase_transient_bytes"] \
        + recon["engine_workspace_bytes"] + recon["other_bytes"] == recon["process_peak_bytes"]
    assert recon["other_bytes"] >= 0
    assert recon["process_peak_bytes"] >= recon["baseline_bytes"] + recon["static_bytes"]
