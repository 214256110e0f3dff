"""What the cpu memory probe costs: one GRPO-Zero RL step on the embedded model, measured with the
probe's phases on (clear_refs + VmHWM at every phase boundary) and with a probe that does nothing.

    .venv/bin/python -m pytest benchmarks/test_probe_overhead.py --benchmark-only

Both land in the benchmark group `probe_overhead`, side by side; the ratio of the means is
printed at the end of the session. Judging the ratio is left to whoever reads it: a benchmark
records, it does not assert.
"""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("probe_name", ["cpu", "none"])
def test_rl_step_probe_overhead(benchmark, make_run, no_probe, overhead_means, probe_name: str) -> None:
    from rlbench.catalog import resolve_probe

    run = make_run(resolve_probe("cpu", 10.0, "fast") if probe_name == "cpu" else no_probe)
    benchmark.group = "probe_overhead"
    metrics = benchmark.pedantic(run.step, rounds=5, iterations=1, warmup_rounds=1)
    assert metrics["completions"] == 64 * run.budget.steps, "each step samples completions_per_step"
    if probe_name == "cpu":
        assert run.phases.peak_bytes["cpu"]["update"] > 0, "the cpu probe measured the update phase"
    overhead_means[probe_name] = benchmark.stats.stats.mean
