"""A python task's callable, inspected once; its parameters, checked before every call.

:func:`inspect_callable` resolves the type hints and marks the parameters runner injects
(:mod:`runner.inject`). :func:`check_parameters` compares a task's ``parameters`` with that
signature, converts what YAML gave into what the annotation asks for, and reports every misfit
at once, so ``runner validate`` can point at each one.

Understood annotations: ``int``, ``float``, ``str``, ``bool``, ``None``, ``list``/``Sequence``,
``dict``/``Mapping``, ``tuple``, ``set``/``frozenset`` (bare or parametrised), ``Literal``,
``Optional``/``Union``/``X | None`` of those, ``Annotated`` and ``NewType`` of those, ``Any`` and
no annotation. ``bool`` is not an ``int``; an ``int`` is accepted for ``float`` and converted; a
``str`` is never parsed into a number (YAML already typed it). Anything else (a custom class, a
TypedDict, an Enum, a Protocol) accepts any value: runner does not guess how to build it.
"""

from __future__ import annotations

import builtins
import difflib
import functools
import inspect
import typing
from collections.abc import Callable, Collection, Mapping, MutableMapping, MutableSequence, Sequence
from dataclasses import dataclass
from types import UnionType
from typing import Any, NoReturn

from runner.errors import SignatureError
from runner.inject import InjectableRef, display_name, injectable_key, key_for_name, union

_EMPTY = inspect.Parameter.empty
_NONE = type(None)
_SEQUENCES = {list, tuple, set, frozenset, Sequence, MutableSequence}
_ACCEPTED_FOR: dict[Any, tuple[type[Collection[Any]], ...]] = {
    list: (list,),
    set: (list, tuple, set, frozenset),
    frozenset: (list, tuple, set, frozenset),
}
_MAPPINGS = {dict, Mapping, MutableMapping}
_YAML_BOOL_HINT = " (YAML 1.1 reads plain yes/no/on/off/true/false as booleans; quote the value)"


@dataclass(frozen=True)
class Param:
    """One parameter a python task can receive by keyword."""

    name: str
    annotation: Any  # the resolved annotation, or inspect.Parameter.empty
    inject: str | None  # injectable key, or None for a regular parameter
    required: bool  # no default and not injected
    default: Any  # inspect.Parameter.empty if none


@dataclass(frozen=True)
class CallableSignature:
    """What runner needs to know to call a python task: its parameters and whether to await."""

    qualname: str
    params: tuple[Param, ...]
    accepts_var_kwargs: bool
    is_async: bool

    @functools.cached_property  # asked for at every call of the task
    def injected(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.inject is not None)


@dataclass(frozen=True)
class ParamIssue:
    """One parameter that does not fit; ``name`` is the parameter it is about."""

    name: str
    message: str


def inspect_callable(fn: Callable[..., Any]) -> CallableSignature:
    """Read ``fn``'s signature and resolve its hints; raise SignatureError if it cannot be called."""
    source = _hint_source(fn)
    qualname = getattr(source, "__qualname__", None) or repr(fn)
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise SignatureError(f"cannot read the signature of {qualname}: {exc}") from exc
    hints = _type_hints(source)
    globalns = getattr(inspect.unwrap(source), "__globals__", {})
    params: list[Param] = []
    var_kwargs = False
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            var_kwargs = True
            continue
        if p.kind is p.VAR_POSITIONAL:
            raise SignatureError(
                f"parameter '*{p.name}': python tasks receive keyword arguments only;"
                f" remove *{p.name} (use **kwargs to accept any parameter)",
                parameter=p.name,
            )
        if p.kind is p.POSITIONAL_ONLY:
            if p.default is _EMPTY:
                raise SignatureError(
                    f"parameter {p.name!r} is positional-only and python tasks receive keyword"
                    " arguments only; move it after the '/' or give it a default",
                    parameter=p.name,
                )
            continue  # can never be passed by keyword, so it always keeps its default
        if p.annotation is _EMPTY:
            annotation: Any = _EMPTY
        elif hints is not None and p.name in hints:
            annotation = hints[p.name]
        else:
            annotation = _resolve(p.name, p.annotation, globalns)
        key = injectable_key(annotation)
        required = key is None and p.default is _EMPTY
        params.append(Param(p.name, annotation, key, required, p.default))
    return CallableSignature(qualname, tuple(params), var_kwargs, _is_async(fn))


def check_parameters(
    sig: CallableSignature, values: Mapping[str, Any]
) -> tuple[dict[str, Any], list[ParamIssue]]:
    """Values converted for the call (regular parameters only), and every issue found."""
    by_name = {p.name: p for p in sig.params}
    accepted = [p.name for p in sig.params if p.inject is None]
    converted: dict[str, Any] = {}
    issues: list[ParamIssue] = []
    for name, value in values.items():
        param = by_name.get(name)
        if param is None:
            if sig.accepts_var_kwargs:
                converted[name] = value  # **kwargs carries no per-name type to check against
            else:
                issues.append(ParamIssue(name, _unknown(name, sig.qualname, accepted)))
        elif param.inject is not None:
            issues.append(
                ParamIssue(
                    name,
                    (
                        f"parameter {name!r} is injected by runner ({display_name(param.inject)});"
                        " remove it from parameters"
                    ),
                )
            )
        else:
            try:
                converted[name] = _convert(value, param.annotation, "")
            except _Mismatch as exc:
                where = f" at {exc.path}" if exc.path else ""
                issues.append(ParamIssue(name, f"parameter {name!r}{where}: {exc.message}"))
    for p in sig.params:
        if p.required and p.name not in values:
            kind = "" if p.annotation is _EMPTY else f" ({_describe(p.annotation)})"
            issues.append(ParamIssue(p.name, f"missing parameter {p.name!r}{kind}"))
    return converted, issues


def _unknown(name: str, qualname: str, accepted: list[str]) -> str:
    close = difflib.get_close_matches(name, accepted, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    takes = f"accepts: {', '.join(accepted)}" if accepted else "accepts no parameters"
    return f"unknown parameter {name!r}{hint}; {qualname!r} {takes}"


def _hint_source(fn: Any) -> Any:
    """The function whose annotations describe what calling ``fn`` takes."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if isinstance(fn, type):
        return typing.cast(Any, fn).__init__
    if not inspect.isroutine(fn) and callable(fn):
        return type(fn).__call__
    return fn


def _is_async(fn: Any) -> bool:
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    if isinstance(fn, type) or inspect.isroutine(fn):
        return False
    return inspect.iscoroutinefunction(type(fn).__call__)


def _type_hints(source: Any) -> dict[str, Any] | None:
    """All hints at once when they resolve; None sends each parameter to :func:`_resolve`."""
    try:
        return typing.get_type_hints(source, include_extras=False)
    except Exception:  # any failure: the per-parameter pass says which one and why
        return None


def _resolve(name: str, raw: Any, globalns: dict[str, Any]) -> Any:
    """Evaluate one annotation; a missing name registered as injectable becomes its placeholder."""
    if not isinstance(raw, str):
        return raw
    ns = _Namespace(globalns)
    try:
        value = eval(raw, globalns, ns)
    except Exception as exc:
        reason = f"name {ns.missing[0]!r} is not defined" if ns.missing else repr(exc)
        raise _unresolved(name, raw, reason) from exc
    pending = _find_pending(value)
    if pending is not None:
        raise _unresolved(name, raw, f"name {pending.path.split('.')[0]!r} is not defined")
    if (
        isinstance(value, str) and value != raw
    ):  # '"Foo"' under `from __future__ import annotations`
        return _resolve(name, value, globalns)
    return value


def _unresolved(name: str, raw: str, reason: str) -> SignatureError:
    return SignatureError(
        f"parameter {name!r}: annotation {raw!r} cannot be resolved: {reason};"
        " import it at module level (imports under TYPE_CHECKING do not exist at run time)",
        parameter=name,
    )


class _Namespace(dict[str, Any]):
    """Locals for ``eval`` that fall back to globals, builtins, injectable names, then a stub."""

    def __init__(self, globalns: dict[str, Any]) -> None:
        super().__init__()
        self.globalns = globalns
        self.missing: list[str] = []

    def __missing__(self, name: str) -> Any:
        if name in self.globalns:
            return self.globalns[name]
        if hasattr(builtins, name):
            return getattr(builtins, name)
        key = key_for_name(name)
        if key is not None:
            return InjectableRef(key)
        self.missing.append(name)
        return _Pending(name)


class _Pending:
    """An undefined name, kept alive so ``sa.AsyncSession`` can still reach a registered name."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        key = key_for_name(attr)
        return InjectableRef(key) if key is not None else _Pending(f"{self.path}.{attr}")

    def __getitem__(self, item: Any) -> _Pending:
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(f"{self.path} is not defined")

    def __or__(self, other: Any) -> Any:
        return union(self, other)

    def __ror__(self, other: Any) -> Any:
        return union(other, self)


def _find_pending(tp: Any) -> _Pending | None:
    if isinstance(tp, _Pending):
        return tp
    for arg in typing.get_args(tp):
        found = _find_pending(arg)
        if found is not None:
            return found
    return None


class _Mismatch(Exception):
    """A value that does not fit; ``path`` is where inside the parameter, like ``[2]['x']``."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message


def _mismatch(path: str, tp: Any, value: Any) -> _Mismatch:
    hint = _YAML_BOOL_HINT if isinstance(value, bool) and _wants_str(tp) else ""
    return _Mismatch(path, f"expected {_describe(tp)}, got {_got(value)}{hint}")


def _convert(value: Any, tp: Any, path: str) -> Any:
    """``value`` as ``tp`` wants it, or raise _Mismatch; annotations not understood take anything."""
    if tp is _EMPTY or tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return _convert(value, args[0], path)
    if hasattr(tp, "__supertype__"):  # NewType
        return _convert(value, tp.__supertype__, path)
    if origin is typing.Union or origin is UnionType:
        return _convert_union(value, tp, args, path)
    if origin is typing.Literal:
        if any(type(value) is type(a) and value == a for a in args):
            return value
        raise _mismatch(path, tp, value)
    if tp is None or tp is _NONE:
        if value is None:
            return None
        raise _mismatch(path, tp, value)
    if tp is bool or tp is str:
        if isinstance(value, tp):
            return value
        raise _mismatch(path, tp, value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _mismatch(path, tp, value)
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an int past 1.8e308
                raise _Mismatch(path, f"expected float, got an integer too large for a float ({len(str(value))} digits)") from None
        raise _mismatch(path, tp, value)
    container = origin or tp
    if container in _SEQUENCES:
        return _convert_items(value, tp, container, args, path)
    if container in _MAPPINGS:
        if not isinstance(value, Mapping):
            raise _mismatch(path, tp, value)
        if len(args) != 2:
            return dict(value)
        return {
            _convert(k, args[0], f"{path}[{k!r}]"): _convert(v, args[1], f"{path}[{k!r}]")
            for k, v in value.items()
        }
    return value


def _convert_union(value: Any, tp: Any, members: tuple[Any, ...], path: str) -> Any:
    others = [m for m in members if m is not None and m is not _NONE]
    if value is None and len(others) < len(members):
        return None
    first: Any = _EMPTY
    failures: list[_Mismatch] = []
    for member in others:
        try:
            converted = _convert(value, member, path)
        except _Mismatch as exc:
            failures.append(exc)
            continue
        if type(converted) is type(value):  # prefer the member that keeps the value as it is
            return converted
        if first is _EMPTY:
            first = converted
    if first is not _EMPTY:
        return first
    if len(failures) == 1 and failures[0].path != path:
        raise failures[0]  # "X | None" with a bad item deep inside: say which item
    raise _mismatch(path, tp, value)


def _convert_items(value: Any, tp: Any, container: Any, args: tuple[Any, ...], path: str) -> Any:
    # YAML has no tuples or sets: a list is what arrives for every sequence-like annotation.
    allowed: tuple[type[Collection[Any]], ...] = _ACCEPTED_FOR.get(container, (list, tuple))
    if not isinstance(value, allowed):
        raise _mismatch(path, tp, value)
    given: list[Any] = list(value)
    if container is tuple and args and args[-1] is not Ellipsis:
        if len(given) != len(args):
            raise _Mismatch(
                path, f"expected {_describe(tp)} ({len(args)} items), got {len(given)} items"
            )
        pairs = enumerate(zip(given, args, strict=True))
        return tuple(_convert(v, a, f"{path}[{i}]") for i, (v, a) in pairs)
    item_tp = args[0] if args else Any
    items = [_convert(v, item_tp, f"{path}[{i}]") for i, v in enumerate(given)]
    if container in (set, frozenset):
        try:
            return container(items)
        except TypeError:
            raise _Mismatch(path, f"expected {_describe(tp)}, got unhashable items") from None
    return tuple(items) if container is tuple else items


def _wants_str(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated or origin is typing.Union or origin is UnionType:
        return any(_wants_str(a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return any(isinstance(a, str) for a in typing.get_args(tp))
    return tp is str


def _describe(tp: Any, nested: bool = False) -> str:
    """An annotation as a user reads it: ``list[int]``, ``int | None``, ``one of 'a', 'b'``."""
    if tp is None or tp is _NONE:
        return "None"
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return _describe(args[0], nested)
    if origin is typing.Union or origin is UnionType:
        return " | ".join(_describe(a, nested=True) for a in args)
    if origin is typing.Literal:
        if nested or len(args) == 1:
            return " | ".join(repr(a) for a in args)
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else _describe(a, nested=True) for a in args)
        return f"{_describe(origin)}[{inner}]" if args else _describe(origin)
    if isinstance(tp, type):
        return tp.__qualname__
    return repr(tp).replace("typing.", "")


def _got(value: Any) -> str:
    if value is None:
        return "None"
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{type(value).__name__} {text}"
