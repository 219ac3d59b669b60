"""The injectable-type registry: keys, providers, names, and how annotations map to keys."""

from __future__ import annotations

import subprocess
import sys
import typing
from inspect import Parameter
from pathlib import Path
from typing import Annotated, Any, Optional, Union

import pytest

import runner
from runner import inject
from runner.context import RunContext
from runner.inject import (
    ASYNC_SESSION,
    RUN_CONTEXT,
    InjectableRef,
    injectable_key,
    key_for_name,
    key_of,
    keys,
    provider_for,
    register_injectable,
    set_provider,
)

REPO = Path(runner.__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made by a test vanish after it."""
    entries = {k: inject._Entry(e.provider, set(e.names)) for k, e in inject._entries.items()}
    monkeypatch.setattr(inject, "_entries", entries)
    monkeypatch.setattr(inject, "_by_name", dict(inject._by_name))


class Clock:
    pass


class SubContext(RunContext):
    pass


def test_builtin_keys_are_where_the_classes_are_defined() -> None:
    from sqlalchemy.ext.asyncio import AsyncSession

    assert RUN_CONTEXT == key_of(RunContext) == "runner.context:RunContext"
    assert key_of(AsyncSession) == ASYNC_SESSION
    assert ASYNC_SESSION == "sqlalchemy.ext.asyncio.session:AsyncSession"
    assert {RUN_CONTEXT, ASYNC_SESSION} <= keys()
    assert key_for_name("AsyncSession") == ASYNC_SESSION
    assert key_for_name("RunContext") == RUN_CONTEXT


def test_builtins_have_no_provider_until_the_engine_sets_one() -> None:
    # In a fresh interpreter: in this one, any test that ran the engine has imported it already.
    code = (
        "from runner.inject import RUN_CONTEXT, provider_for\n"
        "before = provider_for(RUN_CONTEXT)\n"
        "import runner.engine\n"
        "print(before is None, provider_for(RUN_CONTEXT) is not None)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["True", "True"]

    def provide(scope: Any) -> Any:
        return scope

    set_provider(RUN_CONTEXT, provide)
    assert provider_for(RUN_CONTEXT) is provide


@pytest.mark.parametrize(
    "annotation",
    [
        RunContext,
        Optional[RunContext],  # noqa: UP045 - the old spelling must work too
        Union[RunContext, None],  # noqa: UP007
        RunContext | None,
        None | RunContext,
        Annotated[RunContext, "meta"],
        InjectableRef(RUN_CONTEXT),
        InjectableRef(RUN_CONTEXT) | None,
        typing.Optional[InjectableRef(RUN_CONTEXT)],  # type: ignore[misc]  # noqa: UP045
    ],
)
def test_injectable_key_recognises_a_type_and_its_optional(annotation: Any) -> None:
    assert injectable_key(annotation) == RUN_CONTEXT


@pytest.mark.parametrize(
    "annotation",
    [int, str, list[int], Clock, SubContext, RunContext | int, "RunContext", None, Parameter.empty],
)
def test_injectable_key_rejects_everything_else(annotation: Any) -> None:
    # A subclass is not matched: matching is by exact class, documented in runner.inject.
    assert injectable_key(annotation) is None


def test_register_a_class_with_provider_and_names() -> None:
    def provide(scope: Any) -> Clock:
        return Clock()

    key = register_injectable(Clock, provide, names=["Clock"])
    assert key == f"{__name__}:Clock"
    assert injectable_key(Clock) == key
    assert injectable_key(Clock | None) == key
    assert provider_for(key) is provide
    assert key_for_name("Clock") == key


def test_register_by_key_without_importing_and_set_the_provider_later() -> None:
    key = register_injectable("somewhere.heavy:Thing", names=["Thing"])
    assert key in keys()
    assert provider_for(key) is None
    set_provider(key, lambda scope: "thing")
    provider = provider_for(key)
    assert provider is not None
    assert provider(object()) == "thing"
    # Registering again without a provider keeps the one that is set.
    register_injectable(key)
    assert provider_for(key) is provider


def test_a_name_stands_for_one_type_only() -> None:
    with pytest.raises(ValueError, match="'AsyncSession' already stands for sqlalchemy"):
        register_injectable("other.lib:AsyncSession", names=["AsyncSession"])


@pytest.mark.parametrize("key", ["Thing", "mod:", ":Thing", "a:b:c"])
def test_a_key_must_be_module_colon_qualname(key: str) -> None:
    with pytest.raises(ValueError, match="module:qualname"):
        register_injectable(key)


def test_a_name_must_be_bare() -> None:
    with pytest.raises(ValueError, match="bare class name"):
        register_injectable("mod:Thing", names=["mod.Thing"])


def test_unknown_keys_are_lookup_errors() -> None:
    with pytest.raises(KeyError, match="register_injectable"):
        set_provider("nowhere:Nothing", lambda scope: None)
    with pytest.raises(KeyError, match="not injectable"):
        provider_for("nowhere:Nothing")


def test_importing_inject_imports_neither_sqlalchemy_nor_jsonschema() -> None:
    code = (
        "import sys, runner.inject\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'jsonschema'))\n"
        "print(heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
