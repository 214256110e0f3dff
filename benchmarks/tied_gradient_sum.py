"""How autograd sums the gradients of a weight used twice: in place, or out of place (one gradient more).

    MALLOC_MMAP_THRESHOLD_=65536 python benchmarks/tied_gradient_sum.py           # all three layouts
    python benchmarks/tied_gradient_sum.py --profile                               # the summing operator

A weight W (200,000 x 256, float32: 195 MiB) receives several gradients in one backward pass, laid
out three ways:

- `chunks+embedding`: an LM head applied to three checkpointed chunks of tokens, and an embedding
  beside them (the layout `tests/test_estimate_trace.py` holds the tracer to);
- `head+embedding`: the head and the embedding as two separate branches of the loss, the
  embedding made last (its gradient arrives first);
- `embedding->head`: the embedding's output feeds the head, as a tied-embedding language model's
  stack does (Qwen2.5-0.5B ties them).

Per layout, in a fresh process: the resident high-water mark of the backward pass above its start,
in units of W (2 W: the sum so far and the newest gradient, summed in place; 3 W: a new tensor for
the sum), or with `--profile` the summing operators the profiler saw (aten::add_ in place,
aten::add not). Autograd sums in place where the sum so far is no view; the head's gradient, a
transposed product, reaches the buffer first where the embedding feeds the head. `rlbench estimate`
counts the sums the same way (`rlbench/estimate/trace.py`, `_may_sum_in_place`; docs/results/estimate.md,
"Gradient checkpointing at 0.5B, and a tied gradient's sum").
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys

LAYOUTS = ("chunks+embedding", "head+embedding", "embedding->head")
VOCAB, HIDDEN, TOKENS = 200_000, 256, 30


def backward(layout: str, profile: bool) -> str:
    import torch
    from torch.utils.checkpoint import checkpoint

    weight = torch.nn.Parameter(torch.randn(VOCAB, HIDDEN))
    x, tokens = torch.randn(TOKENS, HIDDEN), torch.randint(0, VOCAB, (TOKENS,))

    def head(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(h, weight).log_softmax(-1).gather(-1, t[:, None]).sum()

    if layout == "chunks+embedding":
        loss = sum(checkpoint(head, x[i:i + 10], tokens[i:i + 10], use_reentrant=False) for i in (0, 10, 20))
        loss = loss + torch.nn.functional.embedding(tokens, weight).sum()
    elif layout == "head+embedding":
        loss = head(x, tokens) + torch.nn.functional.embedding(tokens, weight).sum()
    else:
        loss = head(torch.nn.functional.embedding(tokens, weight) * 1.0, tokens)
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as profiler

        with profiler(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            loss.backward()
        sums = [e.name for e in prof.events()
                if e.name in ("aten::add", "aten::add_") and e.input_shapes and e.input_shapes[0] == [VOCAB, HIDDEN]]
        return f"{layout:18s} {', '.join(sums)}"
    start = int(open("/proc/self/statm").read().split()[1]) * 4096
    loss.backward()
    high = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return f"{layout:18s} high-water {(high - start) / (VOCAB * HIDDEN * 4):.2f} W above the backward's start"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", action="store_true", help="name the summing operators instead of measuring")
    parser.add_argument("--layout", choices=LAYOUTS, help=argparse.SUPPRESS)  # one layout, in this process
    args = parser.parse_args(argv)
    if args.layout:
        print(backward(args.layout, args.profile))
        return 0
    for layout in LAYOUTS:  # each in a fresh process: the high-water mark is the process's
        cmd = [sys.executable, __file__, "--layout", layout] + (["--profile"] if args.profile else [])
        print(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
