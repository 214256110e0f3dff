"""fp32 against bf16 on this CPU, side by side in one process: the matmul peaks MFU divides by, the
read bandwidth decode's floor divides by, and two Qwen2.5-0.5B projections (decode: 8 rows, prefill:
400 rows, 896 -> 4864) in fp32, bf16 and fp32 under bf16 autocast (what bf16-mixed computes).

Run (about a minute; on a shared machine under `nice`):

    nice -n 10 .venv/bin/python benchmarks/cpu_precision.py --threads 1 --rounds 5

Each round measures every variant once, alternating, so load that comes and goes hits them alike;
the table gives the median over rounds of each figure and of each bf16/fp32 ratio taken within a
round. Peaks: `rlbench.measure.flops.measure_matmul_flops` (best of mm and linear, n up to
--max-n). Writes one JSON document (default results/cpu_precision.json).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def projection_seconds(rows: int, dtype: str, repeats: int) -> float:
    """Fastest of `repeats` F.linear calls of [rows, 896] x [4864, 896]^T in `dtype` (fp32, bf16, or
    autocast: fp32 tensors under bf16 autocast)."""
    import torch
    import torch.nn.functional as F

    x, w = torch.randn(rows, 896), torch.randn(4864, 896)
    if dtype == "bf16":
        x, w = x.bfloat16(), w.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "autocast"):
        F.linear(x, w)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            F.linear(x, w)
            best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5, help="calls per projection per round (the fastest counts)")
    parser.add_argument("--max-n", type=int, default=1024, help="largest n of the peak's n x n matmuls")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "cpu_precision.json")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from rlbench.environment import environment
    from rlbench.measure.flops import measure_matmul_flops, measure_read_bandwidth
    from rlbench.report.io import write_json_atomic

    load_before = os.getloadavg()
    rounds: list[dict[str, float]] = []
    for i in range(args.rounds):
        r = {f"peak_{d}_flops_per_s": measure_matmul_flops(d, args.max_n, reps=3, min_total_seconds=0.5)
             for d in (("fp32", "bf16") if i % 2 == 0 else ("bf16", "fp32"))}
        r["read_bytes_per_s"] = measure_read_bandwidth(2**28, reps=3)
        for rows, name in ((8, "decode"), (400, "prefill")):
            for dtype in ("fp32", "bf16", "autocast"):
                r[f"{name}_{dtype}_s"] = projection_seconds(rows, dtype, args.repeats)
        r["peak_bf16_over_fp32"] = r["peak_bf16_flops_per_s"] / r["peak_fp32_flops_per_s"]
        for name in ("decode", "prefill"):
            r[f"{name}_bf16_over_fp32_time"] = r[f"{name}_bf16_s"] / r[f"{name}_fp32_s"]
            r[f"{name}_autocast_over_fp32_time"] = r[f"{name}_autocast_s"] / r[f"{name}_fp32_s"]
        rounds.append(r)
        print(f"round {i}: " + ", ".join(f"{k} {v:.4g}" for k, v in r.items()), flush=True)
    median = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    weights = 896 * 4864
    print(f"\nthreads {args.threads}, {args.rounds} rounds, load average {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"peak fp32 {median['peak_fp32_flops_per_s'] / 1e9:.1f} GFLOP/s, bf16 {median['peak_bf16_flops_per_s'] / 1e9:.1f} "
          f"GFLOP/s: bf16/fp32 {median['peak_bf16_over_fp32']:.3f}; read bandwidth {median['read_bytes_per_s'] / 1e9:.2f} GB/s")
    for name, rows in (("decode", 8), ("prefill", 400)):
        cells = []
        for dtype, size in (("fp32", 4), ("bf16", 2), ("autocast", 4)):
            seconds = median[f"{name}_{dtype}_s"]
            cells.append(f"{dtype} {seconds * 1e3:.2f} ms ({weights * size / seconds / 1e9:.1f} GB/s of weights, "
                         f"{2 * rows * weights / seconds / 1e9:.1f} GFLOP/s)")
        print(f"{name} [{rows} x 896] x [896 x 4864]: " + "; ".join(cells)
              + f"; bf16/fp32 time {median[f'{name}_bf16_over_fp32_time']:.2f}, "
              f"autocast/fp32 {median[f'{name}_autocast_over_fp32_time']:.2f}")
    write_json_atomic(args.out, {"benchmark": "cpu_precision", "settings": vars(args) | {"out": str(args.out)},
                                 "environment": environment(ROOT), "median": median, "rounds": rounds,
                                 "load_average": {"before": load_before, "after": os.getloadavg()}})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
