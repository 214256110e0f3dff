"""The report's JSON Schema (`schema.json`), checked on every write and every read, and its versions.

schema.json is also the reference for what a report holds: every key carries a `description`.
`schema_version` changes whenever the keys change: one added, renamed or given another meaning. A
reader reads every version listed in CHANGELOG; `load_report` renames the keys of an older report
to today's names in memory (`upgrade`) and keeps its `schema_version`, so `check` and `compare`
know which keys its schema could not have had (`metric_possible`): such a key is new, not missing.

CHANGELOG (what each version changed; readers accept all of them):
    1  the first versioned report. Keys added to it later without a version change, which a
       schema-1 report may lack: memory/<role>/master_bytes (bf16-mixed), the anonymous-memory
       figures (memory.anon, memory/<role>/anon_peak_bytes, memory/process_anon_peak_bytes,
       memory/process_anon_rise_bytes).
    2  environment: the numerical-environment fingerprint (cpu_vendor, cpu_features,
       cpu_capability, math_libraries, numeric_env, ram_bytes, gpu.compute_capability) and
       hardware_class, required. runs[].mfu_peak: the peak MFU divides by (value, compute dtype,
       measured or datasheet). Renamed in every evaluation (stages.eval_before, runs[].evals,
       runs[].accuracy.before/after/curve): eval/accuracy_stderr -> eval/accuracy_stderr_binomial
       (and eval/pass@k_stderr, eval/maj@k_stderr likewise): the key meant a binomial error there
       while the clustered one is the `stderr` of the metric eval/accuracy, which now says which it
       is in `stderr_kind`.
    Added to version 2 without a version change (a reader derives them from the per-phase figures
    every version has, so no report lacks them once read): memory/training_peak_bytes,
    memory/eval_peak_bytes, memory/training_anon_peak_bytes, memory/eval_anon_peak_bytes
    (rlbench/report/peaks.py); the top-level `smoke` flag.
    Added to version 2 without a version change, optional, and not derivable (an earlier report
    lacks them; every reader takes them as new, not missing, and none is a gated metric): per role
    and phase `steady_rise_bytes` (the largest rise over the calls after the first; null for a phase
    called once; rlbench/estimate/check.py falls back to `rise_bytes` without it); in a distributed
    run, per rank `node_rank`, `local_rank`, `host`, `phase_rise_bytes`, `phase_steady_rise_bytes`,
    and `phase_rise_bytes_max`, `phase_steady_rise_bytes_max` over ranks (readers show "-").
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from rlbench.errors import UserError
from rlbench.report.peaks import add_peak_metrics

SCHEMA_PATH = Path(__file__).with_name("schema.json")
SCHEMA_VERSION = 2
"""The version rlbench writes."""
SCHEMA_VERSIONS = (1, 2)
"""The versions rlbench reads (CHANGELOG above)."""
MAX_DEPTH = 64
"""Deepest nesting a report may have (rlbench writes 8 levels): deeper input is refused in one line
before anything walks it."""
RENAMED = {2: (("_stderr", "_stderr_binomial"),)}
"""Per version: (old suffix, new suffix) of evaluation keys renamed in it."""
LATE_IN_SCHEMA_1 = ("/master_bytes", "/anon_peak_bytes", "memory/process_anon_peak_bytes",
                    "memory/process_anon_rise_bytes")
"""Metric names (by suffix) added during schema 1 without a version change: a schema-1 report may lack them."""
METRICS_ADDED: dict[int, tuple[str, ...]] = {2: ()}
"""Per version: metric names (by suffix) first written in it; a report of an earlier version lacks them."""


@cache
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


def schema_errors(report: Any) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '(top level)'}: {e.message}"
            for e in sorted(validator.iter_errors(report), key=lambda e: list(e.absolute_path))]


def validate_report(report: Any) -> None:
    """Raise AssertionError for a report rlbench itself produced wrongly (an internal bug)."""
    errors = schema_errors(report)
    assert not errors, "report does not match schema.json:\n" + "\n".join(errors[:10])


def nesting_depth(value: Any, limit: int = MAX_DEPTH) -> int:
    """How deeply lists and objects nest in `value` (a scalar: 0), counting no further than limit + 1;
    iterative, so no input can exhaust the interpreter's stack."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        node, depth = todo.pop()
        if not isinstance(node, (dict, list)):
            continue
        deepest = max(deepest, depth)
        if depth > limit:
            return depth
        todo.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def load_report(path: str | Path) -> dict[str, Any]:
    """Read and check a report, then `upgrade` it and give it the training and evaluation peaks it
    lacks (peaks.add_peak_metrics: derived from its per-phase figures); a missing, unreadable, non-UTF-8, too deeply
    nested or non-matching file, or one of a schema_version not in SCHEMA_VERSIONS, is a UserError
    (one line, exit 2)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such report")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not a JSON report: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
                        f"offset {exc.start})") from None
    try:
        report = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not a JSON report ({exc})") from None
    except RecursionError:
        raise UserError(f"{path}: not a report: its lists and objects nest deeper than {MAX_DEPTH} levels") from None
    if nesting_depth(report) > MAX_DEPTH:
        raise UserError(f"{path}: not a report: its lists and objects nest deeper than {MAX_DEPTH} levels")
    if isinstance(report, dict) and report.get("schema_version") not in SCHEMA_VERSIONS:
        raise UserError(f"{path}: schema_version {report.get('schema_version')!r} is not one this rlbench reads "
                        f"({', '.join(map(str, SCHEMA_VERSIONS))})")
    errors = schema_errors(report)
    if errors:
        raise UserError(*[f"{path}: {e}" for e in errors[:20]])
    return add_peak_metrics(upgrade(report))


def upgrade(report: dict[str, Any]) -> dict[str, Any]:
    """Rename an older report's evaluation keys to today's (RENAMED), in place; `schema_version`
    stays what the file says."""
    version = report.get("schema_version", SCHEMA_VERSION)
    renames = [pair for v, pairs in RENAMED.items() if v > version for pair in pairs]
    if not renames:
        return report
    for evaluation in _evaluations(report):
        for key in [k for k in evaluation if k.startswith("eval/")]:
            for old, new in renames:
                if key.endswith(old) and not key.endswith(new):
                    evaluation[key.removesuffix(old) + new] = evaluation.pop(key)
    return report


def _evaluations(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every evaluation dict of a report (#/$defs/eval): the starting one, and each run's."""
    out = [(report.get("stages") or {}).get("eval_before")]
    for run in report.get("runs") or []:
        accuracy = run.get("accuracy") or {}
        out += [*(run.get("evals") or []), accuracy.get("before"), accuracy.get("after"), *(accuracy.get("curve") or [])]
    return [e for e in out if isinstance(e, dict)]


def metric_possible(report: dict[str, Any], name: str) -> bool:
    """Whether the schema `report` was written under could hold metric `name` (False for a key a
    later version added: such a key is new, not missing)."""
    version = report.get("schema_version", SCHEMA_VERSION)
    if version == 1 and name.endswith(LATE_IN_SCHEMA_1):
        return False
    return not any(v > version and suffixes and name.endswith(suffixes) for v, suffixes in METRICS_ADDED.items())
