"""Each phase call's rise as the cpu probe reads it, next to the rise of the live tensors.

    MALLOC_MMAP_THRESHOLD_=1048576 python benchmarks/tensors_vs_rss.py [SUITE] [--set KEY=VALUE ...]
    MALLOC_MMAP_THRESHOLD_=65536 python benchmarks/tensors_vs_rss.py [SUITE] [--set ...]

Runs every algorithm of SUITE (default: `test_estimate_vs_run.REALSHAPE`, the embedded model) for its `budget.steps` in this process (not in a worker), on the
suite's model, with the cpu probe and, around everything, PyTorch's `MemTracker` on real tensors
(what `rlbench estimate` counts on fake ones). Per phase call it prints the probe's rise, the live
tensors' rise (peak above the call's start) and what the call left (gradients and AdamW state),
then the tokens each step held. Set MALLOC_MMAP_THRESHOLD_ as a run's worker has it (1048576) or
lower, to see how much of a rise glibc's heap keeps resident after tensors are freed.

Under MemTracker autograd does not sum a tensor's several gradients in place (a tied embedding's,
an LM head applied a chunk at a time), as it does in a run: where that happens, the live tensors
and the probe read one such gradient more than a run would (see rlbench/estimate/trace.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

MIB = 2**20


def main(argv: list[str] | None = None) -> None:
    import torch
    from torch.distributed._tools.mem_tracker import _MemRefType

    from rlbench.config import load_suite
    from rlbench.estimate.trace import HooklessMemTracker
    from rlbench.measure.cpu_probe import CpuProbe
    from rlbench.models.loading import resolve_base
    from rlbench.train import Run

    class LiveTensors(HooklessMemTracker):
        """The estimator's hookless MemTracker (a decode loop calls the root module many times),
        keeping the highest live total since `peak` was last reset."""

        peak = 0

        def total(self) -> int:
            return sum(snap["Total"] for snap in self._curr_mem_snap.values())

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            result = func(*args, **(kwargs or {}))
            reftype = _MemRefType.OPT if self._in_opt else _MemRefType.ACT
            for t in result if isinstance(result, (list, tuple)) else (result,):
                if isinstance(t, torch.Tensor):
                    self._track(reftype, t)
            self.peak = max(self.peak, self.total())
            return result

    class Probe:
        name = primary = "cpu"
        measures_advantages = False

        def __init__(self, tensors: LiveTensors) -> None:
            self.cpu, self.tensors, self.calls = CpuProbe(), tensors, []

        def snapshot(self) -> dict[str, int]:
            return {"cpu": self.cpu.snapshot()}

        @contextmanager
        def phase(self, name: str) -> Iterator[dict]:
            with self.cpu.phase(name) as mem:
                start = self.tensors.peak = self.tensors.total()
                yield {"cpu": mem}
            self.calls.append((name, mem.peak_bytes - mem.start_bytes, self.tensors.peak - start,
                               self.tensors.total() - start))

        def loading(self, role: str) -> nullcontext:
            return nullcontext()

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", nargs="?", help="suite YAML (default: the estimate comparison's suite)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.suite
        if path is None:
            from test_estimate_vs_run import REALSHAPE

            path = str(Path(tmp) / "suite.yaml")
            Path(path).write_text(REALSHAPE)
        suite = load_suite(path, args.overrides)
    torch.set_num_threads(suite.threads or os.cpu_count() or 1)
    print(f"MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', 'unset')}")
    base = resolve_base(suite.model.name, suite.model.trust_remote_code)
    with LiveTensors() as tensors:
        probe = Probe(tensors)
        for algo in suite.algorithms:
            run = Run.build(suite, algo, suite.seeds[0], base, base, probe)
            for model, optimizer in run.role_models().values():
                tensors.track_external(model, *([optimizer] if optimizer is not None else []))
            tokens = []
            for _ in range(suite.budget.steps or 1):
                before = (run.budget.tokens, run.budget.sequence_tokens)
                run.step()
                tokens.append((run.budget.tokens - before[0], run.budget.sequence_tokens - before[1]))
            for name, rss, live, left in probe.calls:
                print(f"{algo.label or algo.name:12s} {name:14s} probe rise {rss / MIB:7.1f} MiB   live tensors "
                      f"rise {live / MIB:7.1f} MiB   left {left / MIB:6.1f} MiB")
            for step, (completion, sequence) in enumerate(tokens, 1):
                print(f"{algo.label or algo.name:12s} step {step}: {sequence} real tokens, {completion} of them "
                      f"completion tokens")
            probe.calls.clear()


if __name__ == "__main__":
    main()
