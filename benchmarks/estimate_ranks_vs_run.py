"""Per-rank `rlbench estimate` against distributed runs on gloo ranks, rank by rank and phase by phase.

    python benchmarks/estimate_ranks_vs_run.py [SUITE] [--set KEY=VALUE ...] [--qwen2] [--json OUT]
    python benchmarks/estimate_ranks_vs_run.py [SUITE] --report DIR      # a finished `rlbench run`'s folder

SUITE defaults to suites/distributed-cpu.yaml (2 gloo ranks, embedded model), run as the estimate
predicts (`rollout.ignore_eos: true`, `probe_heap: exact`, as in benchmarks/test_estimate_vs_run.py).
For each algorithm, the suite's ranks run the worker's `Run` under torchrun with each phase's rise
recorded call by call (benchmarks/rank_rises.py) while the estimate traces rank 0 of them on the
prompts the run draws. Printed per rank: static bytes per role (each rank's shards: rank 0's
exactly, the others' at most that, since padding may leave a rank fewer real rows), and
each phase's rise above its start against the estimate's transient, from the calls after the
first (a phase's first call also pages in library code and makes one-time heap: 8 MiB at the
embedded model's first generate; see tests/test_estimate.py), the first call shown beside. Phases
over 10 MiB are held to `--tolerance`; exit 1 when one misses it or a static figure differs.

`--report DIR` compares a finished `rlbench run` of the suite instead (`check.compare_ranks`: the
report's steady rise, the largest over the calls after the first, where the report has it, else
the largest over all calls; its peak is above a baseline read before the rank loaded gloo and
FSDP2), against the per-rank estimate on the run's own prompts, or with `--estimate FILE` against
a saved `rlbench estimate SUITE --json` (e.g. the default one, every prompt as long as the longest):

    rlbench run suites/distributed-cpu.yaml --set rollout.ignore_eos=true --set probe_heap=exact
    rlbench estimate suites/distributed-cpu.yaml --json > estimate.json
    python benchmarks/estimate_ranks_vs_run.py --report RUN_DIR --estimate estimate.json

`--qwen2`: on a small Qwen2 shape with the real vocabulary (151,936; hidden 64, 2 layers), shape
models skipping SFT, and a smaller step (16 completions of 16 tokens) so that its vocabulary-wide
logits stay small on this machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LIKE_FOR_LIKE = ["rollout.ignore_eos=true", "probe_heap=exact"]
QWEN2_SMALL = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": 151936,
               "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
               "rope_theta": 1000000.0, "tie_word_embeddings": True, "hidden_act": "silu"}


MIB = 2**20
QWEN2_STEP = ["model.sft.steps=0", "rollout.completions_per_step=16", "rollout.max_new_tokens=16", "budget.steps=3"]


def measure_by_call(suite_path: Path, suite: Any, index: int, stages: dict[str, Any]) -> subprocess.Popen:
    """torchrun of benchmarks/rank_rises.py for `suite.algorithms[index]` (started; read it with `read_ranks`),
    each rank's figures written beside the suite as rank{r}.txt."""
    from rlbench.measure.memory import cpu_worker_env

    out_dir = suite_path.parent / f"ranks{index}"
    out_dir.mkdir(exist_ok=True)
    env = dict(os.environ, **cpu_worker_env(suite.probe_heap), OMP_NUM_THREADS="1", RLBENCH_RANK_RISES_DIR=str(out_dir),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(suite.distributed.nproc_per_node), str(ROOT / "benchmarks" / "rank_rises.py"), str(suite_path),
           stages["policy_dir"], str(index), stages.get("reward_dir") or ""]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)


def read_ranks(proc: subprocess.Popen) -> dict[int, dict[str, Any]]:
    """Every rank's figures ({rank: {rises, static}}) once the ranks of `measure_by_call` have finished."""
    _, err = proc.communicate(timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"the ranks failed:\n{err[-3000:]}")
    out_dir = Path(proc.args[proc.args.index(str(ROOT / "benchmarks" / "rank_rises.py")) + 1]).parent
    lines = [path.read_text().strip() for path in sorted(out_dir.glob("ranks*/rank*.txt"))]
    found = {int(line.split()[1]): json.loads(line.split(maxsplit=2)[2]) for line in lines}
    for path in out_dir.glob("ranks*/rank*.txt"):
        path.unlink()
    if not found:
        raise RuntimeError(f"the ranks wrote no figures:\n{err[-3000:]}")
    return found


def call_rows(label: str, algo: Any, measured: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows in `check.compare`'s shape (`rank`, and the first call's rise as `first_call_bytes`)."""
    from rlbench.estimate.check import RANK_CHECKED_ABOVE, _row

    rows = []
    for rank, figures in sorted(measured.items()):
        for role, total in figures["static"].items():
            rows.append(_row(label, "static", "", role, algo.static[role]["total"], total, rank=rank))
        for phase, calls in figures["rises"].items():
            if phase not in algo.phases or len(calls) < 2:
                continue
            row = _row(label, "rise", phase, algo.phases[phase].role, algo.phases[phase].transient_bytes,
                       max(calls[1:]), RANK_CHECKED_ABOVE, rank)
            rows.append({**row, "first_call_bytes": calls[0], "calls": len(calls)})
    return rows


def compare_by_call(suite_path: str, overrides: list[str], out_dir: Path) -> tuple[list[dict[str, Any]], dict]:
    """Every algorithm of the suite: its ranks measured call by call against the per-rank estimate."""
    import yaml
    from rich.console import Console

    from rlbench.config import load_suite, resolved_dict
    from rlbench.estimate import estimate_suite
    from rlbench.estimate.check import run_prompt_lengths
    from rlbench.estimate.ranks import suite_ranks
    from rlbench.estimate.view import as_json
    from rlbench.stages.prepare import prepare_stages

    suite = load_suite(suite_path, overrides)
    resolved = out_dir / "suite.resolved.yaml"
    resolved.write_text(yaml.safe_dump(resolved_dict(suite), sort_keys=False))
    stages = prepare_stages(suite, Console(stderr=True))
    rows: list[dict[str, Any]] = []
    estimates = []
    for index, algo_cfg in enumerate(suite.algorithms):
        one = load_suite(resolved)
        one = dataclasses.replace(one, algorithms=[one.algorithms[index]])
        proc = measure_by_call(resolved, suite, index, stages)
        estimate = estimate_suite(one, device="cpu", prompt_lengths=run_prompt_lengths(one),
                                  ranks=suite_ranks(one, None))  # while the ranks run
        estimates.append(as_json(estimate, None, None, None))
        rows += call_rows(algo_cfg.label or algo_cfg.name, estimate.algorithms[0], read_ranks(proc))
    return rows, {"estimates": estimates, "settings": estimates[0]["settings"] if estimates else {}}


def compare_report(suite_path: str, overrides: list[str], report_dir: Path,
                   saved: Path | None = None) -> tuple[list[dict[str, Any]], dict]:
    """(rows, estimate JSON) of the per-rank estimate of the suite (or the `saved` one) against the
    run in `report_dir`."""
    from rlbench.estimate.check import compare_ranks

    if saved is not None:
        estimate_json = json.loads(saved.read_text())
    else:
        from rlbench.config import load_suite
        from rlbench.estimate import estimate_suite
        from rlbench.estimate.check import run_prompt_lengths
        from rlbench.estimate.ranks import suite_ranks
        from rlbench.estimate.view import as_json

        suite = load_suite(suite_path, overrides)
        estimate = estimate_suite(suite, device="cpu", prompt_lengths=run_prompt_lengths(suite),
                                  ranks=suite_ranks(suite, None))
        estimate_json = as_json(estimate, None, None, None)
    report = json.loads((report_dir / "report.json").read_text())
    return compare_ranks(estimate_json, report, report_dir, "cpu"), {"estimates": [estimate_json],
                                                                      "settings": estimate_json["settings"]}


def static_agrees(row: dict[str, Any]) -> bool:
    """Rank 0's static bytes are the estimate's exactly; another rank may hold less, where FSDP2's
    padding leaves it a shard with fewer real rows (a scalar head's one output row is rank 0's)."""
    if row.get("rank", 0) == 0:
        return row["predicted_bytes"] == row["measured_bytes"]
    return row["measured_bytes"] <= row["predicted_bytes"]


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    from rlbench.estimate.check import print_rows, worst_error

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", nargs="?", default=str(ROOT / "suites" / "distributed-cpu.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--report", help="an earlier run's folder (holding report.json) instead of running")
    parser.add_argument("--estimate", help="with --report: a saved `rlbench estimate SUITE --json` instead of estimating")
    parser.add_argument("--qwen2", action="store_true", help="on a small Qwen2 shape with the real vocabulary")
    parser.add_argument("--json", help="write rows and the estimate to this file")
    parser.add_argument("--tolerance", type=float, default=0.10)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rlbench-ranks-") as tmp:
        overrides = [*LIKE_FOR_LIKE]
        if args.qwen2:
            config = Path(tmp) / "qwen2-small.json"
            config.write_text(json.dumps(QWEN2_SMALL))
            overrides += [f"model.name=shape:{config}", *QWEN2_STEP]
        overrides += args.overrides
        if args.report:
            rows, estimate = compare_report(args.suite, overrides, Path(args.report),
                                            Path(args.estimate) if args.estimate else None)
        else:
            rows, estimate = compare_by_call(args.suite, overrides, Path(tmp))
    console = Console(width=160)
    print_rows(rows, console, "per rank, predicted vs measured (cpu probe); rises: the calls after the first "
                              "where a phase ran more than once; dim: not held (under 10 MiB, or a peak)")
    for r in rows:
        if "first_call_bytes" in r and r["checked"]:
            console.print(f"  {r['algorithm']} rank {r['rank']} {r['phase']}: first call {r['first_call_bytes'] / MIB:.1f} "
                          f"MiB, later calls up to {r['measured_bytes'] / MIB:.1f} MiB ({r['calls']} calls)",
                          highlight=False)
        elif r.get("rise_of") and r["checked"]:
            console.print(f"  {r['algorithm']} rank {r['rank']} {r['phase']}: rise over {r['rise_of']} "
                          f"{r['measured_bytes'] / MIB:.1f} MiB (all calls: {r['all_calls_bytes'] / MIB:.1f})",
                          highlight=False)
    static_ok = all(static_agrees(r) for r in rows if r["what"] == "static")
    worst = worst_error(rows, "rise")
    seconds = sum(e.get("seconds", 0.0) for e in estimate["estimates"])
    console.print(f"ranks {estimate['settings'].get('ranks')}; static bytes as predicted: {static_ok}; worst rise error above "
                  f"10 MiB: {worst:.1%}; estimates took {seconds:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, **estimate}, indent=2))
    return 0 if static_ok and worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
