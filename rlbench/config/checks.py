"""Checks that span fields or need the catalog: known names, labels, group sizes, budgets.

What the checks use of an algorithm (from `rlbench.catalog`, never by constructing it):
  params_cls       its hyper-parameters, a dataclass with the same `f(...)` metadata, whose
                   `completions_per_prompt(default)` is its group-size rule (`derived.step_shape`)
  default_reward   the reward source when `reward` is not set; an algorithm whose default is
                   "rules" holds no reward model (GRPO-Zero): rules only
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any

from rlbench.config.accuracy_checks import check_accuracy_settings
from rlbench.config.derived import step_shape
from rlbench.config.model_source import model_positions
from rlbench.config.schema import (
    BUDGET_LIMITS,
    PRECISION_MODES,
    REWARD_SOURCES,
    AlgorithmConfig,
    CheckConfig,
    RewardSource,
    Suite,
)
from rlbench.config.typed import _INVALID, Errors, _build, _constraint_problem, parse_threshold
from rlbench.errors import UserError

NAME_MAX_CHARS = 64
SAFE_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{NAME_MAX_CHARS - 1}}}")
# torch seeds a generator with any integer below 2**64; runs derive further seeds from theirs
# (seed * 1_000_003 + step for sampling), so seeds stay below 2**32 to leave that room.
SEED_RANGE = (0, 2**32 - 1)
MAX_THREADS = 4096  # the largest machines have about 1,000 cores; 100,000 threads crash the OpenMP runtime


def check_suite(suite: Suite, errors: Errors) -> Suite:
    """Checks that span fields or need the registries. Fields that already failed are skipped, so
    one mistake gives one message. Returns the suite with labels, rewards and params resolved."""

    def ok(path: str) -> bool:
        return not any(w == path or w.startswith((path + ".", path + "[")) for w, _ in errors)

    algorithms = [resolve_defaults(_check_algorithm(i, alg, ok, errors)) for i, alg in enumerate(suite.algorithms)]
    if ok("algorithms") and not suite.algorithms:
        known = ", ".join(registered("algorithm"))
        errors.append(("algorithms", "list at least one algorithm" + (f" (known: {known})" if known else "")))
    _check_labels(algorithms, errors)
    _check_groups(suite, algorithms, ok, errors)
    _check_distributed(suite, algorithms, ok, errors)
    check_accuracy_settings(dataclasses.replace(suite, algorithms=algorithms), ok, errors)

    if ok("budget") and all(limit is None for limit in dataclasses.astuple(suite.budget)):
        errors.append(("budget", f"set at least one of {', '.join(BUDGET_LIMITS)}"))
    for kind, path, name in (("task", "task.name", suite.task.name),
                             ("engine", "rollout.engine", suite.rollout.engine),
                             ("probe", "probe", suite.probe)):
        if ok(path):
            _check_name(kind, name, path, errors)
    precision, dtype = suite.model.precision, suite.model.dtype
    needs = PRECISION_MODES[precision].dtype if precision in PRECISION_MODES else None
    if ok("model.precision") and ok("model.dtype") and needs and dtype != needs:
        errors.append(("model.precision", f"{precision} needs model.dtype {needs}, got {dtype} "
                                          "(or set precision: auto)"))
    if ok("task.min_steps") and ok("task.max_steps") and suite.task.min_steps > suite.task.max_steps:
        errors.append(("task.min_steps", f"must be <= task.max_steps ({suite.task.max_steps}), "
                                         f"got {suite.task.min_steps}"))
    if ok("name"):
        problem = path_component_problem(suite.name)
        if problem:
            errors.append(("name", problem))
    if ok("seeds"):
        _check_seeds(suite.seeds, errors)
    _check_model(suite, ok, errors)
    if ok("threads") and suite.threads is not None and suite.threads > MAX_THREADS:
        errors.append(("threads", f"at most {MAX_THREADS} (more torch threads than any machine has cores cannot "
                                  f"start; leave it unset for all cores), got {suite.threads}"))
    for fld in dataclasses.fields(CheckConfig):
        path = f"check.{fld.name}"
        if ok(path):
            try:
                parse_threshold(getattr(suite.check, fld.name))
            except UserError as err:
                errors.append((path, str(err)))
    return dataclasses.replace(suite, algorithms=algorithms)


def _check_model(suite: Suite, ok: Callable[[str], bool], errors: Errors) -> None:
    """model.name names something that exists (a shape that can be built, a directory, or a hub
    id), and a completion fits the model's positions with room for its prompt."""
    if not ok("model.name"):
        return
    try:
        positions = model_positions(suite.model.name)
    except UserError as err:
        errors.extend(("model.name", m.removeprefix("model.name: ")) for m in err.messages)
        return
    if positions and ok("rollout.max_new_tokens") and suite.rollout.max_new_tokens >= positions:
        errors.append(("rollout.max_new_tokens",
                       f"{suite.rollout.max_new_tokens} tokens do not fit the model's {positions} positions "
                       f"(max_position_embeddings of {suite.model.name}), which also hold the prompt; use fewer "
                       f"than {positions} minus the longest prompt"))


def _check_algorithm(i: int, alg: AlgorithmConfig, ok: Callable[[str], bool], errors: Errors) -> AlgorithmConfig:
    path = f"algorithms[{i}]"
    known = registered("algorithm")
    if not ok(f"{path}.name") or not known:
        return alg
    if alg.name not in known:
        errors.append((f"{path}.name", _registry("algorithm").unknown_message(alg.name)))
        return alg
    entry = _registry("algorithm").get(alg.name)
    if ok(f"{path}.params"):
        params = _build(entry.params_cls, alg.params, f"{path}.params", errors)
        if params is not _INVALID:  # keep the keys the user gave, with their converted values
            alg = dataclasses.replace(alg, params={k: getattr(params, k) for k in alg.params if hasattr(params, k)})
    sources = _reward_sources(entry)
    if ok(f"{path}.reward") and alg.reward is not None and alg.reward not in sources:
        errors.append((f"{path}.reward", f"must be {' or '.join(sources)} for {alg.name}, got {alg.reward!r}"))
        return alg
    alg = resolve_defaults(alg)
    if ok(f"{path}.rewards") and alg.reward in ("rules", "both"):
        if not alg.rewards:
            errors.append((f"{path}.rewards", f"name at least one rule reward when reward is {alg.reward}"))
        for name in alg.rewards:
            _check_name("reward", name, f"{path}.rewards.{name}", errors)
    return alg


def path_component_problem(text: str) -> str | None:
    """Why `text` cannot name a directory under the output root (None when it can).

    Suite names and labels become directory names (`<output>/<name>/<stamp>/runs/<label>-seed<N>`):
    letters, digits, '.', '_' and '-', starting with a letter or digit, at most NAME_MAX_CHARS; so
    no '/', '..', absolute path, hidden name or terminal markup, and no name too long for the disk."""
    if SAFE_NAME.fullmatch(text):
        return None
    shown = text if len(text) <= 40 else text[:40] + "..."
    if len(text) > NAME_MAX_CHARS:
        return f"at most {NAME_MAX_CHARS} characters, got {len(text)} ({shown!r})"
    return (f"use letters, digits, '.', '_' and '-' only, starting with a letter or digit "
            f"(it names a directory); got {shown!r}")


def _check_seeds(seeds: list[int], errors: Errors) -> None:
    """Seeds are unique (checked in one pass) and within SEED_RANGE."""
    if not seeds:
        errors.append(("seeds", "list at least one seed"))
    low, high = SEED_RANGE
    seen: set[int] = set()
    repeated: set[int] = set()
    for i, seed in enumerate(seeds):
        if not low <= seed <= high:
            errors.append((f"seeds[{i}]", f"must be between {low} and {high} (2**32 - 1), got {seed}"))
        elif seed in seen:
            repeated.add(seed)
        seen.add(seed)
    errors.extend(("seeds", f"{seed} is listed more than once; seeds must be unique") for seed in sorted(repeated))


def _check_labels(algorithms: list[AlgorithmConfig], errors: Errors) -> None:
    first_use: dict[str, int] = {}
    for i, alg in enumerate(algorithms):
        label = alg.label or alg.name
        problem = path_component_problem(label) if label != alg.name else None  # a name is checked as a name
        if problem:
            errors.append((f"algorithms[{i}].label", problem))
            continue
        if label in first_use:
            errors.append((f"algorithms[{i}].label", f"'{label}' is already used by algorithms[{first_use[label]}]; "
                                                     "give each entry its own label"))
        first_use.setdefault(label, i)


def _check_groups(suite: Suite, algorithms: list[AlgorithmConfig], ok: Callable[[str], bool],
                  errors: Errors) -> None:
    """Each step's completions split into whole groups of every algorithm's group size."""
    if not ok("rollout.group_size"):
        return
    users: dict[tuple[str, int], list[str]] = {}  # (where the size is set, size) -> labels
    for i, alg in enumerate(algorithms):
        path = f"algorithms[{i}]"
        if alg.name not in registered("algorithm") or not ok(path):
            continue
        params = algorithm_params(alg)
        size = step_shape(params, suite.rollout).group_size
        if "group_size" in alg.params:
            source = f"{path}.params.group_size"
        else:
            source = "rollout.group_size"
            hint = {fld.name: fld for fld in dataclasses.fields(params)}.get("group_size")
            problem = hint and _constraint_problem(hint.metadata, size)
            if problem:  # the algorithm's own bound on its group size, applied to the suite's default
                errors.append((source, f"{problem} ({alg.label} uses it as its group size)"))
                continue
        if size > 1:
            users.setdefault((source, size), []).append(alg.label or alg.name)
    per_step = suite.rollout.completions_per_step
    step = math.lcm(*(size for _, size in users)) if users else 1
    if not ok("rollout.completions_per_step") or per_step % step == 0:
        return
    below, above = per_step // step * step, (per_step // step + 1) * step
    works = f"{below} or {above}" if below else f"{above}"
    for (source, size), labels in users.items():
        if per_step % size:
            errors.append(("rollout.completions_per_step",
                           f"must be a multiple of {source} ({size}) for {', '.join(labels)}; "
                           f"got {per_step} (try {works})"))


def _check_distributed(suite: Suite, algorithms: list[AlgorithmConfig], ok: Callable[[str], bool],
                       errors: Errors) -> None:
    """Ranks split each step's prompts, whole groups each, and each minibatch's prompts evenly; what
    the sharded path does not support yet is named."""
    dist = suite.distributed
    if dist is None or not ok("distributed"):
        return
    if ok("rollout.engine") and suite.rollout.engine != "hf":
        errors.append(("rollout.engine", f"{suite.rollout.engine!r} is not supported with distributed "
                                         f"(strategy {dist.strategy}); use hf, or remove the distributed block"))
    if ok("model.lora") and suite.model.lora is not None:
        errors.append(("model.lora", f"LoRA is not supported with distributed (strategy {dist.strategy}) yet; "
                                     "set model.lora: null or remove the distributed block"))
    ranks = dist.nproc_per_node
    if ranks == 1 or not ok("rollout.completions_per_step") or not ok("rollout.group_size"):
        return
    per_step = suite.rollout.completions_per_step
    for i, alg in enumerate(algorithms):
        if alg.name not in registered("algorithm") or not ok(f"algorithms[{i}]"):
            continue
        params = algorithm_params(alg)
        shape = step_shape(params, suite.rollout)
        size, prompts = shape.group_size, shape.prompts_per_step
        if per_step % size:
            continue  # reported by _check_groups
        if prompts % ranks:
            errors.append(("rollout.completions_per_step",
                           f"{alg.label} samples {prompts} prompts per step ({per_step} completions in groups of "
                           f"{size}), which do not split over distributed.nproc_per_node={ranks} ranks with groups "
                           f"kept whole; use a multiple of {size * ranks}"))
            continue
        minibatches = getattr(params, "num_minibatches", 1)
        if prompts % (minibatches * ranks):
            errors.append((f"algorithms[{i}].params.num_minibatches",
                           f"{alg.label}'s {prompts} prompts per step do not split into {minibatches} minibatches "
                           f"of whole groups shared evenly by {ranks} ranks; use a number of minibatches that "
                           f"divides {prompts // ranks}"))


def _check_name(kind: str, name: str, path: str, errors: Errors) -> None:
    known = registered(kind)
    if known and name not in known:
        errors.append((path, _registry(kind).unknown_message(name)))


def resolve_defaults(alg: AlgorithmConfig) -> AlgorithmConfig:
    """Fill `label` (the name) and `reward` (the algorithm's first reward source)."""
    reward = alg.reward
    if reward is None and alg.name in registered("algorithm"):
        reward = _registry("algorithm").get(alg.name).default_reward
    return dataclasses.replace(alg, label=alg.label or alg.name, reward=reward)


def _reward_sources(cls: Any) -> tuple[RewardSource, ...]:
    """The `reward` values an algorithm accepts: rules only for one whose default is rules."""
    return ("rules",) if cls.default_reward == "rules" else REWARD_SOURCES


def algorithm_params(alg: AlgorithmConfig) -> Any:
    """The algorithm's `Params` dataclass with the suite's values applied over its defaults."""
    params_cls = _registry("algorithm").get(alg.name).params_cls
    errors: Errors = []
    params = _build(params_cls, alg.params, f"{alg.label or alg.name}.params", errors)
    if errors:
        raise UserError(*(f"{where}: {message}" for where, message in errors))
    return params


def _registry(kind: str) -> Any:
    """The catalog's registry of `kind` ('algorithm', 'task', 'reward', 'engine', 'probe')."""
    from rlbench import catalog

    return catalog.registry(kind)


def registered(kind: str) -> list[str]:
    return _registry(kind).names()
