"""Loading a suite: YAML -> `--set` overrides -> typed dataclasses -> semantic checks.

Loading imports no torch and no implementation module: the checks that need an algorithm's own
parameters read them from the catalog's parameter dataclasses.

    suite = load_suite("suites/quickstart.yaml", overrides=["budget.steps=5"])
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from rlbench.config.checks import algorithm_params, check_suite, registered, resolve_defaults
from rlbench.config.schema import Suite
from rlbench.config.typed import (
    _INVALID,
    Errors,
    _build,
    _default_of,
    _expected,
    _show,
    _strip_optional,
    _suggest,
)
from rlbench.config.yaml_safe import MAX_BYTES, read_yaml_text
from rlbench.errors import UserError

_KEY_PART = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)")


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
    suite = check_suite(suite, errors)
    if errors:
        raise UserError(*(f"{where}: {message}" if where else message for where, message in errors))
    return suite


def resolved_dict(suite: Suite) -> dict[str, Any]:
    """The suite as a plain dict with every default filled in (labels, rewards, algorithm params)."""
    resolved = dataclasses.replace(suite, algorithms=[resolve_defaults(a) for a in suite.algorithms])
    data = dataclasses.asdict(resolved)
    known = registered("algorithm")
    for entry, alg in zip(data["algorithms"], resolved.algorithms):
        if alg.name in known:
            entry["params"] = dataclasses.asdict(algorithm_params(alg))
    return data



# ---- whole-file errors ------------------------------------------------------------------------


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a suite YAML file")
    try:
        with open(path, "rb") as fh:
            blob = fh.read(MAX_BYTES + 1)  # never more than the limit, even from a pipe or a huge file
    except OSError as err:
        raise UserError(f"{path}: cannot read it ({err.strerror})") from None
    if len(blob) > MAX_BYTES:
        raise UserError(f"{path}: too large for a suite file (over {MAX_BYTES:,} bytes)")
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file (expected UTF-8 YAML)") from None
    data = read_yaml_text(text, str(path))
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
        value = read_yaml_text(value_text, "--set") if value_text.strip() else None
    except UserError as err:
        problem = str(err).partition(": ")[2]
        errors.append((key.strip(), f"cannot parse the value {value_text!r} in --set {text} ({problem})"))
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


