"""`rlbench run SUITE`: prepare the shared stages, then one fresh process per algorithm x seed.

1. Validate the suite (every error at once) and check that this machine has what it needs.
2. Shared stages, cached on disk: the base model, cold-start SFT, the reward model (only when an
   algorithm holds one), and the SFT model's held-out accuracy (the "before" of every run).
3. Each run in its own worker process (`rlbench.worker`), under the shared budget, with a live
   progress bar; a suite with a `distributed:` block starts it under torchrun, one process per
   rank (`worker_command`), and merges the ranks' results (`rlbench.rank_results`). The report is rewritten atomically after every run, so a crash, an OOM or a
   Ctrl-C later loses nothing already measured.
4. Tables on the terminal; report.json, steps.jsonl per run, plots and summary.md on disk.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from rlbench.cache import cache_root, cached_dir, stable_hash
from rlbench.config import Suite, load_suite, resolved_dict
from rlbench.process import EVENT_PREFIX, quiet_libraries, raise_interrupt
from rlbench.report.io import write_json_atomic

EVAL_VERSION = 1  # bump when evaluation changes what it returns for the same model and problems

SCHEMA_VERSION = 1


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


def run_suite(path: str, overrides: list[str], output: str | None, console: Console) -> tuple[Path, int]:
    """Run every algorithm x seed of a suite; returns (report path, exit code)."""
    suite = load_suite(path, overrides)
    quiet_libraries()
    signal.signal(signal.SIGTERM, raise_interrupt)  # `kill` ends the suite like Ctrl-C: report kept
    from rlbench.requirements import check_requirements

    check_requirements(suite)
    if output:
        suite = replace(suite, output=output)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_dir = Path(suite.output) / suite.name / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    suite_file = out_dir / "suite.resolved.yaml"
    suite_file.write_text(yaml.safe_dump(resolved_dict(suite), sort_keys=False))

    from rlbench.environment import environment

    report: dict[str, Any] = {
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
        write_json_atomic(report_path, report)

    save()
    console.print(f"[bold]rlbench[/] suite [cyan]{suite.name}[/]: {len(report['runs'])} run(s) -> {out_dir}")
    interrupted = False
    try:
        stages = prepare_stages(suite, console)
        report["stages"] = stages["report"]
        save()
        for entry in report["runs"]:
            entry.update(execute_run(suite, suite_file, entry, stages, out_dir, console))
            save()
            if entry["status"] == "interrupted":
                interrupted = True
                break
    except KeyboardInterrupt:
        interrupted = True
    for entry in report["runs"]:
        if entry["status"] in ("pending", "running"):
            entry.update(status="interrupted" if interrupted else "failed",
                         error="not run: the suite was interrupted" if interrupted else "not run")
    report["status"] = "interrupted" if interrupted else "complete"
    report["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    save()
    from rlbench.report.views import print_report, write_artifacts

    print_report(report, console)
    write_artifacts(report, out_dir, console)
    console.print(f"report: [bold]{report_path}[/]")
    if interrupted:
        return report_path, 130
    return report_path, 0 if all(r["status"] == "ok" for r in report["runs"]) else 1


def prepare_stages(suite: Suite, console: Console) -> dict[str, Any]:
    """Base model, SFT, reward model and the SFT model's evaluation, shared by every run."""
    import torch

    from rlbench.models.loading import resolve_base
    from rlbench.models.sft import cold_start

    torch.set_num_threads(suite.threads or os.cpu_count() or 1)
    base_dir = resolve_base(suite.model.name)
    stages: dict[str, Any] = {"report": {}}
    policy_dir = base_dir
    if suite.model.sft.steps > 0:
        with _bar(console, "SFT (cold start)", suite.model.sft.steps) as (progress, task):
            policy_dir, stats, hit = cold_start(
                base_dir, suite.model.name, suite.model.sft, suite.task, seed=0,
                on_step=lambda step, loss: progress.update(task, completed=step, info=f"loss {loss:.3f}"))
        console.print(f"SFT: {'cached' if hit else 'trained'} ({stats['sft/seconds']:.0f} s, "
                      f"{int(stats['sft/steps'])} steps, final loss {stats['sft/final_loss']:.3f})")
        stages["report"]["sft"] = dict(stats, cache_hit=hit, path=str(policy_dir))
    stages["policy_dir"] = str(policy_dir)

    if needs_reward_model(suite):
        from rlbench.models.reward_model import prepare_reward_model

        with _bar(console, "reward model", suite.model.reward_model.steps) as (progress, task):
            reward_dir, rm_stats, hit = prepare_reward_model(
                Path(policy_dir), suite, on_step=lambda step, total, info: progress.update(
                    task, completed=step, total=total, info=info))
        console.print(f"reward model: {'cached' if hit else 'trained'}, held-out pairwise accuracy "
                      f"{rm_stats.get('reward_model/heldout_accuracy', float('nan')):.3f}")
        stages["reward_dir"] = str(reward_dir)
        stages["report"]["reward_model"] = dict(rm_stats, cache_hit=hit, path=str(reward_dir))

    def evaluate_start() -> dict[str, float]:
        from rlbench.catalog import load_problems
        from rlbench.device import default_device
        from rlbench.measure.evaluation import evaluate_suite
        from rlbench.models.embedded import load_pretrained_pair
        from rlbench.rollout.hf import HFEngine

        model, tokenizer = load_pretrained_pair(policy_dir)
        model.to(default_device())
        problems = load_problems(suite.task, "eval", suite.eval.size, 0)
        with console.status(f"evaluating the starting model on {len(problems)} held-out problems"):
            start = time.perf_counter()
            result = evaluate_suite(HFEngine(model, tokenizer), tokenizer, problems, suite)
        return dict(result, seconds=round(time.perf_counter() - start, 3))

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
    console.print(f"starting accuracy: {before['eval/accuracy']:.1%} ± {before['eval/accuracy_stderr']:.1%} "
                  f"({'cached' if hit else f'{seconds:.0f} s'})")
    stages["report"]["eval_before_cached"] = hit
    stages["eval_before"] = before
    stages["report"]["eval_before"] = before
    return stages


def execute_run(suite: Suite, suite_file: Path, entry: dict[str, Any], stages: dict[str, Any], out_dir: Path,
                console: Console) -> dict[str, Any]:
    """One worker process; returns the run's result (a failure result if the worker died)."""
    from rlbench.measure.memory import CPU_WORKER_ENV
    from rlbench.report.io import read_json

    run_dir = out_dir / "runs" / entry["id"].replace("/", "-")
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = {"suite_path": str(suite_file), "algorithm_index": entry["algorithm_index"], "seed": entry["seed"],
            "policy_dir": stages["policy_dir"], "reward_dir": stages.get("reward_dir"), "run_dir": str(run_dir),
            "eval_before": stages.get("eval_before")}
    spec_path = write_json_atomic(run_dir / "spec.json", spec)
    env = dict(os.environ, **CPU_WORKER_ENV, PYTHONUNBUFFERED="1")
    ranks = suite.distributed.nproc_per_node if suite.distributed is not None else 1
    if ranks > 1:  # torchrun warns unless OMP_NUM_THREADS is set; each rank sets its own
        env.setdefault("OMP_NUM_THREADS", "1")
    log = open(run_dir / "worker.log", "w")
    started = time.time()
    proc = subprocess.Popen(worker_command(suite, spec_path), stdout=subprocess.PIPE,
                            stderr=log, text=True, env=env, start_new_session=True)
    timed_out = threading.Event()
    limit = suite.budget.wall_seconds
    timer = None
    if limit:
        grace = 3 * limit + 600  # loading and evaluation come on top of the RL budget

        def kill() -> None:
            timed_out.set()
            _signal_run(proc, signal.SIGKILL, run_dir)

        timer = threading.Timer(grace, kill)
        timer.start()
    status = None
    try:
        with _bar(console, entry["id"], 1.0, fraction=True) as (progress, task):
            for line in proc.stdout:
                if not line.startswith(EVENT_PREFIX):
                    log.write(line)
                    continue
                event = json.loads(line[len(EVENT_PREFIX):])
                if event["event"] == "step":
                    progress.update(task, completed=event["fraction"],
                                    info=f"step {event['step']}  completions {event['completions']}  "
                                         f"reward {event['reward']:.3f}  gold {event['gold']:.2f}")
                elif event["event"] == "eval":
                    progress.update(task, info="evaluating")
            proc.wait()
    except KeyboardInterrupt:
        _signal_run(proc, signal.SIGINT, run_dir)
        try:
            proc.wait(timeout=40)  # torchrun gives its ranks 30 s after forwarding the signal
        except subprocess.TimeoutExpired:
            _signal_run(proc, signal.SIGKILL, run_dir)
            proc.wait()
        status = "interrupted"
    finally:
        if timer:
            timer.cancel()
        log.close()
        _end_ranks(run_dir, spec_path)
    result_path = run_dir / "result.json"
    if ranks > 1:
        from rlbench.rank_results import merge_ranks

        result = merge_ranks(run_dir, ranks, _read_text(run_dir / "worker.log"))
        if result:
            write_json_atomic(result_path, result)
    else:
        result = read_json(result_path) if result_path.exists() else {}
    if not result or timed_out.is_set() or status == "interrupted":
        tail = _tail(run_dir / "worker.log")
        default_status = "timeout" if timed_out.is_set() else (status or _status_from_code(proc.returncode))
        code = proc.returncode
        how = f"worker killed by signal {-code}" if code is not None and code < 0 else f"worker exited with code {code}"
        result.setdefault("error", f"{how}: {tail}" if tail else how)
        result["status"] = default_status if not result.get("status") or result["status"] != "ok" else "ok"
        if status == "interrupted":
            result["status"] = "interrupted"
    result["wall_seconds"] = time.time() - started
    result["run_dir"] = str(run_dir.relative_to(out_dir))
    colour = "green" if result["status"] == "ok" else "red"
    console.print(f"  {entry['id']}: [{colour}]{result['status']}[/]"
                  + (f" ({result.get('error')})" if result["status"] != "ok" and result.get("error") else ""))
    return result


def _status_from_code(code: int | None) -> str:
    if code == -signal.SIGKILL or code == 137:
        return "oom"  # the kernel's OOM killer sends SIGKILL
    if code in (-signal.SIGINT, 130):
        return "interrupted"
    return "failed"


def worker_command(suite: Suite, spec_path: Path) -> list[str]:
    """The command of one run: `python -m rlbench.worker SPEC`, under torchrun for more than one rank."""
    worker = ["-m", "rlbench.worker", str(spec_path)]
    if suite.distributed is None or suite.distributed.nproc_per_node == 1:
        return [sys.executable, *worker]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node", str(suite.distributed.nproc_per_node), *worker]


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_run(proc: subprocess.Popen, sig: int, run_dir: Path) -> None:
    """The worker's process group and, for a distributed run, every rank: torchrun starts each rank
    in a session of its own, which a signal to torchrun's group does not reach."""
    _signal_group(proc, sig)
    for pid in _rank_pids(run_dir, str(run_dir / "spec.json")):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _rank_pids(run_dir: Path, spec_path: str) -> list[int]:
    """Live ranks of the run (each wrote rank*/pid), checked by command line against reused pids."""
    import psutil

    pids = []
    for path in sorted(run_dir.glob("rank*/pid")):
        try:
            pid = int(path.read_text())
            if spec_path in psutil.Process(pid).cmdline():
                pids.append(pid)
        except (OSError, ValueError, psutil.Error):
            continue
    return pids


def _end_ranks(run_dir: Path, spec_path: Path) -> None:
    """SIGKILL any rank still alive once its torchrun is gone: no process outlives its run."""
    for pid in _rank_pids(run_dir, str(spec_path)):
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


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
    """A one-task Rich progress bar with a free-text info column."""

    def __init__(self, console: Console, label: str, total: float, fraction: bool = False) -> None:
        columns = [TextColumn("[bold]{task.description}"), BarColumn(),
                   TextColumn("{task.percentage:>3.0f}%") if fraction else TextColumn("{task.completed}/{task.total}"),
                   TimeElapsedColumn(), TextColumn("{task.fields[info]}")]
        self.progress = Progress(*columns, console=console, transient=False)
        self.label, self.total = label, total

    def __enter__(self):
        self.progress.__enter__()
        task = self.progress.add_task(self.label, total=self.total, info="")
        return self.progress, task

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)
