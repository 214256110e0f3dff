"""Metric names, directions and units. Every number in a report's `metrics` carries these.

Names carry a prefix that says what they are: `memory/policy/peak_bytes`, `time/generate_s`,
`throughput/gen_tokens_per_s`, `eval/accuracy`. The direction (`higher_is_better`) is decided
here once, by prefix, so `compare` colours arrows and `check` gates regressions the same way.
"""

from __future__ import annotations

from typing import Any

# prefix -> (higher_is_better, unit); the longest matching prefix wins. None: no better direction.
DIRECTIONS: dict[str, tuple[bool | None, str]] = {
    "memory/": (False, "bytes"),
    "time/": (False, "s"),
    "throughput/": (True, "1/s"),
    "throughput/mfu": (True, "fraction"),
    "eval/": (True, "fraction"),
    "eval/completion_length": (None, "tokens"),
    "eval/truncation_rate": (False, "fraction"),
    "eval/size": (None, "problems"),
    "reward/": (True, "reward"),
    "reward/std": (None, "reward"),
    "gold/": (True, "fraction"),
    "learning/": (None, ""),
    "learning/zero_variance_groups": (False, "fraction"),
    "learning/truncation_rate": (False, "fraction"),
    "kl/": (None, "nats"),
    "loss/": (None, ""),
    "reward_model/": (True, "fraction"),
}


def direction(name: str) -> tuple[bool | None, str]:
    best = max((p for p in DIRECTIONS if name.startswith(p)), key=len, default=None)
    return DIRECTIONS[best] if best else (None, "")


def metric(name: str, value: float | int | None, stderr: float | None = None, probe: str | None = None,
           stderr_kind: str | None = None) -> dict[str, Any]:
    """One report metric: its value with direction, unit and (where known) standard error, how that
    error was computed ('binomial', 'clustered by arithmetic chain', ...) and probe."""
    higher, unit = direction(name)
    out: dict[str, Any] = {"value": value, "higher_is_better": higher, "unit": unit}
    if stderr is not None:
        out["stderr"] = stderr
        if stderr_kind is not None:
            out["stderr_kind"] = stderr_kind
    if probe is not None:
        out["probe"] = probe
    return out


def area(name: str) -> str:
    """The report area a metric belongs to: memory, throughput, accuracy or learning."""
    if name.startswith("memory/"):
        return "memory"
    if name.startswith(("time/", "throughput/")):
        return "throughput"
    if name.startswith(("eval/", "gold/")):
        return "accuracy"
    return "learning"
