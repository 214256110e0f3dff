"""Static bytes of a trained and a frozen role in each precision, from the real tensors.

Run:

    flock /tmp/rlbench-big.lock .venv/bin/python benchmarks/static_bytes.py --model shape:qwen2.5-0.5b
    .venv/bin/python benchmarks/static_bytes.py                  # the embedded model

For each precision the model is loaded as `rlbench run` loads a role (`load_causal_lm` with the
suite's dtype and precision), a trained role takes one AdamW step on a 4-token sequence under the
precision's compute context (so gradients and optimizer state exist), and `role_static_bytes`
counts its tensors. The figures are checked against the per-parameter count they should equal:
fp32 16 bytes per trained parameter (4 weights + 4 gradients + 8 moments), bf16-mixed 16 (4 master
+ 4 gradients + 8 moments, no persistent bf16 copy) and bf16-pure 8 (2 + 2 + 4), plus 4 bytes of
AdamW `step` per tensor; frozen roles 4, 2 and 2. One precision at a time: peak memory is one
trained role. Prints a table and writes results/static_bytes.json.
"""

from __future__ import annotations

import argparse
import gc
import json
from pathlib import Path

PRECISIONS = (("float32", "fp32"), ("bfloat16", "bf16-mixed"), ("bfloat16", "bf16-pure"))
# bytes per parameter of (weights, master, gradients, moments) for a trained role; frozen: weights only
PER_PARAMETER = {"fp32": (4, 0, 4, 8), "bf16-mixed": (0, 4, 4, 8), "bf16-pure": (2, 0, 2, 4)}
FROZEN = {"fp32": 4, "bf16-mixed": 2, "bf16-pure": 2}
MIB = 2**20


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--out", type=Path, default=Path("results/static_bytes.json"))
    args = parser.parse_args(argv)
    import torch

    from rlbench.config import ModelConfig
    from rlbench.measure.static import role_static_bytes
    from rlbench.models.loading import load_causal_lm, resolve_base
    from rlbench.models.optim import adamw
    from rlbench.models.precision import resolve_precision

    path = resolve_base(args.model)
    rows = []
    for dtype, precision in PRECISIONS:
        cfg = ModelConfig(name=args.model, dtype=dtype, precision=precision)
        resolved = resolve_precision(cfg)
        for trained in (True, False):
            model = load_causal_lm(path, cfg, resolved, trainable=trained).requires_grad_(trained)
            optimizer = None
            params = [p for p in model.parameters()]
            if trained:
                optimizer = adamw(params, lr=1e-6)
                ids = torch.tensor([[1, 20, 30, 40]])
                with resolved.context("cpu"):
                    loss = model(input_ids=ids, labels=ids).loss
                loss.backward()
                optimizer.step()
            static = role_static_bytes(model, optimizer, resolved.compute_dtype)
            n = sum(p.numel() for p in params)
            tensors = len(params)
            if trained:
                w, m, g, o = PER_PARAMETER[precision]
                expected = {"weights": w * n, "master": m * n, "gradients": g * n, "optimizer": o * n + 4 * tensors}
            else:
                expected = {"weights": FROZEN[precision] * n, "master": 0, "gradients": 0, "optimizer": 0}
            exact = all(static[k] == v for k, v in expected.items())
            rows.append({"precision": precision, "role": "trained" if trained else "frozen", "parameters": n,
                         "tensors": tensors, **{k: static[k] for k in ("weights", "master", "gradients", "optimizer",
                                                                       "buffers", "total")},
                         "bytes_per_parameter": (static["total"] - static["buffers"]) / n, "exact": exact})
            del model, optimizer, params
            gc.collect()
    print(f"static bytes per role: {args.model} ({rows[0]['parameters']:,} parameters, {rows[0]['tensors']} tensors), MiB")
    print(f"  {'precision':<11} {'role':<8} {'weights':>9} {'master':>9} {'grads':>9} {'optimizer':>10} {'total':>10}"
          f" {'B/param':>8}  exact")
    for r in rows:
        print(f"  {r['precision']:<11} {r['role']:<8} {r['weights'] / MIB:9.1f} {r['master'] / MIB:9.1f} "
              f"{r['gradients'] / MIB:9.1f} {r['optimizer'] / MIB:10.1f} {r['total'] / MIB:10.1f} "
              f"{r['bytes_per_parameter']:8.2f}  {r['exact']}")
    result = {"model": args.model, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
