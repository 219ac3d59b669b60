"""The types runner injects into python task callables, and who provides each one.

A python task asks for a framework object by annotating a parameter with its type, never by
naming it. Injectable types are keyed by ``"module:qualname"`` of the class, with the module
where the class is defined (``cls.__module__``), so that recognising one never imports its
module: ``AsyncSession`` is known here without importing SQLAlchemy.

A provider receives the engine's injection scope (opaque here) and returns the instance, or
something the engine knows how to turn into one (a coroutine, an async context manager).
The built-in types are registered below without providers; the engine sets them with
:func:`set_provider` (or :func:`register_injectable`) when it starts.

Matching is by exact class: a subclass of a registered class is a regular parameter, so that
``isinstance`` never has to import anything and a user's own subclass is never silently filled.

A string annotation that cannot be evaluated (``session: AsyncSession`` with the import under
``if TYPE_CHECKING:``) is still recognised when its last dotted part is a name given in
``names=``; :mod:`runner.signature` then uses an :class:`InjectableRef` in place of the class.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NoReturn

Provider = Callable[[Any], Any]
"""Receives the engine's injection scope and returns the instance (or an awaitable/context)."""


@dataclass
class _Entry:
    provider: Provider | None = None
    names: set[str] = field(default_factory=set)


_entries: dict[str, _Entry] = {}
_by_name: dict[str, str] = {}


@dataclass(frozen=True)
class InjectableRef:
    """Stands for a registered type that a string annotation names but cannot import.

    Callable and ``|``-able so that ``Optional[...]`` and ``X | None`` accept it like a class.
    """

    key: str

    @property
    def name(self) -> str:
        return display_name(self.key)

    def __call__(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(f"{self.key} is only a placeholder for an injectable type")

    def __or__(self, other: Any) -> Any:
        return union(self, other)

    def __ror__(self, other: Any) -> Any:
        return union(other, self)

    def __repr__(self) -> str:
        return self.name


def union(*members: Any) -> Any:
    """``typing.Union`` of runtime values, for placeholders that stand in for classes."""
    special: Any = typing.Union
    return special[members]


def key_of(cls: type) -> str:
    """The ``"module:qualname"`` key of a class."""
    return f"{cls.__module__}:{cls.__qualname__}"


def display_name(key: str) -> str:
    """The class name of a key, for messages: ``"AsyncSession"``."""
    return key.rpartition(":")[2]


def register_injectable(
    cls_or_key: type | str,
    provider: Provider | None = None,
    *,
    names: Iterable[str] = (),
) -> str:
    """Make a type injectable (or update it) and return its key.

    ``provider`` replaces the current one when given. ``names`` are bare class names under
    which an unresolvable string annotation is taken to mean this type; a name may stand for
    one type only.
    """
    key = cls_or_key if isinstance(cls_or_key, str) else key_of(cls_or_key)
    module, sep, qualname = key.partition(":")
    if not (module and sep and qualname) or ":" in qualname:
        raise ValueError(f"injectable key {key!r} is not 'module:qualname'")
    wanted = list(names)
    for name in wanted:
        if not name.isidentifier():
            raise ValueError(f"injectable name {name!r} is not a bare class name")
        owner = _by_name.get(name)
        if owner is not None and owner != key:
            raise ValueError(f"injectable name {name!r} already stands for {owner}")
    entry = _entries.setdefault(key, _Entry())
    if provider is not None:
        entry.provider = provider
    for name in wanted:
        _by_name[name] = key
        entry.names.add(name)
    return key


def set_provider(key: str, provider: Provider | None) -> None:
    """Set (or clear, with None) the provider of an already registered type."""
    try:
        _entries[key].provider = provider
    except KeyError:
        raise KeyError(f"{key!r} is not injectable; register it with register_injectable") from None


def provider_for(key: str) -> Provider | None:
    """The provider of a registered type, None while the engine has not set one."""
    try:
        return _entries[key].provider
    except KeyError:
        raise KeyError(f"{key!r} is not injectable") from None


def keys() -> frozenset[str]:
    """Every registered key."""
    return frozenset(_entries)


def key_for_name(name: str) -> str | None:
    """The key registered under a bare class name, if any."""
    return _by_name.get(name)


def injectable_key(annotation: Any) -> str | None:
    """The key if ``annotation`` is an injectable type, ``X | None`` of one, or a placeholder."""
    if isinstance(annotation, InjectableRef):
        return annotation.key
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return injectable_key(typing.get_args(annotation)[0])
    if origin is typing.Union or origin is types.UnionType:
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        return injectable_key(members[0]) if len(members) == 1 else None
    if origin is None and isinstance(annotation, type):
        key = key_of(annotation)
        return key if key in _entries else None
    return None


RUN_CONTEXT = register_injectable("runner.context:RunContext", names=["RunContext"])
UPSTREAM = register_injectable("runner.context:Upstream", names=["Upstream"])
ASYNC_SESSION = register_injectable(
    "sqlalchemy.ext.asyncio.session:AsyncSession", names=["AsyncSession"]
)
HISTORY = register_injectable("runner.history:History", names=["History"])
ENGINE = register_injectable("runner.engine:Engine", names=["Engine"])
