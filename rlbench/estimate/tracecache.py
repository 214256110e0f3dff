"""Traces kept on disk: a trace is a function of its arguments and of the code that runs it, so the
same run asked about again (the same suite on another card, `--json` after the table, a sizing
whose rank counts an earlier one traced) is read back instead of traced.

The key (`key`) is `rlbench.cache.stage_key` of the trace's arguments (suite, algorithm, model
config, depth, prompt tokens, device, decode fast-forward, prompt lengths, ranks) and a digest of
rlbench's own source files and the versions of the packages it runs with (peft's for a LoRA
policy); stage_key adds the machine's kernels. So any change to rlbench or to those packages traces
again. An entry is
`$RLBENCH_CACHE/traces/<key>/trace.json`, written whole or not at all (`cache.cached_dir`). A trace
that failed is not kept; an entry that fails its check is dropped and traced again; a cache that
cannot be written only goes unused. `rlbench estimate --no-cache` traces every run.

    found = key(args); trace = load(found) or trace_run(*args); store(found, trace)
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from rlbench.cache import cache_root, cached_dir, check_contents, is_complete, stage_key
from rlbench.environment import package_versions
from rlbench.errors import UserError
from rlbench.estimate.simulate import Trace
from rlbench.estimate.trace import Peak

KIND = "traces"
FILE = "trace.json"


@functools.cache
def source_digest() -> str:
    """SHA-256 of every Python file of the rlbench package, by path."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


@functools.cache
def _packages() -> dict[str, str | None]:
    return package_versions()


def key(args: tuple) -> str:
    """The cache key of `simulate.trace_run(*args)`."""
    suite, algo, config, depth, prompt_tokens, device, skip_decode, prompt_lengths, ranks = args
    payload = {"suite": dataclasses.asdict(suite), "algorithm": dataclasses.asdict(algo),
               "config": config.to_dict(), "depth": depth, "prompt_tokens": prompt_tokens, "device": str(device),
               "skip_decode": skip_decode, "prompt_lengths": prompt_lengths, "ranks": ranks,
               "rlbench": source_digest(), "packages": _packages()}
    return stage_key(payload)


def folder() -> Path:
    """Where the kept traces are."""
    return cache_root() / KIND


def load(found: str) -> Trace | None:
    """The trace kept under key `found`, None when there is none (or it fails its check)."""
    entry = folder() / found
    if not is_complete(entry):
        return None
    try:
        check_contents(entry)
        return _from_json(json.loads((entry / FILE).read_text()))
    except (UserError, OSError, ValueError, KeyError, TypeError):
        shutil.rmtree(entry, ignore_errors=True)
        return None


def store(found: str, trace: Trace) -> None:
    """Keep `trace` under key `found` (nothing when the cache cannot be written)."""
    text = json.dumps(_to_json(trace))
    try:
        cached_dir(KIND, found, lambda tmp: (tmp / FILE).write_text(text))
    except (UserError, OSError):
        pass


def _to_json(trace: Trace) -> dict[str, Any]:
    def peaks(found: dict[tuple, Peak]) -> list:
        return [[list(k), peak.total, peak.parts] for k, peak in found.items()]

    return {"depth": trace.depth, "roles": list(trace.roles), "end": [trace.end.total, trace.end.parts],
            "starts": peaks(trace.starts), "ends": peaks(trace.ends), "peaks": peaks(trace.peaks)}


def _from_json(document: dict[str, Any]) -> Trace:
    def peaks(rows: list) -> dict[tuple, Peak]:
        return {tuple(k): Peak(int(total), {str(n): int(v) for n, v in parts.items()}) for k, total, parts in rows}

    total, parts = document["end"]
    return Trace(int(document["depth"]), peaks(document["starts"]), peaks(document["ends"]), peaks(document["peaks"]),
                 Peak(int(total), {str(n): int(v) for n, v in parts.items()}), tuple(document["roles"]))
