"""`rlbench estimate`: static memory per role before running anything.

Counts parameters from the model's config (instantiated on the meta device: no weights are
loaded or downloaded when the config is local or cached) and applies the roles each algorithm
holds, as `rlbench run` would report them under `static`:

    policy, value   weights + gradients + AdamW's two moments (the parameter dtype) + 4-byte steps
    reference       weights (0 with LoRA: the policy with adapters disabled)
    reward          weights

Activations, logits, the rollout engine's KV cache and the allocator's slack come on top; `rlbench
run` measures them. This is the floor, not the peak.
"""

from __future__ import annotations

from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from rlbench.config import AlgorithmConfig
from rlbench.errors import UserError
from rlbench.models.loading import DTYPES

GIB = 2**30


def count_parameters(model: str) -> tuple[int, int, str]:
    """(parameters, parameter tensors, architecture) of `model` without loading its weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if model == "embedded":
        from rlbench.models.embedded import build_embedded

        net, _ = build_embedded(0)
    else:
        source = Path(model).expanduser()
        try:
            config = AutoConfig.from_pretrained(str(source) if source.is_dir() else model, trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise UserError(f"--model: cannot read the config of '{model}' ({str(exc).splitlines()[0]}); "
                            "give a local directory or a model in the Hugging Face cache") from None
        with torch.device("meta"):
            net = AutoModelForCausalLM.from_config(config)
    params = list(net.parameters())
    return sum(p.numel() for p in params), len(params), type(net).__name__


def role_bytes(n_params: int, n_tensors: int, dtype: str, trained: bool) -> dict[str, int]:
    size = torch.empty(0, dtype=DTYPES[dtype]).element_size()
    weights = n_params * size
    if not trained:
        return {"weights": weights, "gradients": 0, "optimizer": 0, "total": weights}
    optimizer = 2 * weights + 4 * n_tensors
    return {"weights": weights, "gradients": weights, "optimizer": optimizer, "total": 2 * weights + optimizer}


def estimate(model: str, algos: list[str], dtype: str) -> dict[str, dict[str, dict[str, int]]]:
    from rlbench.train import make_algorithm

    n_params, n_tensors, _ = count_parameters(model)
    out: dict[str, dict[str, dict[str, int]]] = {}
    for name in algos:
        algorithm = make_algorithm(AlgorithmConfig(name=name))
        out[name] = {role: role_bytes(n_params, n_tensors, dtype, trained=role in ("policy", "value"))
                     for role in algorithm.roles()}
    return out


def estimate_command(model: str, algos: list[str], dtype: str, gpu_gib: float | None, console: Console) -> int:
    from rlbench.catalog import ALGORITHMS

    algos = [a.strip() for a in algos if a.strip()]
    unknown = [a for a in algos if a not in ALGORITHMS]
    if unknown:
        raise UserError(*[f"--algos: {ALGORITHMS.unknown_message(a)}" for a in unknown])
    n_params, _, arch = count_parameters(model)
    estimates = estimate(model, algos, dtype)
    largest = max(sum(r["total"] for r in roles.values()) for roles in estimates.values())
    unit, scale = ("GiB", GIB) if largest >= GIB else ("MiB", 2**20)
    table = Table(title=f"static memory per role: {model} ({arch}, {n_params / 1e6:,.1f}M parameters, {dtype})",
                  title_justify="left")
    for col in ("algorithm", "role", f"weights {unit}", f"grads {unit}", f"optimizer {unit}", f"total {unit}"):
        table.add_column(col, justify="left" if col in ("algorithm", "role") else "right")
    for name, roles in estimates.items():
        total = sum(r["total"] for r in roles.values())
        for i, (role, b) in enumerate(roles.items()):
            table.add_row(name if i == 0 else "", role, *(f"{b[k] / scale:,.2f}" for k in
                                                          ("weights", "gradients", "optimizer", "total")))
        fits = "" if gpu_gib is None else (" [green]fits[/]" if total / GIB < gpu_gib else " [red]does not fit[/]")
        table.add_row("", "[bold]all roles[/]", "", "", "", f"[bold]{total / scale:,.2f}[/]{fits}")
        table.add_section()
    console.print(table)
    console.print("Static bytes only: activations, logits, the KV cache and allocator slack come on top "
                  "(`rlbench run` measures them).")
    return 0
