"""One registry per extension point, timm-style.

An entry registers itself next to its code with a decorator; everything that lists entries (config
validation, the command line's choices and help, the demo's methods, the report's sections, the tests'
parametrisation) asks the registry instead of keeping a list of its own::

    OBJECTIVES = Registry("objective")

    @OBJECTIVES.register("clip", help="InfoNCE between the image and one text")
    class ClipObjective(Objective): ...

    OBJECTIVES.get("clip")          # the class (or function) registered
    OBJECTIVES.names()              # in registration order
    OBJECTIVES.help("clip")         # the one-line help given at registration

Registration order is kept (it is the order the CLI and the report show), and a name registered twice
is an error unless ``replace=True`` (tests that add a toy entry and remove it with ``unregister``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    help: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


class UnknownEntryError(ValueError):
    """A name that is not registered; the message lists the names that are."""


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, *, help: str = "", replace: bool = False, **meta: Any) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            self.add(name, obj, help=help, replace=replace, **meta)
            return obj

        return decorator

    def add(self, name: str, obj: T, *, help: str = "", replace: bool = False, **meta: Any) -> None:
        if name in self._entries and not replace:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        # A class or function documents itself; an entry that is data (a dict of settings) has only its
        # type's docstring, which says nothing about the entry.
        if not help and callable(obj) and getattr(obj, "__doc__", None):
            help = obj.__doc__.strip().splitlines()[0]
        self._entries[name] = Entry(name, obj, help, dict(meta))

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(self._entries) or "none"
            raise UnknownEntryError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def help(self, name: str) -> str:
        return self.entry(name).help

    def names(self, pattern: str | None = None) -> list[str]:
        """Registered names, in registration order; ``pattern`` is a shell-style filter (timm's)."""
        names = list(self._entries)
        return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names

    def entries(self) -> list[Entry[T]]:
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"


class RegistryChoices:
    """A registry's names as argparse ``choices``, looked up on first use.

    The modules that fill a registry import torch, and building the command line's parser must not
    (``medgrain --help`` stays instant): the registry ``module.attribute`` is imported only when a value
    is checked or a subcommand's help is shown. Give the argument a ``metavar``, so that argparse does
    not list the choices while the parser is built, and ``%(choices)s`` in its help to list them."""

    def __init__(self, module: str, attribute: str):
        self.module, self.attribute = module, attribute

    def registry(self) -> Registry:
        import importlib

        return getattr(importlib.import_module(self.module), self.attribute)

    def __iter__(self) -> Iterator[str]:
        return iter(self.registry().names())

    def __contains__(self, name: object) -> bool:
        return name in self.registry()

    def __len__(self) -> int:
        return len(self.registry())
