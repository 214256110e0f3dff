"""A distributed suite as 2 nodes x 2 ranks on one machine: two torchrun launchers, one c10d rendezvous.

    python benchmarks/multinode_cpu.py [SUITE] [--nodes 2] [--ranks-per-node 2] [--algos grpo_zero] [--output DIR]

What a real multi-node launch does, on localhost: the suite's shared stages (SFT, cached) are
prepared once, then for each algorithm one spec is written and `--nodes` torchrun launchers are
started side by side, each with

    python -m torch.distributed.run --nnodes 2 --node-rank K --nproc-per-node 2 \\
        --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:PORT --rdzv-id ID --rdzv-conf is_host=BOOL \\
        -m rlbench.worker SPEC.json

(`is_host=true` for node 0 only: on one machine every launcher matches the endpoint's host, and two
of them each hosting a store never meet.) They meet at the rendezvous (node 0's launcher hosts the
c10d store), agree on a world of nodes x ranks, and every rank runs the worker as `rlbench run` would, writing `rank{r}/result.json`
with its node rank (torchrun's GROUP_RANK), local rank and host. The ranks are merged as the runner
merges them (`rlbench.rank_results.merge_ranks`) and printed per rank: node, static bytes per
role, each phase's rise and peak, process peak. `--json OUT` writes the merged results.

The suite's `distributed.nproc_per_node` is set to `--ranks-per-node`; its prompts must split over
all nodes x ranks (distributed-cpu.yaml's do over 4). On GPUs, see docs/multinode.md.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def prepare(suite_path: str, overrides: list[str], out_dir: Path) -> tuple[Any, Path, dict[str, Any]]:
    """The suite (resolved and written to `out_dir`) and its shared stages, as `rlbench run` prepares them."""
    import yaml
    from rich.console import Console

    from rlbench.config import load_suite, resolved_dict
    from rlbench.stages.prepare import prepare_stages

    suite = load_suite(suite_path, overrides)
    resolved = out_dir / "suite.resolved.yaml"
    resolved.write_text(yaml.safe_dump(resolved_dict(suite), sort_keys=False))
    stages = prepare_stages(suite, Console(stderr=True))
    return suite, resolved, stages


def launch(spec_path: Path, nodes: int, per_node: int, log: Path, timeout_s: float) -> int:
    """`nodes` torchrun launchers on one c10d rendezvous; the worst exit code."""
    from rlbench.measure.memory import cpu_worker_env

    port, rdzv_id = free_port(), uuid.uuid4().hex[:8]
    env = dict(os.environ, **cpu_worker_env("exact"), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = []
    with open(log, "w") as out:
        for node in range(nodes):
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nodes),
                   "--node-rank", str(node), "--nproc-per-node", str(per_node), "--rdzv-backend", "c10d",
                   "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", rdzv_id,
                   # on one machine every launcher matches the endpoint's host: say which one hosts the store
                   "--rdzv-conf", f"is_host={'true' if node == 0 else 'false'}",
                   "-m", "rlbench.worker", str(spec_path)]
            out.write(f"node {node}: {' '.join(cmd)}\n")
            out.flush()
            procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT))
        deadline = time.monotonic() + timeout_s
        codes = [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    return max(codes, key=abs)


def rank_rows(run_dir: Path, world: int) -> list[dict[str, Any]]:
    """Per rank: node, local rank, static bytes per role, phase rises (all calls; after the first) and peaks
    above the baseline (cpu probe)."""
    rows = []
    for rank in range(world):
        result = json.loads((run_dir / f"rank{rank}" / "result.json").read_text())
        base = result["baseline_bytes"]["cpu"]
        dist = result["distributed"]
        phases = {phase: {"rise_mib": round(f["rise_bytes"]["cpu"] / MIB, 2),
                          "steady_rise_mib": (None if f.get("steady_rise_bytes") is None
                                              else round(f["steady_rise_bytes"]["cpu"] / MIB, 2)),
                          "peak_above_baseline_mib": round((f["peak_bytes"]["cpu"] - base) / MIB, 2)}
                  for role in result["roles"].values() for phase, f in role["phases"].items()}
        rows.append({"rank": rank, "node_rank": dist.get("node_rank"), "local_rank": dist.get("local_rank"),
                     "host": dist.get("host"), "status": result["status"],
                     "static_mib": {r: round(e["static"]["total"] / MIB, 3) for r, e in result["roles"].items()},
                     "phases": phases,
                     "process_peak_above_baseline_mib": round((result["memory"]["reconciliation"]["cpu"]
                                                               ["process_peak_bytes"] - base) / MIB, 1)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", nargs="?", default=str(ROOT / "suites" / "distributed-cpu.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--ranks-per-node", type=int, default=2)
    parser.add_argument("--algos", default="grpo_zero", help="labels of the suite's algorithms to run, comma-separated")
    parser.add_argument("--output", help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--json", help="write the merged results and per-rank rows to this file")
    parser.add_argument("--timeout", type=float, default=1200)
    args = parser.parse_args(argv)
    from rlbench.rank_results import merge_ranks

    world = args.nodes * args.ranks_per_node
    overrides = ["rollout.ignore_eos=true", "probe_heap=exact", f"distributed.nproc_per_node={args.ranks_per_node}",
                 *args.overrides]
    with tempfile.TemporaryDirectory(prefix="rlbench-multinode-") as tmp:
        out_dir = Path(args.output or tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        suite, resolved, stages = prepare(args.suite, overrides, out_dir)
        report: dict[str, Any] = {"nodes": args.nodes, "ranks_per_node": args.ranks_per_node, "world_size": world,
                                  "runs": {}}
        for index, algo in enumerate(suite.algorithms):
            label = algo.label or algo.name
            if label not in args.algos.split(","):
                continue
            run_dir = out_dir / "runs" / f"{label}-seed{suite.seeds[0]}"
            run_dir.mkdir(parents=True, exist_ok=True)
            spec = {"suite_path": str(resolved), "algorithm_index": index, "seed": suite.seeds[0],
                    "policy_dir": stages["policy_dir"], "reward_dir": stages.get("reward_dir"),
                    "run_dir": str(run_dir), "eval_before": stages.get("eval_before")}
            spec_path = run_dir / "spec.json"
            spec_path.write_text(json.dumps(spec))
            start = time.perf_counter()
            code = launch(spec_path, args.nodes, args.ranks_per_node, run_dir / "launchers.log", args.timeout)
            merged = merge_ranks(run_dir, world, (run_dir / "launchers.log").read_text())
            rows = rank_rows(run_dir, world) if merged.get("status") == "ok" else []
            report["runs"][label] = {"exit_code": code, "seconds": round(time.perf_counter() - start, 1),
                                     "status": merged.get("status"), "error": merged.get("error"),
                                     "ranks": rows, "distributed": merged.get("distributed")}
            print(f"{label}: {merged.get('status')} in {report['runs'][label]['seconds']} s "
                  f"({args.nodes} nodes x {args.ranks_per_node} ranks)")
            for row in rows:
                print(f"  rank {row['rank']} (node {row['node_rank']}, local {row['local_rank']}): static MiB "
                      f"{row['static_mib']}; process peak {row['process_peak_above_baseline_mib']} MiB above baseline; "
                      + ", ".join(f"{p} rise {f['rise_mib']}" for p, f in row["phases"].items()))
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
    return 0 if all(r["status"] == "ok" for r in report["runs"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
