"""One small generic registry for methods, models and datasets.

Entries are registered by name (with optional aliases) and may be *lazy*: a
``"module:attribute"`` string imported on first use, so listing names never imports
heavy code. Unknown names raise :class:`RegistryError` with a "did you mean" hint.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from harness.errors import HarnessError

T = TypeVar("T")


class RegistryError(HarnessError, KeyError):
    """An unknown or duplicate registry name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def suggest(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """Return `` (did you mean 'x'?)`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Registry(Generic[T]):
    """Maps names (and aliases) to objects, e.g. builders, classes or dataset infos."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T | str] = {}
        self._aliases: dict[str, str] = {}

    def register(
        self, name: str, obj: T | str | None = None, *, aliases: tuple[str, ...] = ()
    ) -> Callable[[T], T] | T | str:
        """Register ``obj`` under ``name``; without ``obj`` acts as a decorator.

        ``obj`` may be a ``"package.module:attribute"`` string, imported lazily.
        """

        def add(target: T | str) -> T | str:
            for key in (name, *aliases):
                if key in self._entries or key in self._aliases:
                    raise RegistryError(f"{self.kind} '{key}' is registered twice")
            self._entries[name] = target
            for alias in aliases:
                self._aliases[alias] = name
            return target

        if obj is None:
            return add  # type: ignore[return-value]
        return add(obj)

    def canonical(self, name: str) -> str:
        """The registered name for ``name`` or one of its aliases."""
        name = str(name)
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        raise RegistryError(
            f"unknown {self.kind} '{name}'{suggest(name, self.names(with_aliases=True))}"
        )

    def get(self, name: str) -> T:
        """The object registered under ``name`` (importing lazy entries)."""
        key = self.canonical(name)
        entry = self._entries[key]
        if isinstance(entry, str):
            module_name, _, attribute = entry.partition(":")
            entry = getattr(importlib.import_module(module_name), attribute)
            self._entries[key] = entry
        return entry  # type: ignore[return-value]

    def names(self, *, with_aliases: bool = False) -> list[str]:
        """Registered names in registration order (aliases appended on request)."""
        names = list(self._entries)
        return names + list(self._aliases) if with_aliases else names

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
