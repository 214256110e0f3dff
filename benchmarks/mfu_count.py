"""The FLOP count against what runs: one quickstart-shaped GRPO-Zero step (64 completions, G 4, 40
tokens) on a saved embedded-model checkpoint, in a precision: the count (flops.pass_flops), the
earlier per-sequence count, the matmul FLOPs torch's FlopCounterMode sees executed (not the CPU's
fused attention kernel), and MFU of a timed step over the cached peak.

Run:

    nice -n 10 .venv/bin/python benchmarks/mfu_count.py bf16-mixed ~/.cache/rlbench/sft/<the quickstart's SFT key>
"""
import sys
import tempfile
from pathlib import Path

import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from rlbench.cache import cache_root
from rlbench.config import load_suite
from rlbench.measure.flops import cpu_peak_flops, model_flops_per_token
from rlbench.measure.probing import NullProbe
from rlbench.train import Run

precision = sys.argv[1] if len(sys.argv) > 1 else "bf16-mixed"
torch.set_num_threads(1)
tmp = Path(tempfile.mkdtemp(prefix="mfu_count_"))
raw = yaml.safe_load(open("suites/quickstart.yaml"))
raw["model"] = {"name": "embedded", "sft": {"steps": 0}, "dtype": "bfloat16" if precision == "bf16-mixed" else "float32", "precision": precision}
raw["budget"] = {"steps": 3}
raw["eval"] = {"size": 8}
(tmp / "s.yaml").write_text(yaml.safe_dump(raw))
suite = load_suite(tmp / "s.yaml")
pdir = Path(sys.argv[2])  # the SFT'd embedded checkpoint (emits EOS, as the quickstart's does)
run = Run.build(suite, suite.algorithms[0], 0, pdir, None, NullProbe())
run.step()  # warm-up
seen = []
gen = run.engine.generate
run.engine.generate = lambda *a, **k: seen.append(gen(*a, **k)) or seen[-1]
before = run.budget.flops
with FlopCounterMode(display=False) as counter:
    run.step()
counted = run.budget.flops - before
lengths = seen[-1].attention_mask.sum(-1).tolist()
s = run.flop_shapes["policy"]
old = sum(t * model_flops_per_token(s.n_params, s.n_layers, s.hidden, t, False) for t in lengths)
old = old * 2 + 3 * old  # generate + ref forward + one trained pass
run.engine.generate = gen
t0 = run.budget.seconds
f0 = run.budget.flops
run.step()  # timed without the counter
dt = run.budget.seconds - t0
peak = cpu_peak_flops(cache_root(), "bf16" if precision == "bf16-mixed" else "fp32")
print(f"{precision}: counted {counted/1e9:.3f} GFLOP/step (old count {old/1e9:.3f}), FlopCounterMode matmuls executed {counter.get_total_flops()/1e9:.3f}; "
      f"timed step {dt:.2f} s, {(run.budget.flops-f0)/dt/1e9:.2f} GFLOP/s; cached peak {peak/1e9:.2f} GFLOP/s -> MFU {(run.budget.flops-f0)/dt/peak:.3f}; "
      f"old count would give {old/dt/peak:.3f}")
