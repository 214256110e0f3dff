"""What gloo's reduce-scatter stages on a CPU: FSDP2's gradient reduce-scatter with and without it.

    python benchmarks/gloo_staging.py [--mib 37.1] [--steps 3]        # both parts below

1. One collective, two gloo ranks: the rise of the process's resident high-water mark (the cpu
   probe's figure) over `dist.reduce_scatter_single` of an input of `--mib` MiB (the size of the
   Qwen2 shape's embedding in float32: 151,936 x 64 x 4 bytes = 37.1 MiB) into its half, against
   the same reduction done as an in-place `all_reduce` of the input and a copy of this rank's half.
   Each is repeated; the calls after the first are reported.
2. The PPO run on the small Qwen2 shape with the real vocabulary (benchmarks/estimate_ranks_vs_run.py
   --qwen2: hidden 64, 2 layers, 16 completions of 16 tokens, 3 steps), two gloo ranks, each phase's
   rise call by call (benchmarks/rank_rises.py), run twice: as is, and with FSDP2's reduce-scatter
   (`torch.distributed.reduce_scatter_single`, which its DefaultReduceScatter calls) replaced by the
   in-place all-reduce of part 1, which gives every rank the same shard. The value update's rise
   in the two runs differs by what gloo's reduce-scatter stages beyond FSDP2's own tensors.

Nothing here changes rlbench: the replacement lives in this script's ranks only.
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
sys.path.insert(0, str(ROOT / "benchmarks"))
MIB = 2**20


def in_place_reduce_scatter(output, input, op=None, group=None, async_op=False):  # noqa: A002 - torch's names
    """`reduce_scatter_single` as an in-place all-reduce of `input` (FSDP2's own buffer, dropped after)
    and a copy of this rank's equal part: the same result, with no staging copy of the input."""
    import torch.distributed as dist

    dist.all_reduce(input, op=op if op is not None else dist.ReduceOp.SUM, group=group)
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    output.copy_(input.view(world, -1)[rank].view_as(output))
    if async_op:
        class Done:
            def wait(self) -> bool:
                return True

            def is_completed(self) -> bool:
                return True

        return Done()
    return None


def hwm_rise(fn, tensors: dict[str, Any]) -> int:
    """Rise of VmHWM over `fn(output, input)` above the resident set at its start (HWM reset first)."""
    Path("/proc/self/clear_refs").write_text("5")
    start = _status("VmRSS")
    fn(tensors["output"], tensors["input"])
    return _status("VmHWM") - start


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def collective_rank(mib: float, calls: int) -> None:
    """Part 1 on one rank (under torchrun): prints `RANK r {json}`."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    n = int(mib * MIB / 4) // world * world
    rises: dict[str, list[int]] = {"reduce_scatter_single": [], "in_place_all_reduce": []}
    for _ in range(calls):
        for name, fn in (("reduce_scatter_single", dist.reduce_scatter_single),
                         ("in_place_all_reduce", in_place_reduce_scatter)):
            tensors = {"input": torch.ones(n), "output": torch.empty(n // world)}
            dist.barrier()
            rises[name].append(hwm_rise(fn, tensors))
            assert tensors["output"][0].item() == world
    print(f"RANK {rank} " + json.dumps({"input_bytes": n * 4, "output_bytes": n // world * 4, "rises": rises}),
          flush=True)
    dist.destroy_process_group()


def run_rank(argv: list[str]) -> None:
    """Part 2 on one rank: benchmarks/rank_rises.py, with the in-place reduce-scatter if asked."""
    import torch.distributed as dist

    if os.environ.get("GLOO_STAGING_IN_PLACE") == "1":
        dist.reduce_scatter_single = in_place_reduce_scatter
    import rank_rises

    rank_rises.main(argv)


def torchrun(args: list[str], env: dict[str, str]) -> str:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).resolve()), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return proc.stdout


def ranks_of(stdout: str) -> dict[int, dict[str, Any]]:
    return {int(line.split()[1]): json.loads(line.split(maxsplit=2)[2])
            for line in stdout.splitlines() if line.startswith("RANK ")}


def qwen2_runs(steps: int, out_dir: Path) -> dict[str, dict[int, dict[str, Any]]]:
    import yaml
    from estimate_ranks_vs_run import LIKE_FOR_LIKE, QWEN2_SMALL, QWEN2_STEP
    from rich.console import Console

    from rlbench.config import load_suite, resolved_dict
    from rlbench.measure.memory import cpu_worker_env
    from rlbench.stages.prepare import prepare_stages

    config = out_dir / "qwen2-small.json"
    config.write_text(json.dumps(QWEN2_SMALL))
    overrides = [*LIKE_FOR_LIKE, f"model.name=shape:{config}", *QWEN2_STEP, f"budget.steps={steps}"]
    suite = load_suite(str(ROOT / "suites" / "distributed-cpu.yaml"), overrides)
    [index] = [i for i, a in enumerate(suite.algorithms) if a.name == "ppo"]
    suite = dataclasses.replace(suite, algorithms=[suite.algorithms[index]])
    resolved = out_dir / "suite.resolved.yaml"
    resolved.write_text(yaml.safe_dump(resolved_dict(suite), sort_keys=False))
    stages = prepare_stages(suite, Console(stderr=True))
    out = {}
    for name, in_place in (("gloo reduce_scatter_single", "0"), ("in-place all_reduce", "1")):
        rank_dir = out_dir / name.replace(" ", "_")
        rank_dir.mkdir()
        env = dict(os.environ, **cpu_worker_env(suite.probe_heap), OMP_NUM_THREADS="1", GLOO_STAGING_IN_PLACE=in_place,
                   RLBENCH_RANK_RISES_DIR=str(rank_dir), PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        torchrun(["run", str(resolved), stages["policy_dir"], "0", stages.get("reward_dir") or ""], env)
        out[name] = {int(p.stem.removeprefix("rank")): json.loads(p.read_text().split(maxsplit=2)[2])
                     for p in sorted(rank_dir.glob("rank*.txt"))}
    return out


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] in ("collective", "run"):  # a rank under torchrun
        if sys.argv[1] == "collective":
            collective_rank(float(sys.argv[2]), int(sys.argv[3]))
        else:
            run_rank(sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=float, default=151936 * 64 * 4 / MIB)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--skip-run", action="store_true", help="part 1 only")
    parser.add_argument("--json", help="write both parts' figures here")
    args = parser.parse_args(argv)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    found: dict[str, Any] = {"collective": ranks_of(torchrun(["collective", str(args.mib), str(args.calls)], env))}
    for rank, f in sorted(found["collective"].items()):
        print(f"rank {rank}: input {f['input_bytes'] / MIB:.1f} MiB -> output {f['output_bytes'] / MIB:.1f} MiB; rises "
              "after the first call (MiB): " + "; ".join(
                  f"{name} {', '.join(f'{r / MIB:.1f}' for r in rises[1:])}" for name, rises in f["rises"].items()))
    if not args.skip_run:
        with tempfile.TemporaryDirectory(prefix="rlbench-gloo-") as tmp:
            found["runs"] = qwen2_runs(args.steps, Path(tmp))
        for name, ranks in found["runs"].items():
            for rank, f in sorted(ranks.items()):
                print(f"{name}, rank {rank}: " + "; ".join(
                    f"{phase} {', '.join(f'{r / MIB:.1f}' for r in rises)}" for phase, rises in f["rises"].items())
                    + " (MiB, call by call)")
    if args.json:
        Path(args.json).write_text(json.dumps(found, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
