"""Suite files: YAML -> frozen dataclasses, with every error collected and named by field path.

A suite is one experiment: a model, a task, the algorithms to compare, one shared budget, and
how to roll out, evaluate and measure. Every field below carries a one-line help string in its
metadata (`help`), which `rlbench validate --explain` prints, and optional constraints:
`gt`/`ge`/`lt`/`le` for numbers, `choices` for strings. Per-algorithm `params` are checked
against the algorithm's own `Params` dataclass from the registry, in the same way.

    suite = load_suite("suites/quickstart.yaml", overrides=["budget.steps=5"])
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from rlbench.errors import UserError


def f(default: Any = None, help: str = "", **constraints: Any) -> Any:
    """A dataclass field with a help string and constraints in its metadata."""
    meta = {"help": help, **constraints}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    if isinstance(default, type):  # a nested dataclass: build its defaults
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class SFTConfig:
    """Cold start: supervised fine-tuning on demonstrations before RL (cached on disk)."""

    steps: int = f(400, "optimizer steps of supervised fine-tuning (0 skips SFT)", ge=0)
    batch_size: int = f(32, "demonstrations per SFT step", gt=0)
    lr: float = f(4e-3, "AdamW learning rate of SFT", gt=0, lt=1)
    warmup_steps: int = f(20, "linear warm-up steps", ge=0)
    train_size: int = f(20000, "synthetic demonstrations generated for SFT", gt=0)


@dataclass(frozen=True)
class RewardModelConfig:
    """Reward model stage (InstructGPT step 2), for algorithms that hold a neural reward model."""

    path: str | None = f(None, "load a saved reward model directory instead of training one")
    prompts: int = f(2000, "prompts sampled from the SFT model to build comparison pairs", gt=0)
    samples_per_prompt: int = f(4, "completions per prompt; correct/incorrect pairs become comparisons", ge=2)
    steps: int = f(400, "Bradley-Terry training steps", ge=0)
    batch_size: int = f(32, "comparison pairs per step", gt=0)
    lr: float = f(3e-4, "AdamW learning rate of the reward model", gt=0, lt=1)
    heldout_fraction: float = f(0.1, "fraction of pairs held out to report pairwise accuracy", gt=0, lt=1)


@dataclass(frozen=True)
class LoraConfig:
    """LoRA adapters on the policy (needs the `peft` extra)."""

    r: int = f(16, "adapter rank", gt=0)
    alpha: int = f(32, "adapter scaling alpha", gt=0)
    dropout: float = f(0.0, "adapter dropout", ge=0, lt=1)
    target_modules: list[str] = f(["q_proj", "k_proj", "v_proj", "o_proj"], "module names that get adapters")


@dataclass(frozen=True)
class ModelConfig:
    name: str = f("embedded", "'embedded' (the built-in 1M-parameter model), a hub name or a local directory")
    dtype: str = f("float32", "parameter dtype", choices=DTYPES)
    attn_implementation: str | None = f(None, "transformers attention implementation (eager, sdpa, flash_attention_2)")
    gradient_checkpointing: bool = f(False, "recompute activations in the backward pass to save memory")
    trust_remote_code: bool = f(False, "allow code shipped with a hub model to run")
    max_prompt_tokens: int = f(512, "prompts longer than this are truncated from the left", gt=0)
    sft: SFTConfig = f(SFTConfig, "cold-start supervised fine-tuning")
    reward_model: RewardModelConfig = f(RewardModelConfig, "reward model stage")
    lora: LoraConfig | None = f(None, "LoRA adapters on the policy; null trains all weights")


@dataclass(frozen=True)
class TaskConfig:
    name: str = f("synthetic", "registered task: synthetic (generated GSM8K-style problems) or gsm8k")
    path: str | None = f(None, "gsm8k only: a local .jsonl/.parquet file or directory instead of the hub")
    min_steps: int = f(1, "synthetic: fewest arithmetic steps per problem", ge=1, le=4)
    max_steps: int = f(2, "synthetic: most arithmetic steps per problem", ge=1, le=4)
    max_number: int = f(12, "synthetic: largest operand (multipliers and divisors stay <= 10)", ge=2)
    train_size: int = f(20000, "problems in the RL training split", gt=0)


@dataclass(frozen=True)
class AlgorithmConfig:
    name: str = f("grpo_zero", "registered algorithm: ppo, grpo or grpo_zero")
    label: str | None = f(None, "display name in reports (default: the algorithm name); must be unique")
    reward: str | None = f(None, "reward source: rules, model or both (default: rules for grpo_zero, model otherwise)",
                           choices=("rules", "model", "both"))
    rewards: dict[str, float] = f({"answer_correct": 1.0, "format_strict": 0.1},
                                  "rule rewards and their weights (see `rlbench ls`)")
    model_reward_weight: float = f(1.0, "weight of the reward model's score when reward is model or both", ge=0)
    params: dict[str, Any] = f({}, "the algorithm's own hyper-parameters (see `rlbench ls --params`)")


@dataclass(frozen=True)
class BudgetConfig:
    """One budget shared by every run; a run stops at the first limit reached."""

    steps: int | None = f(None, "RL steps", gt=0)
    completions: int | None = f(None, "generated sequences (the default fairness unit)", gt=0)
    tokens: int | None = f(None, "generated tokens", gt=0)
    wall_seconds: float | None = f(None, "wall-clock seconds of RL (evaluation excluded)", gt=0)


@dataclass(frozen=True)
class RolloutConfig:
    engine: str = f("hf", "rollout engine: hf (transformers-style generation) or vllm")
    completions_per_step: int = f(64, "completions generated per RL step, for every algorithm", gt=0)
    group_size: int = f(4, "completions per prompt for group-based algorithms (GRPO, GRPO-Zero)", gt=0)
    max_new_tokens: int = f(48, "most tokens generated per completion", gt=0)
    temperature: float = f(1.0, "sampling temperature", gt=0)
    top_p: float = f(1.0, "nucleus sampling threshold", gt=0, le=1)
    gpu_memory_utilization: float = f(0.3, "vllm: fraction of GPU memory the engine may take", gt=0, le=1)
    sleep_between_phases: bool = f(False, "vllm: free the KV cache while the policy updates")


@dataclass(frozen=True)
class EvalConfig:
    size: int = f(512, "held-out problems scored before and after RL", gt=0)
    every: int = f(0, "also evaluate every N steps (0: only before and after)", ge=0)
    k: int = f(1, "samples per problem for pass@k and maj@k (1: greedy pass@1 only)", ge=1)
    batch_size: int = f(256, "problems per generation batch", gt=0)


@dataclass(frozen=True)
class CheckConfig:
    """Default regression thresholds for `rlbench check`: 'N%' relative or a plain number absolute."""

    memory: str = f("5%", "largest allowed rise of a memory figure")
    throughput: str = f("10%", "largest allowed fall of a throughput figure")
    accuracy: str = f("0.02", "largest allowed fall of accuracy beyond its standard error")


@dataclass(frozen=True)
class Suite:
    name: str = f("suite", "suite name; reports go to <output>/<name>/<timestamp>/")
    description: str = f("", "one line on what the suite is for")
    model: ModelConfig = f(ModelConfig, "the model every run starts from")
    task: TaskConfig = f(TaskConfig, "the problems")
    algorithms: list[AlgorithmConfig] = f([], "the algorithms to compare (at least one)")
    budget: BudgetConfig = f(BudgetConfig, "shared budget (at least one limit)")
    rollout: RolloutConfig = f(RolloutConfig, "how completions are generated")
    eval: EvalConfig = f(EvalConfig, "held-out evaluation")
    seeds: list[int] = f([0], "one run per algorithm per seed")
    probe: str = f("auto", "memory probe: auto, cpu, torch_cuda or nvml")
    probe_period_ms: float = f(10.0, "sampling period of sampling probes (nvml, psutil fallback)", gt=0)
    threads: int | None = f(None, "torch threads per run (default: all cores)", gt=0)
    output: str = f("results", "directory that reports are written under")
    check: CheckConfig = f(CheckConfig, "regression thresholds for `rlbench check`")


# --------------------------------------------------------------------------------------------
# Loading: YAML -> overrides -> typed dataclasses -> semantic checks. Every error is collected
# as (field path, message) and raised once as UserError, one line per error.
#
# What the loader uses of a registered algorithm class (rlbench/algorithms/base.py):
#   Params                    its hyper-parameters, a dataclass with the same `f(...)` metadata
#   default_reward            the reward source when `reward` is not set; an algorithm whose
#                             default is "rules" holds no reward model (GRPO-Zero): rules only
#   cls(params, reward)       and its `group_size(rollout.group_size)`: completions per prompt
# --------------------------------------------------------------------------------------------

REWARD_SOURCES = ("model", "rules", "both")
_BOUNDS = (("gt", ">", lambda v, b: v > b), ("ge", ">=", lambda v, b: v >= b),
           ("lt", "<", lambda v, b: v < b), ("le", "<=", lambda v, b: v <= b))
_INVALID = object()  # a value that failed to convert (its error is already recorded)
_KEY_PART = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)")

Errors = list[tuple[str, str]]  # (field path, message)


def load_suite(path: str | Path, overrides: Sequence[str] = ()) -> Suite:
    """Read a suite file, apply `key.path=value` overrides, and return the validated Suite.

    Raises UserError with one line per problem, each starting with its field path, e.g.
    `algorithms[1].params.clip_eps: must be > 0, got -0.2`.
    """
    raw = _unshared(_read_yaml(Path(path)))
    errors: Errors = []
    for text in overrides:
        _apply_override(raw, text, errors)
    suite = _build(Suite, raw, "", errors)
    assert suite is not _INVALID, "the top level was checked to be a mapping"
    suite = _check_suite(suite, errors)
    if errors:
        raise UserError(*(f"{where}: {message}" if where else message for where, message in errors))
    return suite


def algorithm_params(alg: AlgorithmConfig) -> Any:
    """The algorithm's `Params` dataclass with the suite's values applied over its defaults."""
    params_cls = _registry("algorithm").get(alg.name).Params
    errors: Errors = []
    params = _build(params_cls, alg.params, f"{alg.label or alg.name}.params", errors)
    if errors:
        raise UserError(*(f"{where}: {message}" for where, message in errors))
    return params


def resolved_dict(suite: Suite) -> dict[str, Any]:
    """The suite as a plain dict with every default filled in (labels, rewards, algorithm params)."""
    resolved = dataclasses.replace(suite, algorithms=[_resolve_defaults(a) for a in suite.algorithms])
    data = dataclasses.asdict(resolved)
    known = _registered("algorithm")
    for entry, alg in zip(data["algorithms"], resolved.algorithms):
        if alg.name in known:
            entry["params"] = dataclasses.asdict(algorithm_params(alg))
    return data


def field_help(cls: type, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(path, type, default, help) for every field of a config dataclass, nested sections included.

    A section's own row comes before its fields; its default is None when the section is optional
    and off by default, else the string "(section)". List entries are written `algorithms[].name`.
    """
    rows: list[tuple[str, str, Any, str]] = []
    hints = get_type_hints(cls)
    for fld in dataclasses.fields(cls):
        path = f"{prefix}.{fld.name}" if prefix else fld.name
        tp = hints[fld.name]
        default = _default_of(fld)
        section = _dataclass_in(tp)
        if section is not None and default is not None and not isinstance(default, list):
            default = "(section)"
        rows.append((path, _type_name(tp), default, fld.metadata.get("help", "")))
        if section is not None:
            rows += field_help(section, f"{path}[]" if get_origin(tp) is list else path)
    return rows


def parse_threshold(text: str | float) -> tuple[float, bool]:
    """'5%' -> (0.05, True): relative, as a fraction; '0.02' -> (0.02, False): absolute."""
    stripped = str(text).strip()
    relative = stripped.endswith("%")
    number = stripped[:-1].strip() if relative else stripped
    try:
        value = float(number)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise UserError(f"expected 'N%' (relative) or a plain number (absolute), at least 0; got {text!r}")
    return (value / 100 if relative else value, relative)


# ---- whole-file errors ------------------------------------------------------------------------


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a suite YAML file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file (expected UTF-8 YAML)") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read it ({err.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"{path}{where}: not valid YAML: {problem}") from None
    if data is None:
        raise UserError(f"{path}: the file is empty; a suite needs at least `algorithms:` and `budget:`")
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of suite fields at the top level, got {_show(data)}")
    return data


# ---- overrides ----------------------------------------------------------------------------------


def _apply_override(raw: dict[str, Any], text: str, errors: Errors) -> None:
    """Apply one `key.path=value` to the raw YAML data; the path is checked against the schema."""
    key, sep, value_text = text.partition("=")
    segments = _parse_key(key.strip()) if sep else None
    if segments is None:
        errors.append(("", f"--set {text!r}: expected key.path=value, e.g. budget.steps=5"))
        return
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else None
    except yaml.YAMLError:
        errors.append((key.strip(), f"cannot parse the value {value_text!r} in --set {text}"))
        return
    node: Any = raw
    tp: Any = Suite
    path = ""
    for i, segment in enumerate(segments):
        tp = _strip_optional(tp)
        if isinstance(segment, str):
            child_path = f"{path}.{segment}" if path else segment
            fresh: dict[str, Any] = {}  # what an absent or null mapping starts from
            if dataclasses.is_dataclass(tp):
                names = [fld.name for fld in dataclasses.fields(tp)]
                if segment not in names:
                    errors.append((child_path, f"unknown key{_suggest(segment, names)} in --set {text}"))
                    return
                child_tp = get_type_hints(tp)[segment]
                default = _default_of(next(fld for fld in dataclasses.fields(tp) if fld.name == segment))
                if isinstance(default, dict):  # `rewards.format_strict=0.5` keeps the other default weights
                    fresh = dict(default)
            elif get_origin(tp) is dict or tp is Any:
                child_tp = get_args(tp)[1] if tp is not Any else Any
            else:
                errors.append((path, f"is {_expected(tp)}, it has no key '{segment}' (in --set {text})"))
                return
            if not isinstance(node, dict):
                errors.append((path, f"expected a mapping to set '{segment}' in, got {_show(node)} (in --set {text})"))
                return
            if i == len(segments) - 1:
                node[segment] = value
                return
            if node.get(segment) is None:
                node[segment] = fresh
        else:
            child_path = f"{path}[{segment}]"
            if get_origin(tp) is not list and tp is not Any:
                errors.append((path, f"is {_expected(tp)}, it cannot be indexed (in --set {text})"))
                return
            child_tp = get_args(tp)[0] if tp is not Any else Any
            if not isinstance(node, list) or segment >= len(node):
                count = len(node) if isinstance(node, list) else 0
                errors.append((child_path, f"no such entry, the suite lists {count} (in --set {text})"))
                return
            if i == len(segments) - 1:
                node[segment] = value
                return
            if node[segment] is None:
                node[segment] = {}
        node = node[segment]
        tp = child_tp
        path = child_path


def _unshared(value: Any) -> Any:
    """A copy in which YAML aliases (`*anchor`) no longer share objects, so an override of
    `algorithms[0]` does not also change an `algorithms[1]` written as the same alias."""
    if isinstance(value, dict):
        return {key: _unshared(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_unshared(item) for item in value]
    return value


def _parse_key(key: str) -> list[str | int] | None:
    """'algorithms[0].params.lr' -> ['algorithms', 0, 'params', 'lr']; None when malformed."""
    segments: list[str | int] = []
    for part in key.split("."):
        match = _KEY_PART.fullmatch(part)
        if match is None:
            return None
        segments.append(match.group(1))
        segments += [int(index) for index in re.findall(r"\[(\d+)\]", match.group(2))]
    return segments


# ---- typed construction -------------------------------------------------------------------------


def _build(cls: type, value: Any, path: str, errors: Errors) -> Any:
    """A `cls` instance from a mapping. Bad fields are recorded in `errors` and left at their defaults,
    so that every error in the file is found in one pass."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        errors.append((path, f"expected a mapping, got {_show(value)}"))
        return _INVALID
    hints = get_type_hints(cls)
    fields = {fld.name: fld for fld in dataclasses.fields(cls) if fld.init}
    for key in value:
        if key not in fields:
            errors.append((_join(path, str(key)), f"unknown key{_suggest(str(key), list(fields))}"))
    kwargs: dict[str, Any] = {}
    complete = True
    for name, fld in fields.items():
        sub = _join(path, name)
        if name not in value:
            if fld.default is dataclasses.MISSING and fld.default_factory is dataclasses.MISSING:
                errors.append((sub, "required"))
                complete = False
            continue
        converted = _convert(hints[name], value[name], sub, errors)
        if converted is _INVALID:
            continue
        problem = _constraint_problem(fld.metadata, converted)
        if problem:
            errors.append((sub, problem))
            continue
        kwargs[name] = converted
    if not complete:
        return _INVALID
    try:
        return cls(**kwargs)
    except UserError as err:  # a Params.__post_init__ may check relations between its fields
        errors += [(path, message) for message in err.messages]
        return _INVALID


def _convert(tp: Any, value: Any, path: str, errors: Errors) -> Any:
    """Check `value` against the type hint `tp`; returns the converted value or _INVALID."""
    if tp is Any:
        return value
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        options = [arg for arg in get_args(tp) if arg is not type(None)]
        if value is None and len(options) < len(get_args(tp)):
            return None
        assert len(options) == 1, f"{path}: only `X | None` unions are supported, got {tp}"
        return _convert(options[0], value, path, errors)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, errors)
    if origin is list:
        if not isinstance(value, list):
            return _mismatch(tp, value, path, errors)
        items = [_convert(get_args(tp)[0], item, f"{path}[{i}]", errors) for i, item in enumerate(value)]
        return [item for item in items if item is not _INVALID]
    if origin is dict:
        if not isinstance(value, dict):
            return _mismatch(tp, value, path, errors)
        converted = {}
        for key, item in value.items():
            if not isinstance(key, str):
                errors.append((_join(path, str(key)), "keys must be strings"))
                continue
            item = _convert(get_args(tp)[1], item, _join(path, key), errors)
            if item is not _INVALID:
                converted[key] = item
        return converted
    if tp is bool:
        return value if isinstance(value, bool) else _mismatch(tp, value, path, errors)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        hint = ""
        number = _as_float(value)
        if isinstance(value, (str, float)) and number is not None and number.is_integer():
            hint = f" (write {int(number)})"
        return _mismatch(tp, value, path, errors, hint)
    if tp is float:
        number = _as_float(value)
        if number is None:
            return _mismatch(tp, value, path, errors)
        if not math.isfinite(number):
            errors.append((path, f"expected a finite number, got {_show(value)}"))
            return _INVALID
        return number
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # `accuracy: 0.02` arrives as a float
        return value if isinstance(value, str) else _mismatch(tp, value, path, errors)
    raise AssertionError(f"{path}: unsupported type {tp} in a config dataclass")


def _as_float(value: Any) -> float | None:
    """ints, floats and numeric strings ("1e-4": YAML 1.1 reads exponents without a dot as text)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _mismatch(tp: Any, value: Any, path: str, errors: Errors, hint: str = "") -> Any:
    errors.append((path, f"expected {_expected(tp)}, got {_show(value)}{hint}"))
    return _INVALID


def _constraint_problem(metadata: Any, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        for key, symbol, holds in _BOUNDS:
            if key in metadata and not holds(value, metadata[key]):
                return f"must be {symbol} {metadata[key]}, got {_show(value)}"
    choices = metadata.get("choices")
    if choices is not None and value not in choices:
        return f"must be one of {', '.join(map(str, choices))}; got {_show(value)}{_close(str(value), choices)}"
    return None


# ---- semantic checks ----------------------------------------------------------------------------


def _check_suite(suite: Suite, errors: Errors) -> Suite:
    """Checks that span fields or need the registries. Fields that already failed are skipped, so
    one mistake gives one message. Returns the suite with labels, rewards and params resolved."""

    def ok(path: str) -> bool:
        return not any(w == path or w.startswith((path + ".", path + "[")) for w, _ in errors)

    algorithms = [_resolve_defaults(_check_algorithm(i, alg, ok, errors)) for i, alg in enumerate(suite.algorithms)]
    if ok("algorithms") and not suite.algorithms:
        known = ", ".join(_registered("algorithm"))
        errors.append(("algorithms", "list at least one algorithm" + (f" (known: {known})" if known else "")))
    _check_labels(algorithms, errors)
    _check_groups(suite, algorithms, ok, errors)

    limits = [fld.name for fld in dataclasses.fields(BudgetConfig)]
    if ok("budget") and all(getattr(suite.budget, name) is None for name in limits):
        errors.append(("budget", f"set at least one of {', '.join(limits)}"))
    for kind, path, name in (("task", "task.name", suite.task.name),
                             ("engine", "rollout.engine", suite.rollout.engine),
                             ("probe", "probe", suite.probe)):
        if ok(path):
            _check_name(kind, name, path, errors)
    if ok("task.min_steps") and ok("task.max_steps") and suite.task.min_steps > suite.task.max_steps:
        errors.append(("task.min_steps", f"must be <= task.max_steps ({suite.task.max_steps}), "
                                         f"got {suite.task.min_steps}"))
    if ok("seeds"):
        if not suite.seeds:
            errors.append(("seeds", "list at least one seed"))
        for seed in sorted({s for s in suite.seeds if suite.seeds.count(s) > 1}):
            errors.append(("seeds", f"{seed} is listed more than once; seeds must be unique"))
    for fld in dataclasses.fields(CheckConfig):
        path = f"check.{fld.name}"
        if ok(path):
            try:
                parse_threshold(getattr(suite.check, fld.name))
            except UserError as err:
                errors.append((path, str(err)))
    return dataclasses.replace(suite, algorithms=algorithms)


def _check_algorithm(i: int, alg: AlgorithmConfig, ok: Callable[[str], bool], errors: Errors) -> AlgorithmConfig:
    path = f"algorithms[{i}]"
    known = _registered("algorithm")
    if not ok(f"{path}.name") or not known:
        return alg
    if alg.name not in known:
        errors.append((f"{path}.name", _registry("algorithm").unknown_message(alg.name)))
        return alg
    entry = _registry("algorithm").get(alg.name)
    if ok(f"{path}.params"):
        params = _build(entry.Params, alg.params, f"{path}.params", errors)
        if params is not _INVALID:  # keep the keys the user gave, with their converted values
            alg = dataclasses.replace(alg, params={k: getattr(params, k) for k in alg.params if hasattr(params, k)})
    sources = _reward_sources(entry)
    if ok(f"{path}.reward") and alg.reward is not None and alg.reward not in sources:
        errors.append((f"{path}.reward", f"must be {' or '.join(sources)} for {alg.name}, got {alg.reward!r}"))
        return alg
    alg = _resolve_defaults(alg)
    if ok(f"{path}.rewards") and alg.reward in ("rules", "both"):
        if not alg.rewards:
            errors.append((f"{path}.rewards", f"name at least one rule reward when reward is {alg.reward}"))
        for name in alg.rewards:
            _check_name("reward", name, f"{path}.rewards.{name}", errors)
    return alg


def _check_labels(algorithms: list[AlgorithmConfig], errors: Errors) -> None:
    first_use: dict[str, int] = {}
    for i, alg in enumerate(algorithms):
        label = alg.label or alg.name
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
        if alg.name not in _registered("algorithm") or not ok(path):
            continue
        cls = _registry("algorithm").get(alg.name)
        params = algorithm_params(alg)
        size = cls(params, alg.reward).group_size(suite.rollout.group_size)
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


def _check_name(kind: str, name: str, path: str, errors: Errors) -> None:
    known = _registered(kind)
    if known and name not in known:
        errors.append((path, _registry(kind).unknown_message(name)))


def _resolve_defaults(alg: AlgorithmConfig) -> AlgorithmConfig:
    """Fill `label` (the name) and `reward` (the algorithm's first reward source)."""
    reward = alg.reward
    if reward is None and alg.name in _registered("algorithm"):
        reward = _registry("algorithm").get(alg.name).default_reward
    return dataclasses.replace(alg, label=alg.label or alg.name, reward=reward)


def _reward_sources(cls: Any) -> tuple[str, ...]:
    """The `reward` values an algorithm accepts: rules only for one whose default is rules."""
    return ("rules",) if cls.default_reward == "rules" else REWARD_SOURCES


# ---- registries ---------------------------------------------------------------------------------


def _registry(kind: str) -> Any:
    """The registry of `kind` ('algorithm', 'task', 'reward', 'engine', 'probe'), with its modules loaded."""
    from rlbench import registry

    try:
        registry.load_all()
    except ModuleNotFoundError as err:  # a component module of rlbench that does not exist yet
        if not (err.name or "").startswith("rlbench."):
            raise
    by_kind = {r.kind: r for r in (registry.ALGORITHMS, registry.TASKS, registry.REWARDS,
                                   registry.ENGINES, registry.PROBES)}
    return by_kind[kind]


def _registered(kind: str) -> list[str]:
    """Names registered under `kind`; a check against an empty registry is skipped."""
    return _registry(kind).names()


# ---- small formatting helpers -------------------------------------------------------------------


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _suggest(name: str, known: list[str]) -> str:
    """' (did you mean 'steps'?)' or, with no close match, '; known: a, b, c'."""
    return _close(name, known) or f"; known: {', '.join(known)}"


def _close(name: str, known: Sequence[Any]) -> str:
    from rlbench.registry import did_you_mean

    return did_you_mean(name, [str(k) for k in known])


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return repr(value)


def _expected(tp: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "a mapping"}
    return names.get(get_origin(tp) or tp, _type_name(tp))


def _strip_optional(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        options = [arg for arg in get_args(tp) if arg is not type(None)]
        if len(options) == 1:
            return options[0]
    return tp


def _dataclass_in(tp: Any) -> type | None:
    """The config dataclass inside `tp` (`X`, `X | None`, `list[X]`), if any."""
    tp = _strip_optional(tp)
    if get_origin(tp) is list:
        tp = get_args(tp)[0]
    return tp if dataclasses.is_dataclass(tp) else None


def _type_name(tp: Any) -> str:
    if tp is Any:
        return "any"
    if tp is type(None):
        return "None"
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in get_args(tp))
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(arg) for arg in get_args(tp))}]"
    return getattr(tp, "__name__", str(tp))


def _default_of(fld: dataclasses.Field[Any]) -> Any:
    if fld.default is not dataclasses.MISSING:
        return fld.default
    if fld.default_factory is not dataclasses.MISSING:
        return fld.default_factory()
    return None
