"""How report figures are written in tables, plots and summary.md: one place for units and names."""

from __future__ import annotations

from typing import Any

ROLE_ORDER = ("policy", "reference", "reward", "value", "rollout")


def mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.1f}"


def pct(x: float | None, se: float | None = None) -> str:
    if x is None:
        return "-"
    return f"{x:.1%}" + (f" ± {se:.1%}" if se is not None else "")


def num(x: float | None, fmt: str = "{:,.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def _value(run: dict[str, Any], name: str) -> float | None:
    entry = run.get("metrics", {}).get(name)
    return None if entry is None else entry.get("value")


ROLE_SHORT = {"policy": "pol", "reference": "ref", "reward": "rew", "value": "val", "rollout": "eng"}


def pct_pm(x: float | None, se: float | None) -> str:
    """'21.9±1.8' (percent)."""
    if x is None:
        return "-"
    return f"{x * 100:.1f}" + (f"±{se * 100:.1f}" if se is not None else "")


def primary_probe(report: dict[str, Any]) -> str:
    for run in report["runs"]:
        memory = run.get("memory")
        if memory:
            return memory["primary"]
    return "cpu"
