"""`rlbench run SUITE`: prepare the shared stages, then one fresh process per algorithm x seed.

1. Validate the suite (every error at once), check that this machine has what it needs and that
   the model directories hold weights and no code the suite does not trust; then a new folder.
2. Shared stages, cached on disk: the base model, cold-start SFT, the reward model (only when an
   algorithm holds one), and the SFT model's held-out accuracy (the "before" of every run):
   `rlbench.stages.prepare_stages`.
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
from contextlib import ExitStack
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.markup import escape

from rlbench.config import Suite, load_suite, resolved_dict, smoke_suite
from rlbench.errors import UserError
from rlbench.process import (
    EVENT_PREFIX,
    PARENT_ENV,
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
    stop_signals_blocked,
    survive_broken_pipe,
    time_limit,
    worker_command,
)
from rlbench.progress import ProgressBar
from rlbench.report.io import write_json_atomic
from rlbench.report.schema import SCHEMA_VERSION
from rlbench.results import new_results_dir, reopen_results_dir, report_lock, results_dir_of
from rlbench.stages.prepare import needs_reward_model, prepare_stages

INTERRUPT_GRACE_S = 40.0  # after Ctrl-C, seconds a worker gets to write its partial result (torchrun gives ranks 30)
RUN_STATUSES = ("ok", "failed", "oom", "interrupted", "timeout")


def run_id(label: str, seed: int) -> str:
    return f"{label}/seed{seed}"


def plan_runs(suite: Suite) -> list[dict[str, Any]]:
    """Every algorithm x seed, seed by seed: a suite cut short holds whole seeds of every arm."""
    return [{"id": run_id(a.label or a.name, seed), "algorithm": a.name, "label": a.label or a.name, "seed": seed,
             "algorithm_index": i, "status": "pending"}
            for seed in suite.seeds for i, a in enumerate(suite.algorithms)]


def run_suite(path: str | None, overrides: list[str], output: str | None, console: Console,
              resume: str | None = None, smoke: bool = False) -> tuple[Path, int]:
    """Run every algorithm x seed of a suite, or with `resume` (a results directory) the runs of an
    earlier report that did not end ok; returns (report path, exit code). `smoke`: as
    config.smoke_suite shortens it, the report marked `smoke`."""
    gate = InterruptGate()
    gate.install()  # Ctrl-C, `kill` and a closed terminal end the suite with the report kept, never mid-write
    survive_broken_pipe(console)  # `rlbench run ... | head -1`: the report is still finished and saved
    try:
        with ExitStack() as held:  # the results folder's lock, for as long as this runner writes there
            return _run(path, overrides, output, console, resume, gate, held, smoke)
    finally:
        gate.restore()


def _precision_advice(suite: Suite) -> str | None:
    """measure/roofline.py's one line on bf16 for an fp32 suite on a CPU that computes bf16 natively."""
    from rlbench.cache import cache_root
    from rlbench.device import default_device
    from rlbench.measure.roofline import precision_advice
    from rlbench.models.precision import resolve_precision

    return precision_advice(resolve_precision(suite.model).name, default_device().type, cache_root())


def _run(path: str | None, overrides: list[str], output: str | None, console: Console, resume: str | None,
         gate: InterruptGate, held: ExitStack, smoke: bool = False) -> tuple[Path, int]:
    from rlbench.environment import environment, git_state
    from rlbench.requirements import check_requirements

    quiet_libraries()
    if resume is not None:
        held.enter_context(report_lock(results_dir_of(resume), f"--resume {resume}"))
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
        source = Path(report.get("suite_file") or ".").resolve().parent  # where the first run read its git state
        report["resumed"] = [*report.get("resumed", []), {
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "kept": kept, "rerun": again,
            "git": git_state(source if source.is_dir() else Path.cwd())}]
        report["status"] = "running"
    else:
        assert path is not None, "a suite file or a results directory to resume"
        suite = load_suite(path, overrides)
        if smoke:
            suite = smoke_suite(suite)
        check_requirements(suite)
        if output:
            suite = replace(suite, output=output)
        _check_inputs(suite)
        out_dir = new_results_dir(Path(suite.output), suite.name, "--output" if output else "output")
        held.enter_context(report_lock(out_dir, str(out_dir)))
        suite_file = out_dir / "suite.resolved.yaml"
        suite_file.write_text(yaml.safe_dump(resolved_dict(suite), sort_keys=False))
        report = {
            "schema_version": SCHEMA_VERSION,
            "suite": resolved_dict(suite),
            "suite_file": str(path),
            "overrides": list(overrides),
            **({"smoke": True} if smoke else {}),
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
    if todo and (advice := _precision_advice(suite)):
        console.print(f"[yellow]note:[/] {escape(advice)}", highlight=False, soft_wrap=True)
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
    except BaseException as exc:  # noqa: BLE001 - a stage that fails (or exits) still leaves a finished report
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
    try:
        write_artifacts(report, out_dir, console)
    except (OSError, UserError) as err:  # the runs are measured and saved: plots are a view of them
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        console.print(f"[yellow]warning:[/] plots and summary.md in {escape(str(out_dir))} not written{escape(where)}: "
                      f"{escape(getattr(err, 'strerror', None) or str(err))}; `rlbench report "
                      f"{escape(str(report_path))}` writes them later", highlight=False, soft_wrap=True)
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
    for stale in (*run_dir.glob("*.log"), *run_dir.glob("rank*/*.json"), *run_dir.glob("rank*/*.log"),
                  result_path):  # a rerun (--resume) must not read, or leave beside its result, the last attempt's
        stale.unlink(missing_ok=True)
    spec = {"suite_path": str(suite_file), "algorithm_index": entry["algorithm_index"], "seed": entry["seed"],
            "policy_dir": stages["policy_dir"], "reward_dir": stages.get("reward_dir"), "run_dir": str(run_dir),
            "eval_before": stages.get("eval_before"), "reward_model_warning": stages.get("reward_model_warning")}
    spec_path = write_json_atomic(run_dir / "spec.json", spec)
    env = dict(os.environ, **cpu_worker_env(suite.probe_heap), PYTHONUNBUFFERED="1", **{PARENT_ENV: str(os.getpid())})
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
        with stop_signals_blocked():
            proc = subprocess.Popen(worker_command(spec_path, ranks), stdout=subprocess.PIPE, stderr=log, text=True,
                                    env=env, start_new_session=True)
        try:
            with Watchdog(proc, limit, send=lambda sig: signal_run(proc, sig, run_dir)) as watchdog:
                try:
                    with gate.opened(), ProgressBar(console, escape(entry["id"]), 1.0, fraction=True) as bar:
                        _follow(proc, log, seen, *bar)
                except KeyboardInterrupt:
                    interrupted = True
                    signal_run(proc, signal.SIGINT, run_dir)
                    console.print(f"  {escape(entry['id'])}: interrupted; waiting up to {INTERRUPT_GRACE_S:.0f} s "
                                  "for it to write what it measured", highlight=False)
                deadline = time.monotonic() + (INTERRUPT_GRACE_S if interrupted else math.inf)
                while not exited(proc) and time.monotonic() < deadline:
                    time.sleep(0.05)
        except BaseException:  # the runner cannot follow its worker (a thread that cannot start, ...): end it
            signal_run(proc, signal.SIGKILL, run_dir)
            raise
        finally:
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
        mark_timeout(result, watchdog.expired)
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


def mark_timeout(result: dict[str, Any], limit: float) -> None:
    """A run the watchdog stopped at `limit` seconds is `timeout`; a rank of it that left no result
    had hung (it did not answer SIGTERM: blocked in a collective or a system call), so it is
    `timeout` too, not a rank "killed by SIGKILL" as if it had crashed."""
    result.update(status="timeout", error=f"stopped by the watchdog after {limit:.0f} s "
                                          "(its time limit: run_timeout_s, or derived from the budget)")
    hung = []
    for rank in (result.get("distributed") or {}).get("ranks") or []:
        if rank.get("status") not in ("ok", "interrupted") and "before writing its result" in str(rank.get("error")):
            rank.update(status="timeout", error="hung: no answer to the watchdog's SIGTERM (blocked in a collective "
                                                "or a system call), then killed")
            hung.append(str(rank.get("rank")))
    if hung:
        result["error"] += f"; rank {', '.join(hung)} hung"


def _follow(proc: subprocess.Popen, log: Any, seen: dict[str, float], progress: Any, task: Any) -> None:
    """Read the worker's stdout to its end: progress events move the bar, other lines go to the log."""
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


def _last_line(exc: BaseException | None) -> str:
    text = f"{type(exc).__name__}: {exc}".strip() if exc is not None else ""
    return text.splitlines()[-1] if text else ""
