"""The `rlbench` command: parses, validates and dispatches; no logic of its own.

    rlbench run suites/memory.yaml                      train each algorithm under one budget, report
    rlbench validate suites/my.yaml                     every config error at once (exit 2 if any)
    rlbench ls [--params]                               algorithms, tasks, rewards, engines, probes
    rlbench compare A.json B.json                       side-by-side tables with deltas
    rlbench check NEW.json --baseline BASE.json         CI gate: exit 1 on regression
    rlbench report REPORT.json                          re-print tables, re-render plots and summary.md
    rlbench estimate SUITE [--gpu h100]                 each phase's peak per role on fake tensors: will it fit?
    rlbench export REPORT.json --to tensorboard         per-step metrics for TensorBoard or W&B

Errors a user can cause print one line each and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.markup import escape

from rlbench import __version__
from rlbench.errors import UserError

# A disk that is full or read-only, a file the user may not write: one line and exit 2, not a traceback.
DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.ENAMETOOLONG}

EPILOG = """examples:
  rlbench run suites/quickstart.yaml
  rlbench run suites/memory.yaml --set budget.steps=5 --set seeds=[0,1] --log-to tensorboard
  rlbench run --resume results/memory/20261124T032253Z      # rerun what did not end ok
  rlbench validate suites/my.yaml
  rlbench compare results/memory/A/report.json results/memory/B/report.json --changed
  rlbench check results/new/report.json --baseline results/baselines/cpu-amd-epyc-avx2.json --threshold memory:5%
  rlbench export results/memory/A/report.json --to tensorboard

`rlbench COMMAND --help` describes each command, with an example.
"""

LOG_TARGETS = ("tensorboard", "wandb")


def _command(sub: argparse._SubParsersAction, name: str, summary: str, description: str,
             examples: list[str]) -> argparse.ArgumentParser:
    """A subcommand whose --help opens with what it does and ends with examples to copy."""
    return sub.add_parser(name, help=summary, description=description,
                          formatter_class=argparse.RawDescriptionHelpFormatter,
                          epilog="example" + ("s" if len(examples) > 1 else "") + ":\n"
                                 + "\n".join(f"  {e}" for e in examples))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlbench", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Benchmark PPO, GRPO and GRPO-Zero under one budget: memory per model role, "
                    "throughput and accuracy, with JSON reports you can compare and gate in CI.")
    parser.add_argument("--version", action="version", version=f"rlbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = _command(
        sub, "run", "run a suite: every algorithm x seed under the shared budget",
        "Run a suite: the shared stages (SFT, reward model; cached under $RLBENCH_CACHE, default\n"
        "~/.cache/rlbench), then each algorithm x seed in its own process under the suite's budget.\n"
        "Writes report.json, each run's steps.jsonl, memory_by_role.png, curves.png and summary.md\n"
        "under <output>/<suite name>/<UTC time>/ and prints the tables. Exit 0 when every run ended ok.\n"
        "With --resume, an earlier run of a suite is finished in its own folder: runs that ended ok\n"
        "are kept, the others run again, and the report's `resumed` list says which.",
        ["rlbench run suites/quickstart.yaml",
         "rlbench run suites/memory.yaml --set budget.steps=5 --set seeds=[0,1] --output /tmp/results",
         "rlbench run suites/ci.yaml --log-to tensorboard   # then: tensorboard --logdir <report dir>/tensorboard",
         "rlbench run --resume results/memory/<UTC time>   # after a Ctrl-C, a crash or a timeout"])
    run.add_argument("suite", nargs="?", help="suite YAML file, e.g. suites/quickstart.yaml")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a suite field, validated like the file: budget.steps=5, "
                          "algorithms[0].params.lr=1e-4, seeds=[0,1] (repeatable)")
    run.add_argument("--output", metavar="DIR", help="write reports under DIR instead of the suite's `output`")
    run.add_argument("--log-to", dest="log_to", action="append", default=[], choices=LOG_TARGETS,
                     help="also export the finished report's per-step metrics and run configs: tensorboard "
                          "(event files in <report dir>/tensorboard, offline) or wandb (offline files "
                          "unless wandb is configured on this machine); repeatable")
    run.add_argument("--resume", metavar="RESULTS_DIR",
                     help="finish an earlier run of a suite in its folder (results/<suite>/<timestamp>): runs "
                          "that ended ok are kept, the others run again; the report lists which")

    validate = _command(
        sub, "validate", "check suite files; print every error with its field path",
        "Validate suite files without running them: every error at once, each with its field path.\n"
        "Exit 0 when valid (warnings name what this machine lacks), 2 otherwise.",
        ["rlbench validate suites/my.yaml", "rlbench validate suites/*.yaml --set budget.steps=5",
         "rlbench validate suites/quickstart.yaml --explain   # every field, its default and help"])
    validate.add_argument("suites", nargs="+", metavar="SUITE", help="suite YAML file(s)")
    validate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                          help="overrides to validate along with the file")
    validate.add_argument("--explain", action="store_true", help="also print every field with its default and help")

    ls = _command(
        sub, "ls", "list registered algorithms, tasks, rewards, engines and probes",
        "List what a suite may name: algorithms, tasks, rewards, rollout engines and memory probes,\n"
        "each with one line on what it is. With --params, every algorithm parameter a suite may set\n"
        "under algorithms[].params, with its type, default, allowed values and help.",
        ["rlbench ls", "rlbench ls --params"])
    ls.add_argument("--params", action="store_true",
                    help="also list each algorithm's params: type, default, allowed values (choices, bounds)")

    compare = _command(
        sub, "compare", "compare reports: runs matched by algorithm label and seed",
        "Set reports side by side; the first is the base. Runs are matched by label and seed; each\n"
        "metric shows its value in every report and the change against the base (green better, red\n"
        "worse). By default only the headline metrics (process peak, step time, tokens/s, MFU,\n"
        "accuracy) and a count of what changed; --changed lists every metric that changed beyond\n"
        "noise (the combined standard error) and the base suite's check: thresholds; --all shows all.",
        ["rlbench compare results/ci/A/report.json results/ci/B/report.json",
         "rlbench compare A/report.json B/report.json --changed",
         "rlbench compare A/report.json B/report.json --metrics 'memory/*' --metrics eval/accuracy",
         "rlbench compare A/report.json B/report.json --all --format md > comparison.md"])
    compare.add_argument("reports", nargs="+", metavar="REPORT", help="report.json files (the first is the base)")
    compare.add_argument("--format", choices=("table", "md"), default="table", help="Rich tables or Markdown")
    compare.add_argument("--changed", action="store_true",
                         help="only metrics whose change exceeds noise and the base suite's threshold")
    compare.add_argument("--metrics", action="append", default=[], metavar="GLOB",
                         help="only metrics whose name matches, e.g. 'memory/*', 'time/*_s', eval/accuracy "
                              "(repeatable or comma-separated)")
    compare.add_argument("--all", action="store_true", help="every metric, one table per area")

    check = _command(
        sub, "check", "regression gate: exit 1 if REPORT regressed against the baseline",
        "Compare REPORT with BASELINE metric by metric. Thresholds come from the baseline's suite (its\n"
        "`check:` block) unless given here, never from REPORT. Exit 0: no regression; 1: regression (a\n"
        "run missing or not ok, a NaN or missing metric, a change beyond its threshold); 2: unusable input,\n"
        "or reports run with different settings (model, task, budget, rollout, eval, seeds, algorithm\n"
        "params; all listed) unless --allow-mismatch. Memory peaks are gated on anonymous memory\n"
        "(RssAnon, what the code allocates) where both reports have it, on total RSS otherwise.\n"
        "Static bytes and the work counts the settings fix are gated against any baseline; times,\n"
        "throughput, memory peaks and accuracy only against one of the same hardware class (and torch\n"
        "threads), else listed as not comparable: hardware differs (exit 2 with --require-same-hardware).",
        ["rlbench check results/ci/<time>/report.json --baseline results/baselines/cpu-amd-epyc-avx2.json",
         "rlbench check new.json --baseline base.json --threshold memory:5% --threshold accuracy:0.02",
         "rlbench check new.json --baseline base.json --gate-memory total"])
    check.add_argument("report", help="the new report.json")
    check.add_argument("--baseline", required=True, help="the baseline report.json")
    check.add_argument("--threshold", action="append", default=[], metavar="AREA:LIMIT",
                       help="memory:5%%, throughput:10%% or accuracy:0.02 (relative with %%, absolute otherwise)")
    check.add_argument("--allow-mismatch", action="store_true",
                       help="check reports run with different settings anyway (the differences are printed as a "
                            "warning); without it such a pair is refused with exit 2")
    check.add_argument("--require-same-hardware", action="store_true",
                       help="exit 2 when the baseline was made on another hardware class or with other torch "
                            "threads (without it, their machine-bound figures are listed, not gated)")
    check.add_argument("--gate-memory", choices=("anon", "total"), default="anon",
                       help="which memory peaks to gate: anon (RssAnon: what the code allocates; total for a "
                            "report without it, with a note) or total (RSS with file-backed pages); default anon")

    report = _command(
        sub, "report", "re-print a report's tables and re-render its plots and summary.md",
        "Re-print the memory and summary tables of a saved report, and re-render memory_by_role.png,\n"
        "curves.png and summary.md next to it (after an upgrade, or for a report copied elsewhere:\n"
        "curves need each run's steps.jsonl under the report's directory).",
        ["rlbench report results/quickstart/<time>/report.json"])
    report.add_argument("report", help="report.json")

    estimate = _command(
        sub, "estimate", "each phase's peak memory per role and kind, on fake tensors: will it fit?",
        "Run each algorithm's real loop (loading, generation, scoring, log-probs, values, the update\n"
        "with AdamW) on fake tensors under PyTorch's MemTracker: no weight is loaded, nothing is\n"
        "downloaded. Every phase's predicted peak by role and kind (weights, gradients, optimizer\n"
        "state, activations, logits, KV cache), worst case: every completion runs to max_new_tokens.",
        ["rlbench estimate suites/gpu-memory.yaml --set model.name=shape:qwen2.5-0.5b --gpu h100",
         "rlbench estimate --model shape:qwen2.5-7b --algos grpo_zero --gpu-gib 80 --headroom completions_per_step",
         "rlbench estimate suites/quickstart.yaml --json"])
    from rlbench.estimate.command import add_arguments

    add_arguments(estimate)

    export = _command(
        sub, "export", "write a finished report's metrics for TensorBoard or Weights & Biases",
        "Export a report directory (report.json and each run's steps.jsonl) as one logged run per\n"
        "rlbench run: every per-step metric against the step, held-out accuracy at each evaluation,\n"
        "the final metrics and the run's configuration. tensorboard: event files in <report\n"
        "dir>/tensorboard/ (needs the `tensorboard` extra). wandb: offline files in <report dir>/wandb/\n"
        "unless wandb is configured here (WANDB_API_KEY, a netrc entry or WANDB_MODE), then as wandb is set up.",
        ["rlbench export results/ci/<time>/report.json --to tensorboard && tensorboard --logdir "
         "results/ci/<time>/tensorboard",
         "rlbench export results/ci/<time>/report.json --to wandb"])
    export.add_argument("report", help="report.json")
    export.add_argument("--to", dest="targets", action="append", required=True, choices=LOG_TARGETS,
                        help="where to write (repeatable)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 150)  # wide tables in logs and CI too
    try:
        return dispatch(args, console)
    except UserError as exc:
        err = Console(stderr=True)
        for message in exc.messages or [str(exc)]:
            err.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted")
        return 130
    except OSError as exc:
        if exc.errno not in DISK_ERRNOS:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        Console(stderr=True).print(f"[red]error:[/] {escape(where)}{escape(exc.strerror or str(exc))}",
                                   highlight=False, soft_wrap=True)
        return 2


def dispatch(args: argparse.Namespace, console: Console) -> int:
    if args.command == "run":
        from rlbench.report.export import export_command, require
        from rlbench.runner import run_suite

        if (args.suite is None) == (args.resume is None):
            raise UserError("run: give a suite file, or --resume RESULTS_DIR (not both)")
        if args.resume is not None and (args.overrides or args.output):
            raise UserError("--resume: --set and --output do not apply; the resumed suite runs as it was "
                            "(its suite.resolved.yaml) in its own folder")
        require(args.log_to)  # a missing writer is said before the runs, not after
        if args.resume is not None:
            report_path, code = run_suite(None, [], None, console, resume=args.resume)
        else:
            report_path, code = run_suite(args.suite, args.overrides, args.output, console)
        if args.log_to:
            export_command(str(report_path), args.log_to, console)
        return code
    if args.command == "validate":
        return cmd_validate(args, console)
    if args.command == "ls":
        return cmd_ls(args, console)
    if args.command == "compare":
        from rlbench.report.compare import Selection, compare_command

        globs = tuple(g.strip() for text in args.metrics for g in text.split(",") if g.strip())
        return compare_command(args.reports, args.format, console,
                               Selection(all=args.all, metrics=globs, changed=args.changed))
    if args.command == "check":
        from rlbench.report.check import check_command

        return check_command(args.report, args.baseline, args.threshold, console,
                             allow_mismatch=args.allow_mismatch, gate_memory=args.gate_memory,
                             require_same_hardware=args.require_same_hardware)
    if args.command == "report":
        from rlbench.report.views import report_command

        return report_command(args.report, console)
    if args.command == "estimate":
        from rlbench.estimate.command import estimate_command

        return estimate_command(args, console)
    if args.command == "export":
        from rlbench.report.export import export_command

        return export_command(args.report, args.targets, console)
    raise AssertionError(f"unhandled command {args.command}")


def cmd_validate(args: argparse.Namespace, console: Console) -> int:
    from rlbench.config import Suite, field_help, load_suite
    from rlbench.requirements import missing_requirements

    errors: list[str] = []
    for path in args.suites:
        try:
            suite = load_suite(path, args.overrides)
        except UserError as exc:
            prefix = f"{path}: " if len(args.suites) > 1 else ""
            errors.extend(prefix + m for m in exc.messages)
            continue
        runs = len(suite.algorithms) * len(suite.seeds)
        console.print(f"[green]ok[/] {escape(path)}: suite '{escape(suite.name)}', {runs} run(s): "
                      + escape(", ".join(a.label or a.name for a in suite.algorithms)), highlight=False)
        for warning in missing_requirements(suite):
            console.print(f"[yellow]warning:[/] this machine cannot run it yet: {escape(warning)}", soft_wrap=True)
    if args.explain:
        for path, type_name, default, help_text in field_help(Suite):
            console.print(f"[cyan]{path}[/] ({type_name}, default {default!r}): {help_text}", highlight=False)
    if errors:
        raise UserError(*errors)
    return 0


def cmd_ls(args: argparse.Namespace, console: Console) -> int:
    import dataclasses

    from rich.table import Table

    from rlbench.catalog import ALGORITHMS, REGISTRIES
    from rlbench.config import field_help

    for registry in REGISTRIES:
        table = Table(title=f"{registry.kind}s", title_justify="left", show_header=False)
        table.add_column("name", style="cyan")
        table.add_column("what it is")
        for entry in registry.entries():
            table.add_row(escape(entry.name), escape(entry.help))
        console.print(table)
    if args.params:
        for entry in ALGORITHMS.entries():
            table = Table(title=f"{escape(entry.name)} params (algorithms[].params)", title_justify="left")
            for col in ("param", "type", "default", "allowed", "help"):
                table.add_column(col, overflow="fold")
            metadata = {fld.name: fld.metadata for fld in dataclasses.fields(entry.obj.params_cls)}
            for path, type_name, default, help_text in field_help(entry.obj.params_cls):
                table.add_row(escape(path), escape(type_name), escape(repr(default)),
                              escape(allowed_values(metadata.get(path, {}))), escape(help_text))
            console.print(table)
    return 0


def allowed_values(meta: Mapping[str, Any]) -> str:
    """A field's constraints from its `f(...)` metadata, as validation enforces them:
    'token_mean | batch', '0 < x < 1', 'x ≥ 1'; '' when any value of its type is accepted."""
    if meta.get("choices"):
        return " | ".join(str(c) for c in meta["choices"])
    low = next(((op, meta[k]) for k, op in (("gt", "<"), ("ge", "≤")) if meta.get(k) is not None), None)
    high = next(((op, meta[k]) for k, op in (("lt", "<"), ("le", "≤")) if meta.get(k) is not None), None)
    if low and high:
        return f"{low[1]:g} {low[0]} x {high[0]} {high[1]:g}"
    if low:
        return f"x {'>' if low[0] == '<' else '≥'} {low[1]:g}"
    if high:
        return f"x {high[0]} {high[1]:g}"
    return ""


if __name__ == "__main__":
    sys.exit(main())
