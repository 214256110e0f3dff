"""Traces side by side (rlbench/estimate/parallel.py): the same figures as one after another."""

from __future__ import annotations

import json
import pickle

import pytest

from rlbench.estimate.parallel import TracePool, default_jobs
from rlbench.estimate.simulate import TraceFailed
from tests.test_estimate import TINY_CONFIG, rlbench, suite_file

# TINY_CONFIG: a tiny Llama of 8 layers, more than the estimate traces whole, so each estimate is
# two traces.
SUITE = """
name: parallel
model: {name: MODEL, dtype: float32, sft: {steps: 0}}
task: {name: synthetic, train_size: 64, max_steps: 1}
algorithms:
  - name: grpo_zero
  - name: grpo
budget: {steps: 1}
rollout: {engine: hf, completions_per_step: 8, group_size: 4, max_new_tokens: 4}
eval: {size: 2, batch_size: 2}
"""


def _without_seconds(document):
    if isinstance(document, dict):
        return {k: _without_seconds(v) for k, v in document.items() if k != "seconds"}
    if isinstance(document, list):
        return [_without_seconds(v) for v in document]
    return document


def test_traces_in_worker_processes_give_every_figure_of_the_serial_estimate(tmp_path):
    # Through the command, each in its own process: a pool of spawned workers leaves multiprocessing's
    # resource tracker running beside its parent, which would count as a child process of this one
    # in the tests of the process-tree probe.
    (tmp_path / "config.json").write_text(json.dumps(TINY_CONFIG))
    path = suite_file(tmp_path, SUITE.replace("MODEL", str(tmp_path / "config.json")))
    documents = []
    for jobs in ("1", "2"):
        proc = rlbench("estimate", str(path), "--json", "--prompt-tokens", "10", "--device", "cpu", "--jobs", jobs,
                       "--no-cache")
        assert proc.returncode == 0, proc.stderr[-2000:]
        documents.append(json.loads(proc.stdout))
    serial, side_by_side = documents
    assert [a["traced_depths"] for a in serial["algorithms"]] == [[4, 5], [4, 5]]
    assert _without_seconds(side_by_side) == _without_seconds(serial)


def test_a_failed_trace_crosses_from_a_worker_with_its_phase_and_message():
    failed = TraceFailed("update", ValueError("shapes differ\nsecond line"))
    back = pickle.loads(pickle.dumps(failed))
    assert (back.phase, str(back)) == ("update", "in update: ValueError: shapes differ")


def test_the_pool_refuses_no_workers_and_defaults_to_at_most_six():
    with pytest.raises(ValueError):
        TracePool(0)
    assert 1 <= default_jobs() <= 6


def test_the_pool_tells_its_listener_of_each_trace_as_it_starts_and_ends(tmp_path):
    from rlbench.config import load_suite
    from rlbench.estimate import estimate_suite

    (tmp_path / "config.json").write_text(json.dumps(TINY_CONFIG))
    suite = load_suite(suite_file(tmp_path, SUITE.replace("MODEL", str(tmp_path / "config.json"))))
    heard = []
    pool = TracePool(1, lambda done, started, what: heard.append((done, started, what)))
    estimate_suite(suite, "cpu", prompt_tokens=10, pool=pool)
    # two algorithms, each traced at 4 and 5 layers, one after another
    assert [(done, started) for done, started, _ in heard] == [(0, 1), (1, 1), (1, 2), (2, 2), (2, 3), (3, 3),
                                                               (3, 4), (4, 4)]
    assert heard[0][2] == "grpo_zero on 1 rank, 8 completions, 4 layers"
    assert heard[-1][2] == "grpo on 1 rank, 8 completions, 5 layers"


def test_ctrl_c_ends_an_estimate_and_its_workers_at_once():
    # A worker finishes its trace before it looks at a signal: the estimate stops them instead.
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    proc = subprocess.Popen([sys.executable, "-m", "rlbench", "estimate", "--model", "shape:qwen2.5-7b",
                             "--ranks", "8", "--jobs", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: (signal.signal(signal.SIGINT, signal.SIG_DFL), os.setpgrp()))
    try:
        workers = []
        deadline = time.monotonic() + 120
        while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
            workers = [c for c in psutil.Process(proc.pid).children(recursive=True) if "spawn_main" in " ".join(c.cmdline())]
            time.sleep(0.5)
        assert len(workers) == 2, "the two workers never started"
        while min(sum(w.cpu_times()[:2]) for w in workers) < 10 and time.monotonic() < deadline:
            time.sleep(0.5)  # until both are in their traces (imports take about 4 s of CPU; a trace, tens)
        os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C does: the whole foreground group
        start = time.monotonic()
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - start
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "interrupted"
    # Stopped, the workers end in about a second (2.2 s at the 7B shape here); left to finish their
    # traces, as before, the estimate took 30.7 s there to exit.
    assert took < 10, f"the estimate took {took:.1f} s to end after Ctrl-C"
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
