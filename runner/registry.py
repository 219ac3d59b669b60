"""Python task callables: ``@task`` names, ``module:qualname`` references, and plugins/ imports.

Resolution is lazy and cached; every failure becomes ``CallableNotFound`` naming the reference,
with the original error as ``__cause__``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, overload

from runner.errors import CallableNotFound, Problem

F = TypeVar("F", bound=Callable[..., Any])

_registered: dict[str, Callable[..., Any]] = {}
_resolved: dict[str, Callable[..., Any]] = {}
_plugin_failures: dict[str, str] = {}
_project: Path | None = None


@overload
def task(name_or_fn: F) -> F: ...
@overload
def task(name_or_fn: str | None = None) -> Callable[[F], F]: ...


def task(name_or_fn: str | F | None = None) -> F | Callable[[F], F]:
    """Register a callable under a short name usable as ``callable:`` in task files.

    ``@task`` registers it under its function name, ``@task("name")`` under ``name``.
    """

    def register(fn: F, name: str) -> F:
        existing = _registered.get(name)
        if existing is not None and _qualified(existing) != _qualified(fn):
            raise ValueError(
                f"@task name {name!r} is already registered by {_qualified(existing)}; "
                f"pick another name for {_qualified(fn)}"
            )
        _registered[name] = fn
        return fn

    if callable(name_or_fn):
        return register(name_or_fn, name_or_fn.__name__)
    return lambda fn: register(fn, name_or_fn or fn.__name__)


def _qualified(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"


def use_project(project: Path) -> None:
    """Make ``project``'s modules (``plugins.x``) the importable ones.

    Switching to another project in the same process (``runner.testing`` on two projects, say)
    drops the previous project's modules and registrations, so its plugins cannot answer for
    the new one's.
    """
    global _project
    root = project.resolve()
    if _project == root:
        return
    if _project is not None:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(_project))
        _drop_project_modules(_project)
    sys.path.insert(0, str(root))
    _project = root


def reload_plugins() -> None:
    """Forget the current project's imported modules and registrations, so that the next
    ``import_plugins`` and ``resolve`` import them afresh (after a file under plugins/ changed).
    Code already running keeps the functions it has."""
    if _project is not None:
        _drop_project_modules(_project)


def _drop_project_modules(root: Path) -> None:
    prefix = str(root) + os.sep
    for name, module in list(sys.modules.items()):
        origin = getattr(module, "__file__", None) or ""
        if name == "plugins" or name.startswith("plugins.") or origin.startswith(prefix):
            del sys.modules[name]
    forget()
    importlib.invalidate_caches()


def import_plugins(project: Path) -> list[Problem]:
    """Import every module under ``plugins/`` so ``@task`` registrations exist.

    A module that fails to import is reported (as a warning with its file and line) and does not
    stop the others.
    """
    plugins = project / "plugins"
    if not plugins.is_dir():
        return []
    use_project(project)
    problems = []
    for path in sorted(plugins.rglob("*.py")):
        rel = path.relative_to(project)
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if any(not p.isidentifier() for p in parts):
            continue
        module = ".".join(parts)
        try:
            _import(module)
        except BaseException as exc:  # a plugin may raise anything, even SystemExit
            if isinstance(exc, KeyboardInterrupt):
                raise
            line = _error_line(exc, path)
            message = f"cannot import {module}: {type(exc).__name__}: {exc}"
            _plugin_failures[module] = message
            problems.append(Problem(str(rel), line, 1, message, severity="warning"))
    return problems


def _import(module: str) -> Any:
    """``importlib.import_module``; a module that does not import registers nothing.

    A module that raises halfway has run its ``@task`` decorators up to that point, and an
    import retried through ``resolve`` runs them again: both would leave callables of a
    module that cannot be imported registered.
    """
    before = set(_registered)
    try:
        return importlib.import_module(module)
    except BaseException:
        for name in set(_registered) - before:
            del _registered[name]
        for name, fn in list(_registered.items()):
            if getattr(fn, "__module__", None) == module:
                del _registered[name]
        raise


def _error_line(exc: BaseException, path: Path) -> int:
    if isinstance(exc, SyntaxError) and exc.lineno:
        return exc.lineno
    target = str(path.resolve())
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename == target:
            return frame.lineno or 1
    return 1


def resolve(reference: str) -> Callable[..., Any]:
    """The callable a task's ``callable:`` names; CallableNotFound says why it cannot be had."""
    cached = _resolved.get(reference)
    if cached is not None:
        return cached
    if ":" not in reference:
        fn = _registered.get(reference)
        if fn is None:
            hint = _unregistered_hint(reference)
            raise CallableNotFound(
                f"no callable registered as {reference!r}{hint}; use 'module:qualname' or "
                f"register it with @task in plugins/"
            )
    else:
        module_name, _, qualname = reference.partition(":")
        try:
            obj: Any = _import(module_name)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise CallableNotFound(
                f"cannot import {module_name}: {type(exc).__name__}: {exc}"
            ) from exc
        for part in qualname.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError as exc:
                raise CallableNotFound(
                    f"module {module_name} has no attribute {qualname!r}"
                ) from exc
        if not callable(obj):
            raise CallableNotFound(f"{reference} is a {type(obj).__name__}, not a callable")
        fn = obj
    _resolved[reference] = fn
    return fn


def _unregistered_hint(name: str) -> str:
    import difflib  # lazy, for start-up time: only this hint needs it

    close = difflib.get_close_matches(name, list(_registered), n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    if _plugin_failures:
        return " (a plugin failed to import: " + "; ".join(_plugin_failures.values()) + ")"
    return ""


def forget() -> None:
    """Drop registrations and cached resolutions (for tests and for reloading a project)."""
    _registered.clear()
    _resolved.clear()
    _plugin_failures.clear()
