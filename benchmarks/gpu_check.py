"""GPU calibration: the gpu-marked tests, then `rlbench estimate` against `rlbench run` on real shapes.

    python benchmarks/gpu_check.py                      # or: make gpu-check
    python benchmarks/gpu_check.py --device cpu --models /path/to/tiny --set rollout.max_new_tokens=8

For a machine with an NVIDIA GPU, torch and transformers (no vLLM, no hub needed):

1. `pytest -m gpu tests/gpu` (tests that need vLLM or the hub skip themselves);
2. for each model (default: the 0.5B and 1.5B Qwen2.5 shapes), suites/gpu-memory.yaml with the hf
   engine, the synthetic task, bf16-mixed precision where this rlbench has it, 2 steps, fixed-length
   completions (`rollout.ignore_eos`) and a short eval, run with the `auto` probe (nvml and
   torch_cuda), and estimated on fake tensors (traced on the same device's kernels) with the prompts
   that run drew;
3. one JSON (`--output`, default gpu_check.json): the tests' outcome and, per model, the estimate,
   and for every probe the rows predicted vs measured per phase and role (static bytes, each
   phase's rise above its start and its peak; torch_cuda peaks are the allocator's absolute
   figures, as the estimate's are), plus what NVML saw beyond torch's tensors (the device
   overhead `rlbench.estimate.fit` allows for).

`--device cpu` runs the same logic on the CPU with the cpu probe (tested in tests/test_estimate.py
on a tiny config), so the script is checked where no GPU is. Meant to finish in under 8 minutes
on one H100/H200.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "suites" / "gpu-memory.yaml"
MODELS = ("shape:qwen2.5-0.5b", "shape:qwen2.5-1.5b")
OVERRIDES = ("rollout.engine=hf", "task.name=synthetic", "task.path=null", "budget.steps=2", "eval.size=32",
             "eval.batch_size=32", "model.sft.steps=0", "seeds=[0]",
             "rollout.ignore_eos=true")  # every completion to max_new_tokens: the shapes the estimate traces


def run_gpu_tests(timeout: int) -> dict[str, Any]:
    """`pytest -m gpu tests/gpu`: return code and pytest's summary line."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "tests/gpu", "-p", "no:cacheprovider"],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return {"returncode": proc.returncode, "summary": lines[-1] if lines else proc.stderr[-500:],
            "seconds": round(time.perf_counter() - start, 1)}


def suite_overrides(model: str, device: str, extra: list[str]) -> list[str]:
    """The overrides that turn the memory suite into this check's run of `model`."""
    from rlbench.config import ModelConfig

    overrides = [*OVERRIDES, f"model.name={model}", f"probe={'auto' if device == 'cuda' else 'cpu'}"]
    if device != "cuda":
        overrides.append("probe_heap=exact")  # the cpu probe reads live tensors, not glibc's kept blocks
    dtypes = [o.split("=", 1)[1] for o in extra if o.startswith("model.dtype=")]
    if "precision" in {f.name for f in dataclasses.fields(ModelConfig)} and dtypes[-1:] in ([], ["bfloat16"]):
        overrides.append("model.precision=bf16-mixed")  # where this rlbench has it, and the dtype is bf16
    return overrides + list(extra)


def device_overhead(report: dict[str, Any]) -> dict[str, Any]:
    """Per run, NVML's process peak less torch_cuda's allocated peak at the same phase: the CUDA
    context and the allocator's slack, which the estimate does not trace."""
    out = {}
    for run in report["runs"]:
        gaps = []
        for entry in run.get("roles", {}).values():
            for phase in entry.get("phases", {}).values():
                peaks = phase["peak_bytes"]
                if peaks.get("nvml") and peaks.get("torch_cuda"):
                    gaps.append(peaks["nvml"] - peaks["torch_cuda"])
        if gaps:
            out[run.get("label") or run["algorithm"]] = {"min_bytes": min(gaps), "max_bytes": max(gaps)}
    return out


def check_model(model: str, device: str, extra: list[str], workdir: Path) -> dict[str, Any]:
    from rlbench.config import load_suite
    from rlbench.estimate import estimate_suite
    from rlbench.estimate.check import compare, run_prompt_lengths, worst_error
    from rlbench.estimate.view import as_json

    overrides = suite_overrides(model, device, extra)
    suite = load_suite(SUITE, overrides)
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "rlbench", "run", str(SUITE), "--output", str(workdir)]
    for o in overrides:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    run_seconds = time.perf_counter() - start
    reports = sorted(workdir.glob("*/*/report.json"))
    if proc.returncode != 0 or not reports:
        return {"model": model, "error": (proc.stdout[-2000:] + proc.stderr[-2000:]), "overrides": overrides}
    report = json.loads(reports[-1].read_text())
    estimate = as_json(estimate_suite(suite, device=device, prompt_lengths=run_prompt_lengths(suite)), None, None, None)
    probes = sorted({p for run in report["runs"] for e in run.get("roles", {}).values()
                     for ph in e.get("phases", {}).values() for p in ph["peak_bytes"]})
    rows = {probe: compare(estimate, report, probe) for probe in probes}
    return {
        "model": model, "overrides": overrides, "run_seconds": round(run_seconds, 1),
        "estimate_seconds": estimate["seconds"], "estimate": estimate, "rows": rows,
        "worst_rise_error": {p: worst_error(r, "rise") for p, r in rows.items()},
        "worst_peak_error": {p: worst_error(r, "peak") for p, r in rows.items()},
        "static_exact": all(r["predicted_bytes"] == r["measured_bytes"] for r in next(iter(rows.values()), [])
                            if r["what"] == "static"),
        "device_overhead": device_overhead(report),
        "runs": {run.get("label") or run["algorithm"]: {"status": run["status"], "error": run.get("error")}
                 for run in report["runs"]},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda when present")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated model names")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="more suite overrides")
    parser.add_argument("--output", default="gpu_check.json")
    parser.add_argument("--no-tests", action="store_true", help="skip the gpu-marked tests")
    parser.add_argument("--tests-timeout", type=int, default=240)
    args = parser.parse_args(argv)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; use --device cpu", file=sys.stderr)
        return 2
    start = time.perf_counter()
    result: dict[str, Any] = {"device": device, "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
                              "torch": torch.__version__, "models": []}
    if not args.no_tests:
        result["tests"] = run_gpu_tests(args.tests_timeout)
        print(f"gpu tests: {result['tests']['summary']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="rlbench-gpu-check-") as tmp:
        for i, model in enumerate(m.strip() for m in args.models.split(",") if m.strip()):
            checked = check_model(model, device, args.overrides, Path(tmp) / str(i))
            result["models"].append(checked)
            if "error" in checked:
                print(f"{model}: run failed: {checked['error'][-300:]}", flush=True)
                continue
            print(f"{model}: run {checked['run_seconds']} s, estimate {checked['estimate_seconds']} s, static exact "
                  f"{checked['static_exact']}, worst rise error {checked['worst_rise_error']}, worst peak error "
                  f"{checked['worst_peak_error']}", flush=True)
    result["seconds"] = round(time.perf_counter() - start, 1)
    Path(args.output).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.output} ({result['seconds']} s)")
    failed = any("error" in m for m in result["models"]) or result.get("tests", {}).get("returncode", 0) not in (0, 5)
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
