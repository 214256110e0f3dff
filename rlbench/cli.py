"""The `rlbench` command: parses, validates and dispatches; no logic of its own.

    rlbench run suites/memory.yaml                      train each algorithm under one budget, report
    rlbench run suites/memory.yaml --smoke              the same runs for 2 steps, 32 problems: try it first
    rlbench validate suites/my.yaml [--json]            every config error at once (exit 2 if any)
    rlbench ls [--params] [--json]                      algorithms, tasks, rewards, engines, probes
    rlbench compare A.json B.json [--format md|json]    side-by-side tables with deltas
    rlbench check NEW.json --baseline BASE.json         CI gate: exit 1 on regression (--format json|md|junit)
    rlbench report REPORT.json [--output DIR]           re-print tables, re-render plots and summary.md
    rlbench estimate SUITE [--gpu h100]                 each phase's peak per role on fake tensors: will it fit?
    rlbench export REPORT.json --to tensorboard         per-step metrics for TensorBoard or W&B

Errors a user can cause print one line each on stderr and exit 2, never a traceback; warnings go
to stderr too, so stdout carries only tables and documents. Every command's --help ends with its
exit codes (EXIT_CODES).
"""

from __future__ import annotations

import argparse
import errno
import sys
import textwrap

from rich.console import Console
from rich.markup import escape

from rlbench import __version__
from rlbench.config.derived import SMOKE_EVAL_SIZE, SMOKE_STEPS
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


EXIT_CODES: dict[str, dict[int, str]] = {
    "run": {0: "every run ended ok", 1: "a run did not end ok (failed, oom, timeout); the report says why",
            2: "unusable input: an invalid suite, a missing file, an unwritable --output or full disk",
            130: "interrupted (Ctrl-C or SIGTERM); the report keeps what finished, --resume goes on"},
    "validate": {0: "every suite is valid (warnings name what this machine lacks)",
                 2: "a suite is invalid: every error is printed with its field path"},
    "ls": {0: "always"},
    "compare": {0: "the reports were compared, whatever changed (compare is not a gate: see check)",
                2: "unusable input: a missing or unreadable report, fewer than two, no run in common, "
                   "impossible figures or other units"},
    "check": {0: "no regression", 1: "a regression (a run missing or not ok, a gated metric worse beyond its "
                                     "threshold, missing or not a number, a changed work count)",
              2: "unusable input: a missing or unreadable report, other settings (without --allow-mismatch), "
                 "other hardware (with --require-same-hardware), a smoke-run baseline, no run in common, a bad threshold, "
                 "impossible figures, an unwritable --output"},
    "report": {0: "printed and written", 2: "a missing or unreadable report, or an unwritable --output"},
    "estimate": {0: "every algorithm estimated", 1: "an algorithm's estimate failed (its error is printed)",
                 2: "unusable input: an invalid suite or option, an unknown model or GPU"},
    "export": {0: "written", 2: "a missing or unreadable report, or the writer's extra is not installed"},
}
"""Every command's exit codes, shown in its --help; 130 also ends any command interrupted by Ctrl-C."""


def _command(sub: argparse._SubParsersAction, name: str, summary: str, description: str,
             examples: list[str]) -> argparse.ArgumentParser:
    """A subcommand whose --help opens with what it does and ends with examples to copy and its exit codes."""
    return sub.add_parser(name, help=summary, description=description,
                          formatter_class=argparse.RawDescriptionHelpFormatter,
                          epilog="example" + ("s" if len(examples) > 1 else "") + ":\n"
                                 + "\n".join(f"  {e}" for e in examples) + "\n\n" + _exit_codes_text(name))


def _exit_codes_text(name: str) -> str:
    codes = {**EXIT_CODES[name], 130: EXIT_CODES[name].get(130, "interrupted (Ctrl-C)")}
    return "exit codes:\n" + "\n".join(
        textwrap.fill(text, 96, initial_indent=f"  {code:<3}  ", subsequent_indent=" " * 7, break_on_hyphens=False)
        for code, text in codes.items())


def _quiet(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", help=f"print only errors and {what}")


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
        "Writes report.json, each run's steps.jsonl, memory_by_role.png, curves.png, tradeoffs.png and\n"
        "summary.md under <output>/<suite name>/<UTC time>/ and prints the tables.\n"
        "With --resume, an earlier run of a suite is finished in its own folder: runs that ended ok\n"
        "are kept, the others run again, and the report's `resumed` list says which.",
        ["rlbench run suites/quickstart.yaml",
         "rlbench run suites/accuracy.yaml --smoke   # every run for 2 steps, 32 problems: try a suite in seconds",
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
    run.add_argument("--smoke", action="store_true",
                     help=f"try the suite: every run stops after {SMOKE_STEPS} RL steps and is evaluated on "
                          f"{SMOKE_EVAL_SIZE} held-out problems (the cached stages as written, so a smoke run "
                          "warms the caches); the report is marked as a smoke run and check refuses it as a "
                          "baseline")
    _quiet(run, "one line: the report's path and how many runs ended ok (no progress, no tables)")

    validate = _command(
        sub, "validate", "check suite files; print every error with its field path",
        "Validate suite files without running them: every error at once, each with its field path.\n"
        "Warnings (what this machine lacks to run a suite) and errors go to stderr.",
        ["rlbench validate suites/memory.yaml", "rlbench validate suites/*.yaml --set budget.steps=5",
         "rlbench validate suites/quickstart.yaml --explain   # every field, its default and help",
         "rlbench validate suites/*.yaml --json > validation.json"])
    validate.add_argument("suites", nargs="+", metavar="SUITE", help="suite YAML file(s)")
    validate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                          help="overrides to validate along with the file")
    validate.add_argument("--explain", action="store_true", help="also print every field with its default and help")
    validate.add_argument("--json", action="store_true",
                          help="one JSON document on stdout: each suite's validity, runs, warnings and errors "
                               "(with --explain, every field)")
    _quiet(validate, "one line when every suite is valid")

    ls = _command(
        sub, "ls", "list registered algorithms, tasks, rewards, engines and probes",
        "List what a suite may name: algorithms, tasks, rewards, rollout engines and memory probes,\n"
        "each with one line on what it is. With --params, every algorithm parameter a suite may set\n"
        "under algorithms[].params, with its type, default, allowed values and help.",
        ["rlbench ls", "rlbench ls --params", "rlbench ls --params --json"])
    ls.add_argument("--params", action="store_true",
                    help="also list each algorithm's params: type, default, allowed values (choices, bounds)")
    ls.add_argument("--json", action="store_true", help="one JSON document on stdout instead of tables")

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
         "rlbench compare A/report.json B/report.json --all --format md > comparison.md",
         "rlbench compare A/report.json B/report.json --changed --format json > comparison.json"])
    compare.add_argument("reports", nargs="+", metavar="REPORT", help="report.json files (the first is the base)")
    compare.add_argument("--format", choices=("table", "md", "json"), default="table",
                         help="Rich tables (warnings to stderr), Markdown, or JSON: every shown row's values and "
                              "changes as numbers, with the labels check gives them")
    compare.add_argument("--changed", action="store_true",
                         help="only metrics whose change exceeds noise and the base suite's threshold")
    compare.add_argument("--metrics", action="append", default=[], metavar="GLOB",
                         help="only metrics whose name matches, e.g. 'memory/*', 'time/*_s', eval/accuracy "
                              "(repeatable or comma-separated)")
    compare.add_argument("--all", action="store_true", help="every metric, one table per area")
    _quiet(compare, "the one-line count of what changed beyond noise or threshold")

    check = _command(
        sub, "check", "regression gate: exit 1 if REPORT regressed against the baseline",
        "Compare REPORT with BASELINE metric by metric. Thresholds come from the baseline's suite (its\n"
        "`check:` block) unless given here, never from REPORT. Reports run with different settings (model,\n"
        "task, budget, rollout, eval, seeds, algorithm params; all listed) are refused unless\n"
        "--allow-mismatch (then listed as a warning, on stderr). Memory peaks are gated on anonymous memory\n"
        "(RssAnon, what the code allocates) where both reports have it, on total RSS otherwise.\n"
        "Static bytes and the work counts the settings fix are gated against any baseline; times,\n"
        "throughput, memory peaks and accuracy only against one of the same hardware class (and torch\n"
        "threads), else listed as not comparable: hardware differs (exit 2 with --require-same-hardware).",
        ["rlbench check results/ci/<time>/report.json --baseline results/baselines/cpu-amd-epyc-avx2.json",
         "rlbench check new.json --baseline base.json --threshold memory:5% --threshold accuracy:0.02",
         "rlbench check new.json --baseline base.json --gate-memory total",
         "rlbench check new.json --baseline base.json --format junit --output rlbench-check.xml"])
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
    check.add_argument("--format", choices=("table", "json", "md", "junit"), default="table",
                       help="table (Rich, for people), json (every gated metric of every run with its verdict), md "
                            "(for a pull-request comment) or junit (XML for GitHub and GitLab test reporters: a test "
                            "case per gated metric per run, failures for regressions, skipped with the reason)")
    check.add_argument("--output", metavar="FILE",
                       help="write the --format output to FILE (stdout then shows the tables, or the verdict alone "
                            "with --format table or --quiet); default: stdout")
    _quiet(check, "the one-line verdict")

    report = _command(
        sub, "report", "re-print a report's tables and re-render its plots and summary.md",
        "Re-print the memory and summary tables of a saved report, and re-render memory_by_role.png,\n"
        "curves.png, tradeoffs.png and summary.md next to it or in --output DIR (after an upgrade, or for\n"
        "a report copied elsewhere: curves need each run's steps.jsonl under the report's directory).",
        ["rlbench report results/quickstart/<time>/report.json",
         "rlbench report results/quickstart/<time>/report.json --output /tmp/figures"])
    report.add_argument("report", help="report.json")
    report.add_argument("--output", metavar="DIR",
                        help="write the plots and summary.md to DIR (created if need be) instead of beside the report")

    estimate = _command(
        sub, "estimate", "each phase's peak memory per role and kind, on fake tensors: will it fit?",
        "Run each algorithm's real loop (loading, generation, scoring, log-probs, values, the update\n"
        "with AdamW) on fake tensors under PyTorch's MemTracker: no weight is loaded, nothing is\n"
        "downloaded. Every phase's predicted peak by role and kind (weights, gradients, optimizer\n"
        "state, activations, logits, KV cache), worst case: every completion runs to max_new_tokens.\n"
        "Per rank with --ranks N or a suite's distributed block: every role sharded with FSDP2.",
        ["rlbench estimate --model shape:qwen2.5-7b --gpu H100-80GB   # fits? fewest GPUs? largest step?",
         "rlbench estimate suites/distributed-cpu.yaml --json         # per rank, 2 ranks",
         "rlbench estimate suites/gpu-memory.yaml --set model.name=shape:qwen2.5-0.5b --gpu h100",
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
        return dispatch(args, console, Console(stderr=True, soft_wrap=True))  # a warning is one line, as typed
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


def dispatch(args: argparse.Namespace, console: Console, err: Console | None = None) -> int:
    """Run the command `args` names; tables and documents to `console`, warnings to `err` (stderr)."""
    err = err or Console(stderr=True, soft_wrap=True)
    quiet = getattr(args, "quiet", False)
    if args.command == "run":
        from rlbench.report.export import export_command, require
        from rlbench.report.views import run_verdict
        from rlbench.runner import run_suite

        if (args.suite is None) == (args.resume is None):
            raise UserError("run: give a suite file, or --resume RESULTS_DIR (not both)")
        if args.resume is not None and args.smoke:
            raise UserError("--resume: --smoke does not apply; the resumed suite runs as it was (its "
                            "suite.resolved.yaml) in its own folder")
        if args.resume is not None and (args.overrides or args.output):
            raise UserError("--resume: --set and --output do not apply; the resumed suite runs as it was "
                            "(its suite.resolved.yaml) in its own folder")
        require(args.log_to)  # a missing writer is said before the runs, not after
        shown = Console(quiet=True) if quiet else console
        if args.resume is not None:
            report_path, code = run_suite(None, [], None, shown, resume=args.resume)
        else:
            smoke = {"smoke": True} if args.smoke else {}  # as resume=: a runner without the option still runs
            report_path, code = run_suite(args.suite, args.overrides, args.output, shown, **smoke)
        if args.log_to:
            export_command(str(report_path), args.log_to, shown)
        if quiet:
            console.print(run_verdict(report_path), markup=False, highlight=False, soft_wrap=True)
        return code
    if args.command == "validate":
        from rlbench.commands import validate_command

        return validate_command(args.suites, args.overrides, console, err, explain=args.explain, as_json=args.json,
                                quiet=quiet)
    if args.command == "ls":
        from rlbench.commands import ls_command

        return ls_command(console, params=args.params, as_json=args.json)
    if args.command == "compare":
        from rlbench.report.compare import Selection, compare_command

        globs = tuple(g.strip() for text in args.metrics for g in text.split(",") if g.strip())
        return compare_command(args.reports, args.format, console,
                               Selection(all=args.all, metrics=globs, changed=args.changed), quiet=quiet, err=err)
    if args.command == "check":
        from rlbench.report.check import check_command

        return check_command(args.report, args.baseline, args.threshold, console,
                             allow_mismatch=args.allow_mismatch, gate_memory=args.gate_memory,
                             require_same_hardware=args.require_same_hardware, fmt=args.format, output=args.output,
                             quiet=quiet, err=err)
    if args.command == "report":
        from rlbench.report.views import report_command

        return report_command(args.report, console, output=args.output)
    if args.command == "estimate":
        from rlbench.estimate.command import estimate_command

        return estimate_command(args, console)
    if args.command == "export":
        from rlbench.report.export import export_command

        return export_command(args.report, args.targets, console)
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
