"""Name -> component registries, with lazy entries and "did you mean".

A registry maps a name to an object or to a lazy `"module:attr"` string that is imported on first
use, plus a one-line help. Registries are filled in one place, `rlbench/catalog.py`; no module
registers itself on import. Suites choose components by registry name only (never by import
path), so a suite file cannot run arbitrary code.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from rlbench.errors import UserError

T = TypeVar("T")


def did_you_mean(name: str, known: list[str] | tuple[str, ...]) -> str:
    """' (did you mean 'x'?)' when a close match exists, else ''."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def resolve(target: Any) -> Any:
    """The object named by a `"package.module:attr"` string; any other value as it is."""
    if not isinstance(target, str):
        return target
    module, _, attr = target.partition(":")
    assert module and attr, f"lazy registry targets are 'module:attr', got {target!r}"
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    target: T | str  # the object, or "module:attr" imported on first use
    help: str

    @property
    def obj(self) -> T:
        return resolve(self.target)


class Registry(Generic[T]):
    """A small registry of named components; `add` fills it, `get` resolves a name."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def add(self, name: str, target: T | str, help: str) -> None:
        assert name not in self._entries, f"{self.kind} '{name}' added twice"
        assert help and "\n" not in help, f"{self.kind} '{name}' needs a one-line help"
        self._entries[name] = Entry(name, target, help)

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        if name not in self._entries:
            raise UserError(self.unknown_message(name))
        return self._entries[name]

    def unknown_message(self, name: str) -> str:
        return f"unknown {self.kind} '{name}'{did_you_mean(name, self.names())}; known: {', '.join(self.names())}"

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> Iterator[Entry[T]]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))
