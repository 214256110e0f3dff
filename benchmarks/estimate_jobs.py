"""`rlbench estimate --jobs`: traces side by side against one after another, the same command.

    python benchmarks/estimate_jobs.py --jobs 2 -- --model shape:qwen2.5-0.5b --gpu H100-80GB

Runs `rlbench estimate ARGS --json --jobs 1`, then with `--jobs N` (each in its own process, in
that order, `--repeats` times alternating), and compares: every figure of the two JSON documents
must be identical but `seconds` (exit 1 otherwise). Printed: wall and CPU seconds of each run (CPU
of the process and its workers: `resource.RUSAGE_CHILDREN` around each) and the wall ratio. The
machine may be loaded: the ratio within one repeat is the figure to read.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any


def _run(args: list[str], jobs: int) -> tuple[dict[str, Any], float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rlbench", "estimate", *args, "--json", "--jobs", str(jobs)],
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in (0, 1):
        sys.exit(f"rlbench estimate --jobs {jobs} exited {proc.returncode}: {proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return json.loads(proc.stdout), wall, cpu


def _without_seconds(document: Any) -> Any:
    if isinstance(document, dict):
        return {k: _without_seconds(v) for k, v in document.items() if k != "seconds"}
    if isinstance(document, list):
        return [_without_seconds(v) for v in document]
    return document


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="worker processes of the side-by-side run (default 2)")
    parser.add_argument("--repeats", type=int, default=1, help="pairs of runs (default 1)")
    parser.add_argument("estimate_args", nargs=argparse.REMAINDER, help="after --: rlbench estimate's arguments")
    args = parser.parse_args(argv)
    estimate_args = [a for a in args.estimate_args if a != "--"]
    rows, same = [], True
    for repeat in range(args.repeats):
        serial, serial_wall, serial_cpu = _run(estimate_args, 1)
        side, side_wall, side_cpu = _run(estimate_args, args.jobs)
        same = same and _without_seconds(serial) == _without_seconds(side)
        rows.append({"repeat": repeat, "serial_wall_s": round(serial_wall, 1), "serial_cpu_s": round(serial_cpu, 1),
                     "jobs": args.jobs, "jobs_wall_s": round(side_wall, 1), "jobs_cpu_s": round(side_cpu, 1),
                     "wall_ratio": round(side_wall / serial_wall, 3)})
        print(f"repeat {repeat}: --jobs 1 {serial_wall:.1f} s wall ({serial_cpu:.1f} s CPU); --jobs {args.jobs} "
              f"{side_wall:.1f} s wall ({side_cpu:.1f} s CPU): {side_wall / serial_wall:.3f}", file=sys.stderr)
    print(json.dumps({"command": ["rlbench", "estimate", *estimate_args], "identical": same, "runs": rows}, indent=2))
    if not same:
        print("the two estimates differ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
