"""Typed construction: a YAML mapping -> a config dataclass, every error kept with its field path.

Errors are collected as (field path, message) and raised once by the loader, one line per error,
so a file with five mistakes reports five lines. The helpers at the bottom format values and
types for those messages, and list every field with its help (`rlbench validate --explain`).
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Sequence
from typing import Any, Union, get_args, get_origin, get_type_hints

from rlbench.errors import UserError
from rlbench.registry import did_you_mean

_BOUNDS = (("gt", ">", lambda v, b: v > b), ("ge", ">=", lambda v, b: v >= b),
           ("lt", "<", lambda v, b: v < b), ("le", "<=", lambda v, b: v <= b))
_INVALID = object()  # a value that failed to convert (its error is already recorded)

Errors = list[tuple[str, str]]  # (field path, message)


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



# ---- small formatting helpers -------------------------------------------------------------------


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _suggest(name: str, known: list[str]) -> str:
    """' (did you mean 'steps'?)' or, with no close match, '; known: a, b, c'."""
    return _close(name, known) or f"; known: {', '.join(known)}"


def _close(name: str, known: Sequence[Any]) -> str:
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
