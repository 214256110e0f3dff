"""What differs between the settings two reports were run with: pure functions on report dicts.

    setting_differences(new, base)       suite settings that make the figures incomparable
    environment_differences(new, base)   the machine and library versions, for information

Two reports compare like with like only when their runs had the same model (name, dtype,
precision, SFT, reward model, LoRA, ...), task, budget, rollout, evaluation, seeds and memory
probe, and each run matched by label had the same algorithm settings (algorithm, rewards,
params). `rlbench check` refuses a pair whose settings differ unless told `--allow-mismatch`;
`rlbench compare` always proceeds and lists them. Settings are read from each report's `suite`
block, flattened to dotted paths (`model.sft.steps`, `algorithms[ppo_rules].params.lr`). A
setting recorded in one report only (an older report written before the setting existed) is not
a difference: nothing says what the older run used. The suite's name, description, output folder
and `check:` block say nothing about the runs and are not compared.

Environment differences (hardware class, library versions, Python, CPU model, features and
kernels, threads, GPU, OS) move memory and speed figures too, but are expected between machines and
over time: they are listed as information, never a reason to refuse. Which figures another
hardware class makes incomparable is rlbench/report/machine.py's business (`check` lists those as
not comparable).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SUITE_SETTINGS = ("model", "task", "budget", "rollout", "eval", "seeds", "probe", "probe_period_ms", "probe_heap",
                  "threads", "distributed")
"""Top-level keys of a report's `suite` block that shape every run's figures."""

ENVIRONMENT_KEYS = ("hardware_class", "packages", "python", "os", "cpu", "cpu_vendor", "cpu_features", "cpu_capability",
                    "math_libraries", "numeric_env", "cpu_cores", "torch_threads", "ram_bytes", "gpu")
"""Keys of a report's `environment` block listed when they differ (not git or hostname)."""


@dataclass(frozen=True)
class Difference:
    """One setting with different values in the two reports."""

    setting: str  # dotted path: model.sft.steps, algorithms[ppo_rules].params.lr, packages.torch
    base: Any
    new: Any

    def describe(self, base_name: str = "the baseline", new_name: str = "the new report") -> str:
        return f"{self.setting}: {_text(self.base)} in {base_name}, {_text(self.new)} in {new_name}"


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{'a.b': 1, 'c': [0, 1]} from {'a': {'b': 1}, 'c': [0, 1]}: nested mappings become dotted paths,
    lists and scalars are leaves. An empty mapping is a leaf (so {} against None differs)."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _differences(new: dict[str, Any], base: dict[str, Any], prefix: str = "") -> list[Difference]:
    """Leaves present in both flattenings whose values differ, in the base's order; then a block
    that is filled on one side and null (or empty) on the other, as a whole (`model.lora`)."""
    flat_new, flat_base = flatten(new, prefix), flatten(base, prefix)
    out = [Difference(path, value, flat_new[path]) for path, value in flat_base.items()
           if path in flat_new and flat_new[path] != value]
    for path in [*flat_base, *flat_new]:
        if path in flat_base and path in flat_new:
            continue
        side, other = (flat_base, flat_new) if path in flat_base else (flat_new, flat_base)
        parent = _leaf_ancestor(path, other)
        if parent is None:
            continue  # recorded on one side only: not a difference
        block = {p[len(parent) + 1:]: v for p, v in side.items() if p.startswith(parent + ".")}
        diff = Difference(parent, block, other[parent]) if side is flat_base else Difference(parent, other[parent], block)
        if diff not in out:
            out.append(diff)
    return out


def _leaf_ancestor(path: str, flat: dict[str, Any]) -> str | None:
    """The leaf of `flat` that is an ancestor of `path` (a block that is null or empty there)."""
    parts = path.split(".")
    for i in range(len(parts) - 1, 0, -1):
        candidate = ".".join(parts[:i])
        if candidate in flat:
            return candidate
    return None


def setting_differences(new: dict[str, Any], base: dict[str, Any]) -> list[Difference]:
    """Suite settings that differ between two reports: SUITE_SETTINGS, then each algorithm that
    both suites have (matched by label, as runs are)."""
    new_suite, base_suite = new.get("suite") or {}, base.get("suite") or {}
    out = []
    for key in SUITE_SETTINGS:
        if key in new_suite and key in base_suite:
            out += _differences({key: new_suite[key]}, {key: base_suite[key]})
    new_algos = {a.get("label") or a.get("name"): a for a in new_suite.get("algorithms") or []}
    for algo in base_suite.get("algorithms") or []:
        label = algo.get("label") or algo.get("name")
        if label in new_algos:
            settings = {k: v for k, v in algo.items() if k != "label"}
            new_settings = {k: v for k, v in new_algos[label].items() if k != "label"}
            out += _differences(new_settings, settings, f"algorithms[{label}]")
    return out


def environment_differences(new: dict[str, Any], base: dict[str, Any]) -> list[Difference]:
    """Machine and library differences (ENVIRONMENT_KEYS); the GPU by name."""
    ne, be = new.get("environment") or {}, base.get("environment") or {}
    pick = {"gpu": lambda env: (env.get("gpu") or {}).get("name")}
    return _differences({k: pick[k](ne) if k in pick else ne.get(k) for k in ENVIRONMENT_KEYS if k in ne},
                        {k: pick[k](be) if k in pick else be.get(k) for k in ENVIRONMENT_KEYS if k in be})


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value)
    return str(value)
