"""Name -> factory registries for algorithms, tasks, rewards, engines and probes.

Suites choose components by registry name only (never by import path), so a suite file
cannot run arbitrary code. An unknown name gets "did you mean ..." and the list of known names.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from rlbench.errors import UserError

T = TypeVar("T")


def did_you_mean(name: str, known: list[str] | tuple[str, ...]) -> str:
    """' (did you mean 'x'?)' when a close match exists, else ''."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    help: str


class Registry(Generic[T]):
    """A small registry: `@REG.register("name", help=...)` on a function or class."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, help: str = "") -> Callable[[T], T]:
        def deco(obj: T) -> T:
            assert name not in self._entries, f"{self.kind} '{name}' registered twice"
            doc = help or (getattr(obj, "__doc__", None) or "").strip().split("\n")[0]
            self._entries[name] = Entry(name, obj, doc)
            return obj

        return deco

    def add(self, name: str, obj: T, help: str = "") -> None:
        self.register(name, help)(obj)

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise UserError(self.unknown_message(name))
        return self._entries[name].obj

    def unknown_message(self, name: str) -> str:
        return f"unknown {self.kind} '{name}'{did_you_mean(name, self.names())}; known: {', '.join(self.names())}"

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> Iterator[Entry[T]]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))


ALGORITHMS: Registry[Any] = Registry("algorithm")
TASKS: Registry[Any] = Registry("task")
REWARDS: Registry[Any] = Registry("reward")
ENGINES: Registry[Any] = Registry("engine")
PROBES: Registry[Any] = Registry("probe")


def load_all() -> None:
    """Import the modules that register components (cheap: no torch-heavy work at import)."""
    import rlbench.algorithms  # noqa: F401
    import rlbench.measure.memory  # noqa: F401
    import rlbench.rewards  # noqa: F401
    import rlbench.rollout  # noqa: F401
    import rlbench.tasks  # noqa: F401
