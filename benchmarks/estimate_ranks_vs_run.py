"""Per-rank `rlbench estimate` against a distributed `rlbench run`, rank by rank and phase by phase.

    python benchmarks/estimate_ranks_vs_run.py [SUITE] [--set KEY=VALUE ...] [--report DIR] [--json OUT]

SUITE defaults to suites/distributed-cpu.yaml (2 gloo ranks, embedded model). The suite is run as
the estimate predicts (`rollout.ignore_eos: true`, `probe_heap: exact`, as in
benchmarks/test_estimate_vs_run.py), or `--report DIR` reads an earlier run's folder (the one
holding report.json). The estimate is made for the suite's `distributed.nproc_per_node` ranks on
the prompts the run drew. Printed per rank: static bytes per role (exact: each rank's shards),
each phase's rise above its start (held to `--tolerance` above 10 MiB) and its peak above the
rank's baseline (shown only: a rank loads gloo and FSDP2 after its baseline reading). Exit 1 when
a static figure differs or a held rise misses the tolerance.

The Qwen2 shape with the real vocabulary: `--set model.name=tests/data/qwen2-tiny/config.json`
style overrides are not needed; `--qwen2` builds a small Qwen2 config (vocabulary 151,936, the
real one; hidden 64, 2 layers) in a temporary folder and runs the suite on it as a shape model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LIKE_FOR_LIKE = ["rollout.ignore_eos=true", "probe_heap=exact"]
QWEN2_SMALL = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": 151936,
               "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
               "rope_theta": 1000000.0, "tie_word_embeddings": True, "hidden_act": "silu"}


def run_suite(suite_path: str, overrides: list[str], output: Path) -> Path:
    """`rlbench run` of the suite (nice'd: the machine is shared); the report's folder."""
    cmd = ["nice", "-n", "10", sys.executable, "-m", "rlbench", "run", suite_path, "--output", str(output)]
    for o in overrides:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"rlbench run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return sorted(output.glob("*/*/report.json"))[-1].parent


def compare_ranks_of(suite_path: str, overrides: list[str], report_dir: Path, probe: str = "cpu",
                     ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(rows, estimate JSON) of the per-rank estimate of the suite against the run in `report_dir`."""
    from rlbench.config import load_suite
    from rlbench.estimate import estimate_suite
    from rlbench.estimate.check import compare_ranks, run_prompt_lengths
    from rlbench.estimate.ranks import suite_ranks
    from rlbench.estimate.view import as_json

    suite = load_suite(suite_path, overrides)
    estimate = estimate_suite(suite, device="cpu", prompt_lengths=run_prompt_lengths(suite),
                              ranks=suite_ranks(suite, None))
    estimate_json = as_json(estimate, None, None, None)
    report = json.loads((report_dir / "report.json").read_text())
    return compare_ranks(estimate_json, report, report_dir, probe), estimate_json


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    from rlbench.estimate.check import print_rows, worst_error

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", nargs="?", default=str(ROOT / "suites" / "distributed-cpu.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--report", help="an earlier run's folder (holding report.json) instead of running")
    parser.add_argument("--qwen2", action="store_true", help="on a small Qwen2 shape with the real vocabulary")
    parser.add_argument("--output", help="keep the run's reports here (default: a temporary folder)")
    parser.add_argument("--json", help="write rows and the estimate to this file")
    parser.add_argument("--tolerance", type=float, default=0.10)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rlbench-ranks-") as tmp:
        overrides = [*LIKE_FOR_LIKE]
        if args.qwen2:
            config = Path(tmp) / "qwen2-small.json"
            config.write_text(json.dumps(QWEN2_SMALL))
            overrides.append(f"model.name=shape:{config}")
        overrides += args.overrides
        report_dir = Path(args.report) if args.report else run_suite(args.suite, overrides, Path(args.output or tmp))
        rows, estimate = compare_ranks_of(args.suite, overrides, report_dir)
    console = Console(width=160)
    print_rows(rows, console, "per rank, predicted vs measured (cpu probe); dim: not held (under 10 MiB, or a peak)")
    static_ok = all(r["predicted_bytes"] == r["measured_bytes"] for r in rows if r["what"] == "static")
    worst = worst_error(rows, "rise")
    console.print(f"ranks {estimate['settings']['ranks']}; static bytes exact: {static_ok}; worst rise error above "
                  f"10 MiB: {worst:.1%}; estimate took {estimate['seconds']} s; report {report_dir}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "estimate": estimate, "report_dir": str(report_dir)},
                                              indent=2))
    return 0 if static_ok and worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
