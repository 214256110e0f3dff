"""One rank of a distributed run, each phase's rise call by call: what a report's largest-over-calls hides.

    python -m torch.distributed.run --standalone --nproc_per_node 2 benchmarks/rank_rises.py SUITE POLICY_DIR \
        [ALGORITHM_INDEX] [REWARD_DIR]

Each rank builds the worker's `Run` (the suite's probe, this rank's `Dist`), runs the suite's
budget.steps steps with `rlbench.train.Run.step`, and prints one line `RANK r {json}`: its static
bytes per role and, per phase, the rise above the phase's start net of the static state it created
(what `PhaseStats.add` keeps the largest of), one figure per call; with RLBENCH_RANK_RISES_DIR set,
also in that folder as rank{r}.txt (two ranks' long lines on one stdout may interleave). Start it with the worker's heap
setting (`rlbench.measure.memory.cpu_worker_env(suite.probe_heap)`), as the runner does. Used by
tests/test_estimate_ranks.py and benchmarks/estimate_ranks_vs_run.py.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from rlbench.catalog import resolve_probe
from rlbench.config import load_suite
from rlbench.distributed import Dist
from rlbench.measure.static import role_static_bytes
from rlbench.train import Run


def main(argv: list[str]) -> None:
    suite = load_suite(argv[0])
    index = int(argv[2]) if len(argv) > 2 else 0
    reward_dir = Path(argv[3]) if len(argv) > 3 and argv[3] else None
    torch.set_num_threads(1)
    dist = Dist.from_env(suite.distributed)
    probe = resolve_probe(suite.probe, suite.probe_period_ms, suite.probe_heap)
    probe.snapshot()
    run = Run.build(suite, suite.algorithms[index], suite.seeds[0], Path(argv[1]), reward_dir, probe, dist=dist)
    rises: dict[str, list[int]] = {}
    add = run.phases.add

    def each_call(phase, seconds, memory=None, static_created=0, static_end=0):  # type: ignore[no-untyped-def]
        mem = (memory or {}).get("cpu")
        if mem is not None:
            rises.setdefault(phase, []).append(max(0, mem.peak_bytes - mem.start_bytes - static_created))
        add(phase, seconds, memory, static_created, static_end)

    run.phases.add = each_call  # the run's phase bookkeeping, read call by call; the loop is untouched
    for _ in range(suite.budget.steps):
        run.step()
    static = {role: role_static_bytes(model, opt, run.precision.compute_dtype)["total"]
              for role, (model, opt) in run.role_models().items()}
    line = f"RANK {dist.rank} {json.dumps({'rises': rises, 'static': static})}"
    out_dir = os.environ.get("RLBENCH_RANK_RISES_DIR")  # one file per rank: ranks' stdout lines may interleave
    if out_dir:
        Path(out_dir, f"rank{dist.rank}.txt").write_text(line + "\n")
    print(line, flush=True)
    dist.close()


if __name__ == "__main__":
    main(sys.argv[1:])
