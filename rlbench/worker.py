"""One run in its own process: `python -m rlbench.worker SPEC.json`.

The runner starts one worker per algorithm x seed, so each run's memory is measured in a clean
process and a crash, an out-of-memory error or a kill in one run cannot take the others down.
The worker builds the run (`Run.build`, with the suite's probe), lets it train (`Run.train`: the
step loop and the evaluation cadence) and evaluates it once more at the end; it prints progress
events (`@rlbench {json}` lines) on stdout, appends per-step metrics to `steps.jsonl`, and always
writes `result.json` (atomically), whatever happened.

A distributed run (`distributed:` in the suite) is N such processes started by torchrun, which
sets RANK and WORLD_SIZE: rank r writes its figures to `rank{r}/result.json` (and its pid to
`rank{r}/pid`, for the runner to end it if torchrun cannot); only rank 0 prints events and
writes `steps.jsonl` (every rank sees the same gathered metrics). The runner merges the ranks.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from rlbench.process import STOP_SIGNALS, emit, quiet_libraries, raise_interrupt


def main(argv: list[str]) -> int:
    from rlbench.report.io import read_json, write_json_atomic

    spec = read_json(argv[0])
    run_dir = Path(spec["run_dir"])
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun
    out_dir = run_dir / f"rank{rank}" if world > 1 else run_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    if world > 1:
        (out_dir / "pid").write_text(str(os.getpid()))
    say = emit if rank == 0 else (lambda event: None)

    signal.signal(signal.SIGTERM, raise_interrupt)
    signal.signal(signal.SIGHUP, raise_interrupt)
    if world > 1:  # torchrun forwards the signal the runner also sends: unwind once, then finish writing
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _interrupt_once)
    result: dict[str, Any] = {"status": "failed", "error": None, "started": time.time()}
    run = None
    probe = None
    dist = None
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked while it started: one that came is raised here
        import torch

        from rlbench.catalog import load_problems, problem_clusters, resolve_probe
        from rlbench.config import load_suite
        from rlbench.distributed import Dist
        from rlbench.measure.evaluation import OUTCOMES, chain_split, paired_accuracy, scoring_outcomes
        from rlbench.models.shape import is_shape
        from rlbench.train import Run

        quiet_libraries()
        suite = load_suite(spec["suite_path"])
        local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # ranks on this machine share its cores
        torch.set_num_threads(max(1, (suite.threads or os.cpu_count() or 1) // local_ranks))
        dist = Dist.from_env(suite.distributed)
        probe = resolve_probe(suite.probe, suite.probe_period_ms, suite.probe_heap)
        result["baseline_bytes"] = probe.snapshot()
        algo_cfg = suite.algorithms[spec["algorithm_index"]]
        reward_dir = Path(spec["reward_dir"]) if spec.get("reward_dir") else None
        run = Run.build(suite, algo_cfg, spec["seed"], Path(spec["policy_dir"]), reward_dir, probe, dist=dist)
        if run.reward_model is not None and spec.get("reward_model_warning"):  # this run optimises its reward
            result["reward_model_warning"] = spec["reward_model_warning"]
        say({"event": "loaded", "roles": list(run.roles)})
        eval_problems = load_problems(suite.task, "eval", suite.eval.size, 0)  # once, for every evaluation
        evals = [dict(spec["eval_before"], step=0, completions=0)] if spec.get("eval_before") else []
        evaluate = not is_shape(suite.model.name)  # random weights: accuracy is meaningless
        with open(run_dir / "steps.jsonl" if rank == 0 else os.devnull, "w") as steps_file:
            def on_step(metrics: dict[str, Any]) -> None:
                steps_file.write(json.dumps(metrics) + "\n")
                steps_file.flush()
                say({"event": "step", "step": metrics["step"], "fraction": run.budget.fraction(),
                     "completions": run.budget.completions, "reward": metrics["reward/mean"],
                     "gold": metrics["gold/accuracy"]})

            stopped_by, during = run.train(on_step, eval_problems if evaluate else None)
        evals += during
        result["stopped_by"] = stopped_by
        if evaluate:
            say({"event": "eval"})
            final = run.evaluate(eval_problems)
            evals.append(final | {"step": run.budget.steps, "completions": run.budget.completions})
        outcomes = [e.pop(OUTCOMES, None) for e in evals]  # kept once per run, not in every evaluation
        by_scoring = {name: [e.pop(scoring_outcomes(name), None) for e in evals] for name in suite.eval.scoring}
        if len(evals) > 1 and outcomes[0] and outcomes[-1]:
            clusters, cluster_by = problem_clusters(suite.task, eval_problems)
            result["paired_accuracy"] = paired_accuracy(outcomes[0], outcomes[-1], clusters, cluster_by)
            result["paired_accuracy"]["scorings"] = {
                name: paired_accuracy(o[0], o[-1], clusters, cluster_by)["paired"]
                for name, o in by_scoring.items() if o[0] and o[-1]}
            result["paired_accuracy"]["chains"] = chain_split(seen_by_problem(suite, eval_problems), outcomes[0],
                                                              outcomes[-1], clusters, cluster_by)
        result["evals"] = evals
        result["status"] = "ok"
    except KeyboardInterrupt:
        result.update(status="interrupted", error="interrupted by the user")
    except BaseException as exc:  # noqa: BLE001 - every failure must still produce a result
        result.update(status=_status_of(exc), error=_last_line(exc))
        (out_dir / "error.log").write_text(traceback.format_exc())
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a second Ctrl-C or kill must not lose the result
            signal.signal(sig, signal.SIG_IGN)
        result["finished"] = time.time()
        if run is not None:
            try:
                from rlbench.measure.summary import summarize_run

                result.update(summarize_run(run, probe, result))
            except Exception as exc:  # noqa: BLE001
                result.setdefault("summary_error", _last_line(exc))
                (out_dir / "summary_error.log").write_text(traceback.format_exc())
        if dist is not None and dist.active:
            result["distributed"] = dist.describe()
        write_json_atomic(out_dir / "result.json", result)
        if dist is not None:
            dist.close()
    return 0 if result["status"] == "ok" else 1


def seen_by_problem(suite, problems: list) -> list[bool] | None:
    """Per held-out problem: whether its chain is among the SFT demonstrations' (None without a fixed set)."""
    from rlbench.stages.demonstrations import demonstration_problems, seen_chains

    demonstrations = demonstration_problems(suite.task, suite.model.sft)
    return None if demonstrations is None else seen_chains(suite.task, demonstrations, problems)


def _interrupt_once(signum: int, frame: object) -> None:
    """SIGINT/SIGTERM on a rank: raise KeyboardInterrupt once, ignore the signals after it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise_interrupt(signum, frame)


OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory")


def _status_of(exc: BaseException) -> str:
    """oom for an allocation that failed: MemoryError, torch's OutOfMemoryError (CUDA), the CPU
    allocator's "DefaultCPUAllocator: can't allocate memory" and ENOMEM; failed otherwise."""
    name = type(exc).__name__
    text = str(exc).lower()
    if isinstance(exc, MemoryError) or name == "OutOfMemoryError" or any(m in text for m in OOM_MESSAGES):
        return "oom"
    if isinstance(exc, OSError) and exc.errno == errno.ENOMEM:
        return "oom"
    return "failed"


def _last_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[-1] if text else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
