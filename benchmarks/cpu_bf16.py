"""Is bf16 worth it on this CPU? One decoder MLP projection of Qwen2.5-0.5B (400 tokens x 896 -> 4864)
in fp32, in bf16, and in fp32 under bf16 autocast (what `model.precision: bf16-mixed` computes).

Run:

    .venv/bin/python benchmarks/cpu_bf16.py [--threads 2] [--repeats 20]

Without AVX512-BF16 or AMX a CPU has no bf16 matrix units and the bf16 kernels convert as they go;
prints the median milliseconds of each.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    x, w = torch.randn(400, 896), torch.randn(4864, 896)
    variants = {"fp32": (x, w, None), "bf16": (x.bfloat16(), w.bfloat16(), None),
                "fp32 under bf16 autocast": (x, w, torch.bfloat16)}
    out = {}
    for name, (a, b, autocast) in variants.items():
        with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
            F.linear(a, b)
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                F.linear(a, b)
                times.append(time.perf_counter() - start)
        out[name] = statistics.median(times) * 1e3
        print(f"{name:<26}{out[name]:8.1f} ms")
    return out


if __name__ == "__main__":
    main()
