"""`rlbench run SUITE`: prepare the shared stages, then one fresh process per algorithm x seed.

1. Validate the suite (every error at once), check that this machine has what it needs and that
   the model directories hold weights and no code the suite does not trust; then a new folder.
2. Shared stages, cached on disk: the base model, cold-start SFT, the reward model (only when an
   algorithm holds one), and the SFT model's held-out accuracy (the "before" of every run).
3. Each run in its own worker process (`rlbench.worker`), under the shared budget, with a live
   progress bar and a watchdog (a run past its time limit ends as `timeout`); a suite with a
   `distributed:` block starts it under torchrun, one process per rank, and merges the ranks'
   results (`rlbench.rank_results`). The report is rewritten atomically after every run, so a
   crash, an OOM or a Ctrl-C later loses nothing already measured; a second Ctrl-C still waits
   for the stopped run's partial result.
4. Tables on the terminal; report.json, steps.jsonl per run, plots and summary.md on disk.

`rlbench run --resume RESULTS_DIR` reopens an earlier report: runs that ended ok are kept, the
others run again in the same folder, and the report's `resumed` list says which.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from rlbench.cache import cache_root, cached_dir, stable_hash
from rlbench.config import Suite, load_suite, resolved_dict
from rlbench.errors import UserError
from rlbench.process import (
    EVENT_PREFIX,
    InterruptGate,
    Watchdog,
    end_ranks,
    exit_status,
    exited,
    finish_group,
    oom_kill_counts,
    oom_killer_ran,
    quiet_libraries,
    signal_run,
    time_limit,
    worker_command,
)
from rlbench.report.io import write_json_atomic
from rlbench.report.schema import SCHEMA_VERSION
from rlbench.results import new_results_dir, reopen_results_dir

EVAL_VERSION = 3  # bump when evaluation changes what it returns for the same model and problems

INTERRUPT_GRACE_S = 40.0  # after Ctrl-C, seconds a worker gets to write its partial result (torchrun gives ranks 30)
RUN_STATUSES = ("ok", "failed", "oom", "interrupted", "timeout")


def run_id(label: str, seed: int) -> str:
    return f"{label}/seed{seed}"


def plan_runs(suite: Suite) -> list[dict[str, Any]]:
    return [{"id": run_id(a.label or a.name, seed), "algorithm": a.name, "label": a.label or a.name, "seed": seed,
             "algorithm_index": i, "status": "pending"}
            for i, a in enumerate(suite.algorithms) for seed in suite.seeds]


def needs_reward_model(suite: Suite) -> bool:
    from rlbench.train import make_algorithm

    algorithms = [make_algorithm(a) for a in suite.algorithms]
    return any("reward" in a.roles() or a.value_init() == "reward" for a in algorithms)


def run_suite(path: str | None, overrides: list[str], output: str | None, console: Console,
              resume: str | None = None) -> tuple[Path, int]:
    """Run every algorithm x seed of a suite, or with `resume` (a results directory) the runs of an
    earlier report that did not end ok; returns (report path, exit code)."""
    gate = InterruptGate()
    gate.install()  # Ctrl-C and `kill` end the suite with the report kept, never mid-write
    try:
        return _run(path, overrides, output, console, resume, gate)
    finally:
        gate.restore()


def _run(path: str | None, overrides: list[str], output: str | None, console: Console, resume: str | None,
         gate: InterruptGate) -> tuple[Path, int]:
    from rlbench.environment import environment
    from rlbench.requirements import check_requirements

    quiet_libraries()
    if resume is not None:
        out_dir, report, suite = reopen_results_dir(resume)
        if [p["id"] for p in plan_runs(suite)] != [r["id"] for r in report["runs"]]:
            raise UserError(f"--resume {resume}: the report's runs do not match its suite.resolved.yaml")
        check_requirements(suite)
        _check_inputs(suite)
        suite_file = out_dir / "suite.resolved.yaml"
        kept = [r["id"] for r in report["runs"] if r["status"] == "ok"]
        again = [r["id"] for r in report["runs"] if r["status"] != "ok"]
        plans = {p["id"]: p for p in plan_runs(suite)}
        for entry in report["runs"]:
            if entry["status"] != "ok":
                plan = plans[entry["id"]]
                entry.clear()
                entry.update(plan)
        report["resumed"] = [*report.get("resumed", []), {
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "kept": kept, "rerun": again}]
        report["status"] = "running"
    else:
        assert path is not None, "a suite file or a results directory to resume"
        suite = load_suite(path, overrides)
        check_requirements(suite)
        if output:
            suite = replace(suite, output=output)
        _check_inputs(suite)
        out_dir = new_results_dir(Path(suite.output), suite.name, "--output" if output else "output")
        suite_file = out_dir / "suite.resolved.yaml"
        suite_file.write_text(yaml.safe_dump(resolved_dict(suite), sort_keys=False))
        report = {
            "schema_version": SCHEMA_VERSION,
            "suite": resolved_dict(suite),
            "suite_file": str(path),
            "overrides": list(overrides),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "environment": environment(Path(path).resolve().parent),
            "stages": {},
            "runs": plan_runs(suite),
            "status": "running",
        }
    report_path = out_dir / "report.json"

    def save() -> None:
        from rlbench.report.schema import validate_report

        validate_report(report)
        try:
            write_json_atomic(report_path, report)
        except OSError as err:
            raise UserError(f"cannot write the report {report_path}: {err.strerror or err}") from None

    save()
    todo = [entry for entry in report["runs"] if entry["status"] != "ok"]
    if resume is not None:
        console.print(f"[bold]rlbench[/] resuming [cyan]{escape(str(out_dir))}[/]: {len(report['runs']) - len(todo)} "
                      f"run(s) kept (ok), {len(todo)} to run again", highlight=False)
    else:
        console.print(f"[bold]rlbench[/] suite [cyan]{escape(suite.name)}[/]: {len(todo)} run(s) -> "
                      f"{escape(str(out_dir))}", highlight=False)
    failure: BaseException | None = None
    try:
        if todo:
            with gate.opened():
                stages = prepare_stages(suite, console)
            report["stages"] = stages["report"]
            save()
        for entry in todo:
            if gate.interrupted:  # a Ctrl-C while the last result was being saved
                break
            entry.update(status="running")
            entry.update(execute_run(suite, suite_file, entry, stages, out_dir, console, gate))
            save()
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # noqa: BLE001 - a stage that fails still leaves a finished report
        failure = exc
    interrupted = gate.interrupted
    why = f"not run: {_last_line(failure)}" if failure else "not run"
    for entry in report["runs"]:
        if entry["status"] in ("pending", "running"):
            entry.update(status="interrupted" if interrupted else "failed",
                         error="not run: the suite was interrupted" if interrupted else why)
    report["status"] = "interrupted" if interrupted else "complete"
    report["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    save()
    if failure is not None:
        raise failure
    from rlbench.report.views import print_report, write_artifacts

    print_report(report, console)
    write_artifacts(report, out_dir, console)
    console.print(f"report: [bold]{escape(str(report_path))}[/]", highlight=False)
    if interrupted:
        return report_path, 130
    return report_path, 0 if all(r["status"] == "ok" for r in report["runs"]) else 1


def _check_inputs(suite: Suite) -> None:
    """Model directories the suite names: a config, weights, and no Python code it does not trust
    (UserError before any output folder exists)."""
    from rlbench.models.loading import check_model_dir, resolve_base

    resolve_base(suite.model.name, suite.model.trust_remote_code)
    if suite.model.reward_model.path and needs_reward_model(suite):
        check_model_dir(Path(suite.model.reward_model.path).expanduser(), "model.reward_model.path",
                        suite.model.trust_remote_code)


def prepare_stages(suite: Suite, console: Console) -> dict[str, Any]:
    """Base model, SFT, reward model and the SFT model's evaluation, shared by every run."""
    import torch

    from rlbench.models.loading import resolve_base
    from rlbench.models.sft import cold_start

    torch.set_num_threads(suite.threads or os.cpu_count() or 1)
    base_dir = resolve_base(suite.model.name, suite.model.trust_remote_code)
    stages: dict[str, Any] = {"report": {}}
    policy_dir = base_dir
    from rlbench.models.shape import is_shape

    shape = is_shape(suite.model.name)
    if shape and suite.model.sft.steps > 0:
        console.print("SFT: skipped (a shape model has random weights; SFT would be meaningless)")
    if suite.model.sft.steps > 0 and not shape:
        with _bar(console, "SFT (cold start)", suite.model.sft.steps) as (progress, task):
            policy_dir, stats, hit = cold_start(
                base_dir, suite.model.name, suite.model.sft, suite.task, seed=0,
                on_step=lambda step, loss: progress.update(task, completed=step, info=f"loss {loss:.3f}"),
                trust_remote_code=suite.model.trust_remote_code)
        console.print(f"SFT: {'cached' if hit else 'trained'} ({stats['sft/seconds']:.0f} s, "
                      f"{int(stats['sft/steps'])} steps, final loss {stats['sft/final_loss']:.3f})")
        stages["report"]["sft"] = dict(stats, cache_hit=hit, path=str(policy_dir))
    stages["policy_dir"] = str(policy_dir)

    if needs_reward_model(suite) and shape:  # the same shape with a fresh scalar head, untrained
        stages["reward_dir"] = str(policy_dir)
        stages["report"]["reward_model"] = {"untrained": True, "path": str(policy_dir)}
    elif needs_reward_model(suite):
        from rlbench.models.reward_model import prepare_reward_model

        with _bar(console, "reward model", suite.model.reward_model.steps) as (progress, task):
            reward_dir, rm_stats, hit = prepare_reward_model(
                Path(policy_dir), suite, on_step=lambda step, total, info: progress.update(
                    task, completed=step, total=total, info=info))
        console.print(f"reward model: {'cached' if hit else 'trained'}, held-out pairwise accuracy "
                      f"{rm_stats.get('reward_model/heldout_accuracy', float('nan')):.3f}")
        stages["reward_dir"] = str(reward_dir)
        stages["report"]["reward_model"] = dict(rm_stats, cache_hit=hit, path=str(reward_dir))
        weak = reward_model_warning(rm_stats)
        if weak:
            console.print(f"[yellow]warning:[/] weak reward model: {escape(weak)}; a run that optimises its "
                          "reward may climb it without getting answers right", highlight=False)
            stages["reward_model_warning"] = weak
            stages["report"]["reward_model"]["weak"] = weak

    def evaluate_start() -> dict[str, float]:
        from rlbench.catalog import load_problems
        from rlbench.device import default_device
        from rlbench.measure.evaluation import evaluate_suite
        from rlbench.models.embedded import load_pretrained_pair
        from rlbench.rollout.hf import HFEngine

        model, tokenizer = load_pretrained_pair(policy_dir, trust_remote_code=suite.model.trust_remote_code)
        model.to(default_device())
        problems = load_problems(suite.task, "eval", suite.eval.size, 0)
        with console.status(f"evaluating the starting model on {len(problems)} held-out problems"):
            start = time.perf_counter()
            result = evaluate_suite(HFEngine(model, tokenizer), tokenizer, problems, suite)
        return dict(result, seconds=round(time.perf_counter() - start, 3))

    if shape:
        console.print("accuracy: not measured (shape model: random weights)")
        return stages
    # The starting model's evaluation is deterministic (greedy, fixed problems), so a cached SFT
    # model's is cached beside it; a model outside the cache is evaluated every time.
    hit = False
    if Path(policy_dir).is_relative_to(cache_root()):
        key = stable_hash({"policy_dir": str(policy_dir), "eval": asdict(suite.eval), "task": asdict(suite.task),
                           "max_new_tokens": suite.rollout.max_new_tokens,
                           "temperature": suite.rollout.temperature, "version": EVAL_VERSION})
        eval_dir, hit = cached_dir("eval", key, lambda tmp: write_json_atomic(tmp / "eval.json", evaluate_start()))
        before = json.loads((eval_dir / "eval.json").read_text())
    else:
        before = evaluate_start()
    seconds = before.pop("seconds")
    stderr, by = starting_stderr(suite, before)
    console.print(f"starting accuracy: {before['eval/accuracy']:.1%} ± {stderr:.1%} ({by}; "
                  f"{'cached' if hit else f'{seconds:.0f} s'})")
    stages["report"]["eval_before_cached"] = hit
    stages["eval_seconds"] = seconds  # what the watchdog allows a run's final evaluation (x SLACK)
    stages["eval_before"] = before  # with its per-problem outcomes, which each run's result keeps
    stages["report"]["eval_before"] = {k: v for k, v in before.items() if k != "eval/outcomes"}  # evaluation.OUTCOMES
    return stages


def starting_stderr(suite: Suite, before: dict[str, Any]) -> tuple[float, str]:
    """The starting accuracy's standard error as the report's tables give it: clustered by the
    task's key (problems telling one arithmetic chain are one piece of evidence) where the
    per-problem outcomes are there, else binomial; and which it is."""
    from rlbench.catalog import load_problems, problem_clusters
    from rlbench.report.stats import clustered_stderr

    outcomes = before.get("eval/outcomes")
    if outcomes:
        clusters, by = problem_clusters(suite.task, load_problems(suite.task, "eval", suite.eval.size, 0))
        if len(clusters) == len(outcomes) and len(set(clusters)) > 1:
            return clustered_stderr([int(c) for c in outcomes], clusters)[0], f"clustered by {by}"
    return before["eval/accuracy_stderr_binomial"], "binomial"


def reward_model_warning(stats: dict[str, Any]) -> str | None:
    """Why the reward model stage's held-out pairwise accuracy is too weak to trust, or None
    (also None for a loaded model without held-out figures)."""
    from rlbench.report.stats import weak_reward_model

    accuracy, pairs = stats.get("reward_model/heldout_accuracy"), stats.get("reward_model/heldout_pairs")
    if accuracy is None or not pairs or not math.isfinite(accuracy):
        return None
    return weak_reward_model(accuracy, int(pairs))


def execute_run(suite: Suite, suite_file: Path, entry: dict[str, Any], stages: dict[str, Any], out_dir: Path,
                console: Console, gate: InterruptGate | None = None) -> dict[str, Any]:
    """One worker process; returns the run's result (a failure result if the worker died).

    Ctrl-C (through `gate`) forwards SIGINT to the worker and waits up to INTERRUPT_GRACE_S for it
    to write its partial result; further Ctrl-Cs meanwhile are only counted. The watchdog ends a
    worker past its time limit (process.time_limit) with status `timeout`."""
    from rlbench.measure.memory import cpu_worker_env
    from rlbench.report.io import read_json

    gate = gate or InterruptGate()
    run_dir = out_dir / "runs" / entry["id"].replace("/", "-")
    run_dir.mkdir(parents=True, exist_ok=True)
    result_path = run_dir / "result.json"
    for stale in (result_path, *run_dir.glob("rank*/result.json")):  # a rerun (--resume) must not read
        stale.unlink(missing_ok=True)                                    # the last attempt's results
    spec = {"suite_path": str(suite_file), "algorithm_index": entry["algorithm_index"], "seed": entry["seed"],
            "policy_dir": stages["policy_dir"], "reward_dir": stages.get("reward_dir"), "run_dir": str(run_dir),
            "eval_before": stages.get("eval_before"), "reward_model_warning": stages.get("reward_model_warning")}
    spec_path = write_json_atomic(run_dir / "spec.json", spec)
    env = dict(os.environ, **cpu_worker_env(suite.probe_heap), PYTHONUNBUFFERED="1")
    ranks = suite.distributed.nproc_per_node if suite.distributed is not None else 1
    if ranks > 1:  # torchrun warns unless OMP_NUM_THREADS is set; each rank sets its own
        env.setdefault("OMP_NUM_THREADS", "1")
    oom_before = oom_kill_counts()
    started = time.time()
    seen: dict[str, float] = {"fraction": 0.0, "rl_seconds": 0.0}

    def limit() -> float:
        return time_limit(suite.run_timeout_s, suite.budget.wall_seconds, stages.get("eval_seconds") or 0.0,
                          seen["rl_seconds"], seen["fraction"])

    interrupted = False
    with open(run_dir / "worker.log", "w") as log:
        proc = subprocess.Popen(worker_command(spec_path, ranks), stdout=subprocess.PIPE, stderr=log, text=True,
                                env=env, start_new_session=True)
        with Watchdog(proc, limit, send=lambda sig: signal_run(proc, sig, run_dir)) as watchdog:
            try:
                with gate.opened(), _bar(console, escape(entry["id"]), 1.0, fraction=True) as (progress, task):
                    for line in proc.stdout:
                        if not line.startswith(EVENT_PREFIX):
                            log.write(line)
                            continue
                        event = json.loads(line[len(EVENT_PREFIX):])
                        if event["event"] == "loaded":
                            seen["loaded"] = time.monotonic()
                        elif event["event"] == "step":
                            seen["rl_seconds"] = time.monotonic() - seen.get("loaded", time.monotonic())
                            seen["fraction"] = float(event["fraction"])
                            progress.update(task, completed=event["fraction"],
                                            info=f"step {event['step']}  completions {event['completions']}  "
                                                 f"reward {event['reward']:.3f}  gold {event['gold']:.2f}")
                        elif event["event"] == "eval":
                            progress.update(task, info="evaluating")
            except KeyboardInterrupt:
                interrupted = True
                signal_run(proc, signal.SIGINT, run_dir)
                console.print(f"  {escape(entry['id'])}: interrupted; waiting up to {INTERRUPT_GRACE_S:.0f} s for "
                              "it to write what it measured", highlight=False)
            deadline = time.monotonic() + (INTERRUPT_GRACE_S if interrupted else math.inf)
            while not exited(proc) and time.monotonic() < deadline:
                time.sleep(0.05)
        code = finish_group(proc)  # the watchdog has stopped: nothing else signals the group now
        end_ranks(run_dir, spec_path)
    oom_after = oom_kill_counts()
    if ranks > 1:
        from rlbench.rank_results import merge_ranks

        result = merge_ranks(run_dir, ranks, _read_text(run_dir / "worker.log"), oom_killer_ran(oom_before, oom_after))
        if result:
            write_json_atomic(result_path, result)
    else:
        result = read_json(result_path) if result_path.exists() else {}
    if watchdog.expired is not None:
        result.update(status="timeout", error=f"stopped by the watchdog after {watchdog.expired:.0f} s "
                                              "(its time limit: run_timeout_s, or derived from the budget)")
    elif interrupted and result.get("status") != "ok":  # a run that finished as Ctrl-C came stays ok
        result.update(status="interrupted", error=result.get("error") or "interrupted by the user")
    elif result.get("status") not in RUN_STATUSES:
        status, how = exit_status(code, oom_before, oom_after)
        tail = _tail(run_dir / "worker.log")
        result.update(status=status, error=f"{how}: {tail}" if tail else how)
    result.setdefault("error", None)
    result["wall_seconds"] = time.time() - started
    result["run_dir"] = str(run_dir.relative_to(out_dir))
    colour = "green" if result["status"] == "ok" else "red"
    detail = f" ({escape(str(result['error']))})" if result["status"] != "ok" and result.get("error") else ""
    console.print(f"  {escape(entry['id'])}: [{colour}]{result['status']}[/]{detail}", highlight=False)
    return result


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _tail(path: Path, lines: int = 1) -> str:
    try:
        text = [line for line in path.read_text().splitlines() if line.strip()]
    except OSError:
        return ""
    return " | ".join(text[-lines:])[-300:]


class _bar:
    """A one-task Rich progress bar with a free-text info column. It appears at its first update,
    so a stage that comes from the cache (no step to show) leaves no empty bar behind."""

    def __init__(self, console: Console, label: str, total: float, fraction: bool = False) -> None:
        columns = [TextColumn("[bold]{task.description}"), BarColumn(),
                   TextColumn("{task.percentage:>3.0f}%") if fraction else TextColumn("{task.completed}/{task.total}"),
                   TimeElapsedColumn(), TextColumn("{task.fields[info]}")]
        self.progress = Progress(*columns, console=console, transient=False)
        self.label, self.total, self.started = label, total, False

    def __enter__(self) -> tuple[_bar, Any]:
        return self, self.progress.add_task(self.label, total=self.total, info="")

    def update(self, task: Any, **fields: Any) -> None:
        if not self.started:
            self.progress.start()
            self.started = True
        self.progress.update(task, **fields)

    def __exit__(self, *exc: Any) -> None:
        if self.started:
            self.progress.stop()


def _last_line(exc: BaseException | None) -> str:
    text = f"{type(exc).__name__}: {exc}".strip() if exc is not None else ""
    return text.splitlines()[-1] if text else ""
