"""`rlbench estimate`: from the command line's arguments to a suite, an estimate and its views."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from rich.console import Console

from rlbench.config import DTYPES, Suite, load_suite
from rlbench.errors import UserError

DEFAULT_ALGOS = "ppo,grpo,grpo_zero"
DEVICES = ("cpu", "cuda")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("suite", nargs="?", help="suite YAML file; without one, --model/--algos on the schema's defaults")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a suite field, e.g. rollout.max_new_tokens=512 (repeatable)")
    parser.add_argument("--model", help="model.name: 'embedded', shape:<name>, a config.json or a directory with one, "
                                        "or a hub name in the local cache (default: the suite's, else embedded)")
    parser.add_argument("--algos", help=f"comma-separated algorithms (or labels of the suite's); default {DEFAULT_ALGOS}")
    parser.add_argument("--dtype", help=f"model.dtype: {', '.join(DTYPES)} (default: the suite's, else bfloat16)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    parser.add_argument("--gpu-gib", type=float, metavar="N", help="answer fits / does not fit on a card of N GiB")
    parser.add_argument("--gpu", metavar="NAME", help="the same for a known card (H100-80GB, H200, A100-40GB, A100-80GB, "
                                                     "L4, A10G, RTX-4090, ...), with the smallest power-of-two rank "
                                                     "count that fits and the largest completions_per_step there")
    parser.add_argument("--ranks", type=int, metavar="N", help="per rank, every role sharded with FSDP2 over N ranks "
                                                              "(default: the suite's distributed.nproc_per_node, else 1)")
    parser.add_argument("--headroom", metavar="SETTING", help="find the largest completions_per_step, max_new_tokens "
                                                             "or group_size that fits the card")
    parser.add_argument("--prompt-tokens", type=int, metavar="N", help="prompt length to assume (default: the task's "
                                                                       "longest prompt, else model.max_prompt_tokens)")
    parser.add_argument("--device", help="trace on cpu or cuda kernels (default: cuda when present)")
    parser.add_argument("--jobs", type=int, metavar="N", help="traces side by side in N worker processes (default: "
                                                           "this machine's cores, at most 6); 1 traces in this process")
    parser.add_argument("--no-cache", action="store_true", help="trace every run again instead of reading back traces "
                                                               "of the same settings and code ($RLBENCH_CACHE/traces)")
    parser.add_argument("--exact", action="store_true", help="trace every decoder layer and decode step instead of "
                                                            "4 and 5 layers and the first and last steps (slower)")


def build_suite(args: argparse.Namespace) -> Suite:
    """The suite to estimate: the file with --set (and --model/--dtype as overrides), or the
    schema's defaults for --model, --algos and --dtype. UserError on anything invalid."""
    if args.dtype is not None and args.dtype not in DTYPES:
        raise UserError(f"--dtype: must be one of {', '.join(DTYPES)}, got '{args.dtype}'")
    shortcuts = [f"model.name={args.model}"] if args.model else []
    shortcuts += [f"model.dtype={args.dtype}"] if args.dtype else []
    names = [a.strip() for a in (args.algos or "").split(",") if a.strip()]
    if args.suite is None:
        from rlbench.catalog import ALGORITHMS

        names = names or DEFAULT_ALGOS.split(",")
        unknown = [a for a in names if a not in ALGORITHMS]
        if unknown:
            raise UserError(*[f"--algos: {ALGORITHMS.unknown_message(a)}" for a in unknown])
        raw = {"name": "estimate", "model": {"name": "embedded", "dtype": "bfloat16"},
               "algorithms": [{"name": a} for a in names], "budget": {"steps": 1}}
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "estimate.yaml"
            path.write_text(yaml.safe_dump(raw))
            return load_suite(path, shortcuts + list(args.overrides))
    if not Path(args.suite).is_file():
        raise UserError(f"suite: no such file: {args.suite}")
    suite = load_suite(args.suite, list(args.overrides) + shortcuts)
    if names:
        known = {a.label or a.name: a for a in suite.algorithms} | {a.name: a for a in suite.algorithms}
        missing = [n for n in names if n not in known]
        if missing:
            raise UserError(f"--algos: the suite has no algorithm {', '.join(map(repr, missing))}; it has "
                            f"{', '.join(a.label or a.name for a in suite.algorithms)}")
        import dataclasses

        suite = dataclasses.replace(suite, algorithms=list({id(known[n]): known[n] for n in names}.values()))
    return suite


def _precision_advice(suite: Suite, device: str) -> None:
    """measure/roofline.py's one line on bf16 for an fp32 suite on a CPU with native bf16, on stderr."""
    import torch

    from rlbench.cache import cache_root
    from rlbench.measure.roofline import precision_advice
    from rlbench.models.precision import resolve_precision

    advice = precision_advice(resolve_precision(suite.model).name, torch.device(device).type, cache_root())
    if advice:
        Console(stderr=True, soft_wrap=True).print(f"note: {advice}", markup=False, highlight=False)


@contextmanager
def trace_progress() -> Iterator[Callable[[int, int, str], None] | None]:
    """A spinner on stderr while the traces run (traces done of those started, the latest, the time
    taken), gone when they end; None where stderr is no terminal (a pipe, a log, CI)."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if not console.is_terminal:
        yield None
        return
    columns = (SpinnerColumn(), TextColumn("[bold]tracing"), TextColumn("{task.completed}/{task.total} traces"),
               TimeElapsedColumn(), TextColumn("{task.fields[info]}"))
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("tracing", total=0, info="")
        yield lambda done, started, what: progress.update(task, completed=done, total=started, info=f"latest: {what}")


def estimate_command(args: argparse.Namespace, console: Console) -> int:
    from rlbench.estimate.fit import HEADROOM_FIELDS, card_gib, headroom, limits
    from rlbench.estimate.ranks import check_ranks, suite_ranks

    started = time.perf_counter()
    if args.gpu is not None and args.gpu_gib is not None:
        raise UserError("--gpu and --gpu-gib: give one of them")
    card = card_gib(args.gpu_gib, args.gpu)
    suite = build_suite(args)
    ranks = suite_ranks(suite, args.ranks)
    check_ranks(suite, ranks)
    if args.headroom is not None:
        if args.headroom not in HEADROOM_FIELDS:
            raise UserError(f"--headroom: unknown setting '{args.headroom}'; choose one of {', '.join(HEADROOM_FIELDS)}")
        if card is None:
            raise UserError("--headroom: needs a card to fit, --gpu-gib N or --gpu NAME")
    if args.device is not None and args.device not in DEVICES:
        raise UserError(f"--device: must be cpu or cuda, got '{args.device}'")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device: cuda asked for, but this machine has no CUDA device; use --device cpu")
    if args.prompt_tokens is not None and args.prompt_tokens < 1:
        raise UserError(f"--prompt-tokens: must be at least 1, got {args.prompt_tokens}")
    if args.jobs is not None and not 1 <= args.jobs <= 256:
        raise UserError(f"--jobs: must be 1 to 256, got {args.jobs}")

    from rlbench.estimate import estimate_suite
    from rlbench.estimate.parallel import TracePool, default_jobs
    from rlbench.estimate.predict import estimate_algorithm
    from rlbench.estimate.source import context_length, longest_prompt, resolve_model
    from rlbench.estimate.view import as_json, print_estimate

    model = resolve_model(suite.model.name, suite.model.trust_remote_code)
    context = context_length(model.config)
    prompt_tokens, note = (args.prompt_tokens, "given") if args.prompt_tokens else longest_prompt(suite, model.tokenizer)
    limits(suite, context, prompt_tokens)
    with trace_progress() as listener, TracePool(args.jobs or default_jobs(), listener, keep=not args.no_cache) as pool:
        estimate = estimate_suite(suite, args.device, prompt_tokens, args.exact, model, ranks=ranks, prompt_note=note,
                                  pool=pool)
        _precision_advice(suite, estimate.device)
        import torch

        device = torch.device(estimate.device)

        def estimate_at(s: Suite, algo: object, n: int) -> object:
            return estimate_algorithm(s, algo, model.config, estimate.prompt_tokens, device, args.exact, ranks=n,
                                      pool=pool)

        found = sizing = None
        if args.headroom is not None:
            found = headroom(suite, args.headroom, card[0], lambda s, a: estimate_at(s, a, ranks), context,
                             estimate.prompt_tokens, ranks, pool)
        if card is not None and not args.headroom:
            from rlbench.estimate.sizing import size_suite

            sizing = size_suite(suite, card[0], ranks, estimate.algorithms, estimate_at, context,
                                estimate.prompt_tokens, pool)
            estimate.seconds = time.perf_counter() - started
    if pool.read:
        from rlbench.estimate.tracecache import folder

        estimate.notes.append(f"{pool.read} of {pool.read + pool.done} traces read back from {folder()} "
                              "(made before with the same settings and code; --no-cache traces them again)")
    if args.json:
        print(json.dumps(as_json(estimate, card, found, args.headroom, sizing), indent=2))
    else:
        print_estimate(estimate, console, card, found, args.headroom, sizing)
    return 1 if any(a.error for a in estimate.algorithms) else 0
