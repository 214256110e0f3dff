"""Shared fixtures of the micro-benchmarks: the embedded model saved once, a GRPO-Zero run on it.

Run them with `make bench` (saves each run under .benchmarks/ and, once a saved run exists,
compares against it and fails on a mean regression above 10%), or directly:

    .venv/bin/python -m pytest benchmarks -q --benchmark-only
    .venv/bin/python -m pytest benchmarks/test_probe_overhead.py --benchmark-only

They are not part of `make test` (pytest's testpaths is tests/).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlbench.measure.probing import NullProbe

OVERHEAD_KEY = pytest.StashKey[dict]()

# The quickstart suite's RL shape: 64 completions per step in groups of 4, 40 new tokens.
RUN_SUITE = """
name: bench
model: {name: embedded, sft: {steps: 0}}
task: {name: synthetic, train_size: 2000}
algorithms:
  - name: grpo_zero
    rewards: {answer_correct: 1.0, format_strict: 0.1}
    params: {lr: 1.0e-4, beta: 0.04}
budget: {steps: 1000}
rollout: {engine: hf, completions_per_step: 64, group_size: 4, max_new_tokens: 40}
eval: {size: 16}
"""


@pytest.fixture(scope="session")
def embedded_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded model, freshly initialised (seed 0) and saved as a pretrained directory."""
    from rlbench.models.embedded import build_embedded, save_pretrained_pair

    model, tokenizer = build_embedded(seed=0)
    return save_pretrained_pair(model, tokenizer, tmp_path_factory.mktemp("embedded"))


@pytest.fixture(scope="session")
def run_suite(tmp_path_factory: pytest.TempPathFactory):
    from rlbench.config import load_suite

    path = tmp_path_factory.mktemp("suite") / "bench.yaml"
    path.write_text(RUN_SUITE)
    return load_suite(path)


@pytest.fixture
def make_run(run_suite, embedded_dir: Path):
    """make_run(probe) -> a GRPO-Zero Run on the embedded model (policy and reference loaded)."""
    from rlbench.train import Run

    def make(probe):
        torch.manual_seed(0)
        return Run.build(run_suite, run_suite.algorithms[0], 0, embedded_dir, None, probe)

    return make


@pytest.fixture
def no_probe() -> NullProbe:
    return NullProbe()


@pytest.fixture
def overhead_means(request: pytest.FixtureRequest) -> dict[str, float]:
    """Where the probe-overhead benchmarks leave their mean step time, keyed by probe name."""
    return request.config.stash.setdefault(OVERHEAD_KEY, {})


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Print the probe-overhead ratio recorded by test_probe_overhead.py, when both sides ran."""
    means = config.stash.get(OVERHEAD_KEY, {})
    if "cpu" in means and "none" in means:
        ratio = means["cpu"] / means["none"]
        terminalreporter.write_sep("-", "memory probe overhead")
        terminalreporter.write_line(
            f"RL step with the cpu probe: {means['cpu']:.4f} s, without a probe: {means['none']:.4f} s, "
            f"ratio {ratio:.4f} ({(ratio - 1) * 100:+.2f}%)")
