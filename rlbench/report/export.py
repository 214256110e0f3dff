"""Export a finished report to TensorBoard or Weights & Biases, beside a team's other experiments.

    rlbench export results/ci/<time>/report.json --to tensorboard
    tensorboard --logdir results/ci/<time>/tensorboard
    rlbench run suites/ci.yaml --log-to tensorboard            (the same export, once the report is written)

The source is a report directory: report.json and each run's steps.jsonl. Each rlbench run becomes
one logged run, named after its run id:
- every numeric field of steps.jsonl as a scalar against the step (`reward/mean`, `kl/k1`,
  `time/generate_s`, ...; `completions` as `budget/completions`);
- the held-out evaluations (`eval/accuracy`, `eval/accuracy_stderr_binomial`, ...) at the step they ran;
- the run's configuration (suite, model, budget, rollout, the algorithm with its params, seed)
  as text and as hyper-parameters, and its final report metrics as `final/<metric>`.

TensorBoard: an event file in <report dir>/tensorboard/<run>/, written offline with tensorboard's
own event writer (the `tensorboard` extra); exporting again replaces it.
Weights & Biases (the `wandb` extra): offline files under <report dir>/wandb/ unless wandb is
configured on this machine (`wandb_mode`), so nothing leaves the machine unless the user set it up.

The writers are imported when used, and none imports torch: rlbench/report reads JSON only.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from rlbench.errors import UserError
from rlbench.report.format import literal
from rlbench.report.plots import read_steps
from rlbench.report.sanity import finite_number

TARGETS = ("tensorboard", "wandb")
EXTRA = {"tensorboard": "tensorboard", "wandb": "wandb"}


@dataclass(frozen=True)
class ExportRun:
    """What one rlbench run contributes: its name, scalars per step, configuration and final metrics."""

    name: str
    folder: str  # a safe directory name
    scalars: dict[int, dict[str, float]]  # step -> tag -> value, steps in order
    config: dict[str, Any]
    final: dict[str, float]


def export_runs(report: dict[str, Any], report_dir: Path) -> list[ExportRun]:
    """Every run of the report with its steps.jsonl and evaluations, ready for a writer."""
    suite = report.get("suite") or {}
    algorithms = suite.get("algorithms") or []
    out = []
    for run in report["runs"]:
        scalars: dict[int, dict[str, float]] = {}
        for row in read_steps(report_dir, run):  # numbers only, `step` a whole number
            step = row["step"]
            for key, value in row.items():
                if key != "step" and finite_number(value):
                    scalars.setdefault(step, {})["budget/completions" if key == "completions" else key] = float(value)
        for evaluation in (run.get("accuracy") or {}).get("curve") or run.get("evals") or []:
            if not finite_number(evaluation.get("step")):
                continue
            for key, value in evaluation.items():
                if key.startswith("eval/") and finite_number(value):
                    scalars.setdefault(int(evaluation["step"]), {})[key] = float(value)
        index = run.get("algorithm_index")
        algorithm = algorithms[index] if isinstance(index, int) and 0 <= index < len(algorithms) else {}
        config = {"suite": suite.get("name"), "run": run["id"], "seed": run.get("seed"), "status": run.get("status"),
                  "algorithm": algorithm, "model": suite.get("model"), "task": suite.get("task"),
                  "budget": suite.get("budget"), "rollout": suite.get("rollout"), "report": report.get("created")}
        final = {name: float(m["value"]) for name, m in (run.get("metrics") or {}).items()
                 if isinstance(m, dict) and finite_number(m.get("value"))}
        folder = Path(run["run_dir"]).name if run.get("run_dir") else run["id"]
        out.append(ExportRun(run["id"], _safe(folder), dict(sorted(scalars.items())), config, final))
    return out


def _safe(name: str) -> str:
    """A directory name from a run id: path separators and odd characters replaced."""
    cleaned = re.sub(r"[^A-Za-z0-9._=+-]+", "-", name).strip(".-")
    return cleaned or "run"


def flat_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'algorithm': {'params': {'lr': 1e-4}}} -> {'algorithm.params.lr': 1e-4}; values that are not
    int, float, str or bool become their JSON text (hyper-parameter tables take scalars only)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_config(value, f"{name}."))
        elif value is None:
            out[name] = "none"
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = json.dumps(value)
    return out


def require(targets: list[str]) -> None:
    """Raise UserError, naming the extra to install, when a writer for a target is not installed."""
    for target in targets:
        if target not in TARGETS:
            raise UserError(f"--to/--log-to {target!r}: expected one of {', '.join(TARGETS)}")
        if importlib.util.find_spec(EXTRA[target]) is None:
            raise UserError(f"--to/--log-to {target}: the {target} package is not installed; "
                            f"install the extra: pip install 'rlbench[{EXTRA[target]}]'")


def to_tensorboard(runs: list[ExportRun], out_dir: Path) -> Path:
    """One folder with one event file per run under `out_dir`, replacing an earlier export's. Written
    with tensorboard's own event writer and summary protos (numpy only, no torch or TensorFlow)."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams.summary_v2 import hparams_pb
    from tensorboard.plugins.text.summary_v2 import text_pb
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    for run in runs:
        logdir = out_dir / run.folder
        if logdir.is_dir():
            for old in logdir.glob("events.out.tfevents.*"):
                old.unlink()
        writer = EventFileWriter(str(logdir))
        now = time.time()
        try:
            for step, values in run.scalars.items():
                summary = Summary(value=[Summary.Value(tag=tag, simple_value=value) for tag, value in values.items()])
                writer.add_event(Event(wall_time=now, step=step, summary=summary))
            last = max(run.scalars, default=0)
            final = Summary(value=[Summary.Value(tag=f"final/{k}", simple_value=v) for k, v in run.final.items()])
            writer.add_event(Event(wall_time=now, step=last, summary=final))
            text = json.dumps(run.config, indent=2, default=str)
            config = text_pb("config", "\n".join("    " + line for line in text.splitlines()))  # a code block
            writer.add_event(Event(wall_time=now, step=0, summary=config))
            writer.add_event(Event(wall_time=now, step=0, summary=hparams_pb(flat_config(run.config),
                                                                            trial_id=run.name)))
        finally:
            writer.close()
    return out_dir


def wandb_mode(env: Mapping[str, str] | None = None, netrc: Path | None = None) -> str:
    """'online' only when the user configured wandb here (WANDB_MODE, WANDB_API_KEY, or a login in
    ~/.netrc); 'offline' otherwise: files on disk, no network."""
    env = os.environ if env is None else env
    if env.get("WANDB_MODE"):
        return env["WANDB_MODE"]
    if env.get("WANDB_API_KEY"):
        return "online"
    netrc = Path(env.get("NETRC") or Path.home() / ".netrc") if netrc is None else netrc
    try:
        configured = "api.wandb.ai" in netrc.read_text(errors="replace")
    except OSError:
        configured = False
    return "online" if configured else "offline"


def to_wandb(runs: list[ExportRun], out_dir: Path, group: str, mode: str) -> Path:
    """One wandb run per rlbench run, in `mode`, its files under `out_dir`."""
    import wandb

    out_dir.mkdir(parents=True, exist_ok=True)
    for run in runs:
        logged = wandb.init(project=os.environ.get("WANDB_PROJECT", "rlbench"), name=run.name, group=group,
                            config=run.config, dir=str(out_dir), mode=mode, reinit=True)
        try:
            for step, values in run.scalars.items():
                logged.log(values, step=step)
            logged.summary.update({f"final/{k}": v for k, v in run.final.items()})
        finally:
            logged.finish()
    return out_dir


def export_report(report_path: str | Path, targets: list[str]) -> dict[str, Path]:
    """Write the report at `report_path` to each target; returns where each went."""
    from rlbench.report.schema import load_report

    require(targets)
    report_path = Path(report_path)
    report = load_report(str(report_path))
    runs = export_runs(report, report_path.parent)
    written: dict[str, Path] = {}
    for target in dict.fromkeys(targets):
        if target == "tensorboard":
            written[target] = to_tensorboard(runs, report_path.parent / "tensorboard")
        else:
            group = f"{(report.get('suite') or {}).get('name')}/{report_path.parent.name}"
            written[target] = to_wandb(runs, report_path.parent / "wandb", group, wandb_mode())
    return written


def export_command(path: str, targets: list[str], console: Console) -> int:
    """`rlbench export REPORT.json --to tensorboard`: write, then say where and how to look."""
    for target, where in export_report(path, targets).items():
        hint = f"; view: tensorboard --logdir {where}" if target == "tensorboard" else (
            f" (mode {wandb_mode()})")
        console.print(f"{target}: wrote {literal(where)}{literal(hint)}", highlight=False, soft_wrap=True)
    return 0
