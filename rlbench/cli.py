"""The `rlbench` command: parses, validates and dispatches; no logic of its own.

    rlbench run suites/memory.yaml                      train each algorithm under one budget, report
    rlbench validate suites/my.yaml                     every config error at once (exit 2 if any)
    rlbench ls [--params]                               algorithms, tasks, rewards, engines, probes
    rlbench compare A.json B.json                       side-by-side tables with deltas
    rlbench check NEW.json --baseline BASE.json         CI gate: exit 1 on regression
    rlbench report REPORT.json                          re-print tables, re-render plots and summary.md
    rlbench estimate --model NAME --algos ppo,grpo      static memory per role: will it fit?

Errors a user can cause print one line each and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.markup import escape

from rlbench import __version__
from rlbench.errors import UserError

EPILOG = """examples:
  rlbench run suites/quickstart.yaml
  rlbench run suites/memory.yaml --set budget.steps=5 --set seeds=[0,1]
  rlbench validate suites/my.yaml
  rlbench compare results/memory/A/report.json results/memory/B/report.json --format md
  rlbench check results/new/report.json --baseline results/baselines/ci-cpu.json --threshold memory:5%
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlbench", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Benchmark PPO, GRPO and GRPO-Zero under one budget: memory per model role, "
                    "throughput and accuracy, with JSON reports you can compare and gate in CI.")
    parser.add_argument("--version", action="version", version=f"rlbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="run a suite: every algorithm x seed under the shared budget",
                         description="Run a suite. Shared stages (SFT, reward model) are cached under "
                                     "$RLBENCH_CACHE (default ~/.cache/rlbench); each run gets its own process.")
    run.add_argument("suite", help="suite YAML file, e.g. suites/quickstart.yaml")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a suite field, validated like the file: budget.steps=5, "
                          "algorithms[0].params.lr=1e-4, seeds=[0,1] (repeatable)")
    run.add_argument("--output", metavar="DIR", help="write reports under DIR instead of the suite's `output`")

    validate = sub.add_parser("validate", help="check suite files; print every error with its field path",
                              description="Validate suite files without running them. Exit 0 when valid "
                                          "(warnings name what this machine lacks), 2 otherwise.")
    validate.add_argument("suites", nargs="+", metavar="SUITE", help="suite YAML file(s)")
    validate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                          help="overrides to validate along with the file")
    validate.add_argument("--explain", action="store_true", help="also print every field with its default and help")

    ls = sub.add_parser("ls", help="list registered algorithms, tasks, rewards, engines and probes")
    ls.add_argument("--params", action="store_true", help="also list each algorithm's params with defaults")

    compare = sub.add_parser("compare", help="compare reports: runs matched by algorithm label and seed")
    compare.add_argument("reports", nargs="+", metavar="REPORT", help="report.json files (the first is the base)")
    compare.add_argument("--format", choices=("table", "md"), default="table", help="Rich tables or Markdown")

    check = sub.add_parser("check", help="regression gate: exit 1 if REPORT regressed against the baseline",
                           description="Compare REPORT with BASELINE metric by metric. Thresholds come from the "
                                       "suite's `check:` block unless given here. Exit 0: no regression; 1: "
                                       "regression; 2: unusable input.")
    check.add_argument("report", help="the new report.json")
    check.add_argument("--baseline", required=True, help="the baseline report.json")
    check.add_argument("--threshold", action="append", default=[], metavar="AREA:LIMIT",
                       help="memory:5%%, throughput:10%% or accuracy:0.02 (relative with %%, absolute otherwise)")

    report = sub.add_parser("report", help="re-print a report's tables and re-render its plots and summary.md")
    report.add_argument("report", help="report.json")

    estimate = sub.add_parser("estimate", help="static memory per role for a model and algorithms: will it fit?")
    estimate.add_argument("--model", default="embedded", help="'embedded', a local directory or a cached hub name")
    estimate.add_argument("--algos", default="ppo,grpo,grpo_zero", help="comma-separated algorithms")
    estimate.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"))
    estimate.add_argument("--gpu-gib", type=float, default=None, help="compare against this much GPU memory")
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


def dispatch(args: argparse.Namespace, console: Console) -> int:
    if args.command == "run":
        from rlbench.runner import run_suite

        _, code = run_suite(args.suite, args.overrides, args.output, console)
        return code
    if args.command == "validate":
        return cmd_validate(args, console)
    if args.command == "ls":
        return cmd_ls(args, console)
    if args.command == "compare":
        from rlbench.report.compare import compare_command

        return compare_command(args.reports, args.format, console)
    if args.command == "check":
        from rlbench.report.check import check_command

        return check_command(args.report, args.baseline, args.threshold, console)
    if args.command == "report":
        from rlbench.report.views import report_command

        return report_command(args.report, console)
    if args.command == "estimate":
        from rlbench.estimate import estimate_command

        return estimate_command(args.model, args.algos.split(","), args.dtype, args.gpu_gib, console)
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
        console.print(f"[green]ok[/] {path}: suite '{suite.name}', {runs} run(s): "
                      + ", ".join(a.label or a.name for a in suite.algorithms))
        for warning in missing_requirements(suite):
            console.print(f"[yellow]warning:[/] this machine cannot run it yet: {escape(warning)}", soft_wrap=True)
    if args.explain:
        for path, type_name, default, help_text in field_help(Suite):
            console.print(f"[cyan]{path}[/] ({type_name}, default {default!r}): {help_text}", highlight=False)
    if errors:
        raise UserError(*errors)
    return 0


def cmd_ls(args: argparse.Namespace, console: Console) -> int:
    from rich.table import Table

    from rlbench.catalog import ALGORITHMS, REGISTRIES
    from rlbench.config import field_help

    for registry in REGISTRIES:
        table = Table(title=f"{registry.kind}s", title_justify="left", show_header=False)
        table.add_column("name", style="cyan")
        table.add_column("what it is")
        for entry in registry.entries():
            table.add_row(entry.name, entry.help)
        console.print(table)
    if args.params:
        for entry in ALGORITHMS.entries():
            table = Table(title=f"{entry.name} params", title_justify="left")
            for col in ("param", "type", "default", "help"):
                table.add_column(col)
            for path, type_name, default, help_text in field_help(entry.obj.params_cls):
                table.add_row(path, type_name, repr(default), help_text)
            console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
