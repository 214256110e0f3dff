"""Predicted against measured: an estimate's figures next to what `rlbench run` reported.

For each run of a report and the estimate of the same algorithm (matched by label), one row per
role for its static bytes (weights, gradients, optimizer state and buffers, which must agree
exactly) and, for every phase the report attributes to a role, two rows:

- `rise`: the phase's peak above its own start, the transient every probe reports, net of the
  gradients and optimizer state the call created (`PhaseStats.add`'s `static_created`), against
  the estimate's `transient_bytes`. The largest over the calls after the phase's first
  (`steady_rise_bytes`) where the report has it: a first call also pages in library code and makes
  one-time heap (RSS on a CPU, not tensors), which a tensor estimate does not model. Otherwise (a
  phase called once, or a report written before that figure existed) the largest over all calls
  (`rise_bytes`). Each row says which in `rise_of` (`STEADY` or `ALL_CALLS`) and keeps the
  all-calls figure as `all_calls_bytes`;
- `peak`: the phase's peak above the worker's baseline (the probe's reading before any model was
  loaded); for torch_cuda the allocator's absolute figure, which counts tensors only, as the
  estimate does.

    rows = compare(estimate_json, report_json, probe="cpu")
    print_rows(rows, console)

`run_prompt_lengths(suite)` gives the prompts the run really drew, to estimate on the same shapes
(the estimate's default is every prompt as long as the task's longest).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

MIB = 2**20
CHECKED_ABOVE = 100 * MIB  # phases holding less are reported, not held to the tolerance


RISE = "transient_bytes"  # a run records a phase's rise net of the static state it created, as this figure is
STEADY, ALL_CALLS = "calls after the first", "all calls"


def measured_rise(figures: dict[str, Any], probe: str) -> tuple[int, str]:
    """(bytes, which) of a phase's measured rise by `probe`: the steady rise (the calls after the
    first) where recorded, else the largest over all calls."""
    steady = (figures.get("steady_rise_bytes") or {}).get(probe)
    return (steady, STEADY) if steady is not None else (figures["rise_bytes"][probe], ALL_CALLS)


def _rise_row(label: str, phase: str, role: str, predicted: int, figures: dict[str, Any], probe: str,
              above: int | None = None, rank: int | None = None) -> dict[str, Any]:
    measured, which = measured_rise(figures, probe)
    row = _row(label, "rise", phase, role, predicted, measured, CHECKED_ABOVE if above is None else above, rank)
    return {**row, "rise_of": which, "all_calls_bytes": figures["rise_bytes"][probe]}


def run_prompt_lengths(suite: Any) -> dict[str, int]:
    """The prompts a run of `suite` draws (problems, order and steps as `rlbench.train.Run` draws
    them, for every algorithm; then the first evaluation batch), each prompt's text mapped to its
    length in tokens: `estimate_suite(..., prompt_lengths=...)` then traces the run's own prompts."""
    import torch

    from rlbench.catalog import load_problems
    from rlbench.config import algorithm_params, step_shape
    from rlbench.estimate.source import resolve_model
    from rlbench.tasks import encode_prompts, prompt_text, truncate_prompts

    tokenizer = resolve_model(suite.model.name).tokenizer
    seed = suite.seeds[0]
    problems = load_problems(suite.task, "train", suite.task.train_size, seed)
    order = torch.randperm(len(problems), generator=torch.Generator().manual_seed(seed)).tolist()
    drawn: dict[str, Any] = {}
    for algo in suite.algorithms:
        per_step = step_shape(algorithm_params(algo), suite.rollout).prompts_per_step
        for i in range(per_step * (suite.budget.steps or 1)):
            problem = problems[order[i % len(order)]]
            drawn[prompt_text(problem)] = problem
    for problem in load_problems(suite.task, "eval", min(suite.eval.size, suite.eval.batch_size), 0):
        drawn[prompt_text(problem)] = problem
    ids, _ = truncate_prompts(encode_prompts(tokenizer, list(drawn.values())), suite.model.max_prompt_tokens)
    return {text: len(prompt) for text, prompt in zip(drawn, ids)}


def _error(predicted: int, measured: int) -> float | None:
    return None if not measured else (predicted - measured) / measured


def compare(estimate: dict[str, Any], report: dict[str, Any], probe: str) -> list[dict[str, Any]]:
    """Rows of predicted vs measured for every run of `report` whose label the estimate has."""
    algorithms = {a["label"]: a for a in estimate["algorithms"]}
    rows: list[dict[str, Any]] = []
    for run in report["runs"]:
        algo = algorithms.get(run.get("label") or run.get("algorithm"))
        if algo is None or run.get("status") != "ok":
            continue
        base = 0 if probe == "torch_cuda" else (run.get("baseline_bytes") or {}).get(probe, 0)
        for role, entry in run["roles"].items():
            if role not in algo["static"]:
                continue
            rows.append(_row(algo["label"], "static", "", role, algo["static"][role]["total"],
                             entry["static"]["total"]))
            for phase, measured in entry["phases"].items():
                predicted = algo["phases"].get(phase)
                if predicted is None or probe not in measured["rise_bytes"]:
                    continue
                rows.append(_rise_row(algo["label"], phase, role, predicted[RISE], measured, probe))
                rows.append(_row(algo["label"], "peak", phase, role, predicted["peak_bytes"],
                                 measured["peak_bytes"][probe] - base))
    return rows


RANK_CHECKED_ABOVE = 10 * MIB  # a rank of the distributed CPU suite holds tens of MiB


def compare_ranks(estimate: dict[str, Any], report: dict[str, Any], report_dir: Path, probe: str) -> list[dict[str, Any]]:
    """`compare` for a distributed run, rank by rank: each rank's own result (`rank{r}/result.json`
    under the run's folder) against the per-rank estimate, rows carrying `rank`. Rises are held to
    the tolerance above `RANK_CHECKED_ABOVE`; peaks above the baseline are shown, not held: a rank's
    process loads the distributed libraries (gloo, FSDP2) after its baseline reading."""
    algorithms = {a["label"]: a for a in estimate["algorithms"]}
    rows: list[dict[str, Any]] = []
    for run in report["runs"]:
        algo = algorithms.get(run.get("label") or run.get("algorithm"))
        world = (run.get("distributed") or {}).get("world_size", 1)
        if algo is None or run.get("status") != "ok" or world < 2:
            continue
        for rank in range(world):
            result = json.loads((report_dir / run["run_dir"] / f"rank{rank}" / "result.json").read_text())
            base = (result.get("baseline_bytes") or {}).get(probe, 0)
            for role, entry in result["roles"].items():
                if role not in algo["static"]:
                    continue
                rows.append(_row(algo["label"], "static", "", role, algo["static"][role]["total"],
                                 entry["static"]["total"], rank=rank))
                for phase, measured in entry["phases"].items():
                    predicted = algo["phases"].get(phase)
                    if predicted is None or probe not in measured["rise_bytes"]:
                        continue
                    rows.append(_rise_row(algo["label"], phase, role, predicted[RISE], measured, probe,
                                          RANK_CHECKED_ABOVE, rank))
                    rows.append(_row(algo["label"], "peak", phase, role, predicted["peak_bytes"],
                                     measured["peak_bytes"][probe] - base, None, rank))
    return rows


def _row(label: str, what: str, phase: str, role: str, predicted: int, measured: int,
         above: int | None = CHECKED_ABOVE, rank: int | None = None) -> dict[str, Any]:
    """One comparison; `checked` (held to the tolerance): static always, others above `above` (never when None)."""
    row = {"algorithm": label, "what": what, "phase": phase, "role": role, "predicted_bytes": int(predicted),
           "measured_bytes": int(measured), "error": _error(predicted, measured),
           "checked": what == "static" or (above is not None and max(predicted, measured) > above)}
    return row if rank is None else {**row, "rank": rank}


def worst_error(rows: list[dict[str, Any]], what: str = "rise") -> float:
    """The largest |error| among checked rows of one kind (0 when there are none)."""
    errors = [abs(r["error"]) for r in rows if r["what"] == what and r["checked"] and r["error"] is not None]
    return max(errors, default=0.0)


def print_rows(rows: list[dict[str, Any]], console: Console, title: str) -> None:
    ranked = any("rank" in r for r in rows)
    table = Table(title=title, title_justify="left")
    for col in ("algorithm", *(("rank",) if ranked else ()), "phase", "role", "figure", "predicted MiB",
                "measured MiB", "error"):
        table.add_column(col, justify="left" if col in ("algorithm", "phase", "role", "figure") else "right")
    for r in rows:
        error = "" if r["error"] is None else f"{r['error']:+.1%}"
        if not r["checked"]:
            error = f"[dim]{error}[/]"
        what = r["what"] + (" (1st call excluded)" if r.get("rise_of") == STEADY else "")
        table.add_row(r["algorithm"], *((str(r.get("rank", "")),) if ranked else ()), r["phase"], r["role"], what,
                      f"{r['predicted_bytes'] / MIB:,.1f}", f"{r['measured_bytes'] / MIB:,.1f}", error)
    console.print(table)
