"""Signature inspection of python task callables and the parameter check before a call."""

from __future__ import annotations

import functools
import importlib.util
import inspect
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any, Literal, NewType, Optional, TypedDict, Union

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

import runner
from runner.context import RunContext
from runner.errors import RunnerError, SignatureError
from runner.inject import ASYNC_SESSION, RUN_CONTEXT
from runner.signature import (
    CallableSignature,
    ParamIssue,
    check_parameters,
    inspect_callable,
)

REPO = Path(runner.__file__).resolve().parents[1]
UserId = NewType("UserId", int)


class Point(TypedDict):
    x: int
    y: int


class Custom:
    pass


def load(tmp_path: Path, source: str, name: str = "plugin_mod") -> ModuleType:
    """Import a module written to a temporary file, kept out of sys.modules."""
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check(fn: Callable[..., Any], **values: Any) -> tuple[dict[str, Any], list[str]]:
    converted, issues = check_parameters(inspect_callable(fn), values)
    return converted, [i.message for i in issues]


def issue(fn: Callable[..., Any], annotation_value: Any) -> str:
    """The single message for passing ``annotation_value`` as ``fn``'s parameter ``a``."""
    _, messages = check(fn, a=annotation_value)
    assert len(messages) == 1, messages
    return messages[0]


def accepted(fn: Callable[..., Any], value: Any) -> Any:
    converted, messages = check(fn, a=value)
    assert messages == []
    return converted["a"]


# ---- inspect_callable ---------------------------------------------------------------------


def add(a: int, b: int = 2, *, c: str | None = None) -> int:
    return a + b


async def uses_context(ctx: RunContext, session: AsyncSession | None, limit: int = 10) -> int:
    return limit


def test_params_in_order_with_required_and_defaults() -> None:
    sig = inspect_callable(add)
    assert isinstance(sig, CallableSignature)
    assert sig.qualname == "add"
    assert [(p.name, p.annotation, p.required, p.default) for p in sig.params] == [
        ("a", int, True, inspect.Parameter.empty),
        ("b", int, False, 2),
        ("c", str | None, False, None),
    ]
    assert all(p.inject is None for p in sig.params)
    assert not sig.accepts_var_kwargs
    assert not sig.is_async


def test_injected_parameters_are_found_by_type_and_never_required() -> None:
    sig = inspect_callable(uses_context)
    assert [(p.name, p.inject, p.required) for p in sig.params] == [
        ("ctx", RUN_CONTEXT, False),
        ("session", ASYNC_SESSION, False),
        ("limit", None, False),
    ]
    assert [p.name for p in sig.injected] == ["ctx", "session"]
    assert sig.is_async


def test_injection_is_by_type_never_by_name() -> None:
    def f(ctx: int, session: str) -> None: ...

    assert [p.inject for p in inspect_callable(f).params] == [None, None]


PLUGIN = """
    from __future__ import annotations

    from typing import TYPE_CHECKING, Optional

    if TYPE_CHECKING:
        import sqlalchemy.ext.asyncio as sa
        from sqlalchemy.ext.asyncio import AsyncSession

        from runner import RunContext


    async def count_runs(
        session: AsyncSession,
        maybe: AsyncSession | None,
        old: Optional[AsyncSession],
        dotted: sa.AsyncSession,
        ctx: RunContext,
        limit: int = 10,
    ) -> Undefined:
        return limit
    """


def test_type_checking_only_imports_are_recognised_as_injectable(tmp_path: Path) -> None:
    module = load(tmp_path, PLUGIN)
    sig = inspect_callable(module.count_runs)
    assert {p.name: p.inject for p in sig.params} == {
        "session": ASYNC_SESSION,
        "maybe": ASYNC_SESSION,
        "old": ASYNC_SESSION,
        "dotted": ASYNC_SESSION,
        "ctx": RUN_CONTEXT,
        "limit": None,
    }
    assert [p.name for p in sig.params if p.required] == []
    _, issues = check_parameters(sig, {"limit": 3})
    assert issues == []


def test_recognising_injectables_does_not_import_sqlalchemy(tmp_path: Path) -> None:
    (tmp_path / "plugin_mod.py").write_text(textwrap.dedent(PLUGIN))
    code = textwrap.dedent(
        """
        import sys
        import plugin_mod
        from runner.signature import inspect_callable
        sig = inspect_callable(plugin_mod.count_runs)
        print(sig.params[0].inject)
        print(sorted(m for m in sys.modules if m.split(".")[0] == "sqlalchemy"))
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == [ASYNC_SESSION, "[]"]


def test_an_unresolvable_annotation_names_the_parameter_and_the_name(tmp_path: Path) -> None:
    module = load(
        tmp_path,
        """
        from __future__ import annotations
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            import numpy as np

        def plain(a: int, x: Foo) -> None: ...
        def nested(x: list[Foo] | None = None) -> None: ...
        def dotted(x: np.ndarray) -> None: ...
        def broken(x: "int +") -> None: ...
        def quoted(x: "Foo") -> None: ...
        """,
    )
    with pytest.raises(SignatureError) as info:
        inspect_callable(module.plain)
    message = str(info.value)
    assert "parameter 'x': annotation 'Foo' cannot be resolved: name 'Foo' is not defined" in (
        message
    )
    assert "import it at module level" in message
    assert info.value.parameter == "x"
    assert isinstance(info.value, RunnerError)

    with pytest.raises(SignatureError, match=r"'list\[Foo\] \| None'.*name 'Foo' is not defined"):
        inspect_callable(module.nested)
    with pytest.raises(SignatureError, match=r"'np\.ndarray' cannot be resolved: name 'np'"):
        inspect_callable(module.dotted)
    with pytest.raises(SignatureError, match=r"parameter 'x': annotation .int \+. cannot be"):
        inspect_callable(module.broken)
    with pytest.raises(SignatureError, match="name 'Foo' is not defined"):
        inspect_callable(module.quoted)


def test_an_unresolvable_return_annotation_does_not_matter(tmp_path: Path) -> None:
    module = load(
        tmp_path,
        """
        from __future__ import annotations
        def f(a: int) -> Nowhere: ...
        """,
    )
    assert inspect_callable(module.f).params[0].annotation is int


def test_string_annotations_resolve_against_the_module_globals(tmp_path: Path) -> None:
    module = load(
        tmp_path,
        """
        from __future__ import annotations
        class Local: ...
        def f(a: Local, b: list[int] | None, c: dict[str, Local]) -> None: ...
        """,
    )
    annotations = [p.annotation for p in inspect_callable(module.f).params]
    assert annotations[0] is module.Local
    assert annotations[1] == list[int] | None


def test_var_positional_is_refused_with_what_to_change() -> None:
    def f(a: int, *args: int) -> None: ...

    with pytest.raises(SignatureError, match=r"'\*args'.*keyword arguments only; remove \*args"):
        inspect_callable(f)


def test_positional_only_without_default_is_refused_with_what_to_change() -> None:
    def f(a: int, /, b: int) -> None: ...

    with pytest.raises(SignatureError) as info:
        inspect_callable(f)
    assert "'a' is positional-only" in str(info.value)
    assert "move it after the '/'" in str(info.value)


def test_positional_only_with_default_keeps_its_default() -> None:
    def f(a: int = 1, /, b: int = 2) -> None: ...

    assert [p.name for p in inspect_callable(f).params] == ["b"]


def test_var_kwargs_accepts_and_passes_any_extra_parameter() -> None:
    def f(a: int, **rest: Any) -> None: ...

    sig = inspect_callable(f)
    assert sig.accepts_var_kwargs
    converted, issues = check_parameters(sig, {"a": 1, "anything": [1, "x"]})
    assert issues == []
    assert converted == {"a": 1, "anything": [1, "x"]}


class AsyncCallable:
    async def __call__(self, a: int) -> int:
        return a

    async def method(self, ctx: RunContext, a: int) -> int:
        return a


class SyncCallable:
    def __call__(self, a: int, ctx: RunContext) -> int:
        return a


async def coro(a: int, b: str) -> None: ...


def test_is_async_sees_through_partials_methods_and_callable_objects() -> None:
    assert inspect_callable(coro).is_async
    assert inspect_callable(functools.partial(coro, b="x")).is_async
    assert inspect_callable(AsyncCallable()).is_async
    assert inspect_callable(AsyncCallable().method).is_async
    assert not inspect_callable(SyncCallable()).is_async
    assert not inspect_callable(add).is_async


def test_callable_objects_and_bound_methods_drop_self_and_keep_hints() -> None:
    sig = inspect_callable(SyncCallable())
    assert sig.qualname == "SyncCallable.__call__"
    assert [(p.name, p.annotation, p.inject) for p in sig.params] == [
        ("a", int, None),
        ("ctx", RunContext, RUN_CONTEXT),
    ]
    assert [p.name for p in inspect_callable(AsyncCallable().method).params] == ["ctx", "a"]


def test_partial_keywords_become_defaults_and_positionals_disappear() -> None:
    sig = inspect_callable(functools.partial(coro, 1, b="x"))
    assert [(p.name, p.required, p.default) for p in sig.params] == [("b", False, "x")]


def test_decorated_functions_are_inspected_through_functools_wraps() -> None:
    def logged(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)

        return wrapper

    sig = inspect_callable(logged(add))
    assert [p.name for p in sig.params] == ["a", "b", "c"]
    assert sig.params[0].annotation is int


# ---- check_parameters: names --------------------------------------------------------------


def test_everything_wrong_is_reported_at_once_with_the_parameter_name() -> None:
    def f(count: int, b: int, ctx: RunContext, c: str = "") -> None: ...

    converted, issues = check_parameters(
        inspect_callable(f), {"count": "ten", "ctx": {}, "cuont": 1, "c": "ok"}
    )
    assert converted == {"c": "ok"}
    assert [i.name for i in issues] == ["count", "ctx", "cuont", "b"]
    assert all(isinstance(i, ParamIssue) for i in issues)


def test_missing_parameter_names_it_and_its_type() -> None:
    def f(a: int, b: list[int], c: Any, d, e: int = 1) -> None:  # type: ignore[no-untyped-def]
        ...

    _, messages = check(f)
    assert messages == [
        "missing parameter 'a' (int)",
        "missing parameter 'b' (list[int])",
        "missing parameter 'c' (Any)",
        "missing parameter 'd'",
    ]


def test_unknown_parameter_lists_what_is_accepted() -> None:
    def f(a: int, b: int, ctx: RunContext) -> None: ...

    _, messages = check(f, a=1, b=2, c=3)
    assert messages == [
        "unknown parameter 'c'; 'test_unknown_parameter_lists_what_is_accepted"
        ".<locals>.f' accepts: a, b"
    ]


def test_unknown_parameter_suggests_a_close_name() -> None:
    def daily(count: int = 1, limit: int = 2) -> None: ...

    _, messages = check(daily, cuont=1)
    assert len(messages) == 1
    assert messages[0].startswith("unknown parameter 'cuont' (did you mean 'count'?);")
    assert "accepts: count, limit" in messages[0]


def test_unknown_parameter_of_a_callable_without_parameters() -> None:
    def f(ctx: RunContext) -> None: ...

    _, messages = check(f, x=1)
    assert messages[0].endswith("accepts no parameters")


def test_a_value_for_an_injected_parameter_is_an_issue() -> None:
    converted, messages = check(uses_context, session="db", limit=3)
    assert converted == {"limit": 3}
    assert messages == [
        "parameter 'session' is injected by runner (AsyncSession); remove it from parameters"
    ]


# ---- check_parameters: types --------------------------------------------------------------


def f_int(a: int) -> None: ...
def f_float(a: float) -> None: ...
def f_str(a: str) -> None: ...
def f_bool(a: bool) -> None: ...
def f_list(a: list) -> None: ...  # type: ignore[type-arg]
def f_dict(a: dict) -> None: ...  # type: ignore[type-arg]
def f_list_int(a: list[int]) -> None: ...
def f_dict_str_int(a: dict[str, int]) -> None: ...
def f_tuple(a: tuple) -> None: ...  # type: ignore[type-arg]
def f_tuple_pair(a: tuple[int, str]) -> None: ...
def f_tuple_ints(a: tuple[int, ...]) -> None: ...
def f_optional(a: Optional[int]) -> None: ...  # noqa: UP045
def f_int_or_none(a: int | None) -> None: ...
def f_union(a: Union[int, str]) -> None: ...  # noqa: UP007
def f_float_or_int(a: float | int) -> None: ...
def f_literal(a: Literal["daily", "weekly"]) -> None: ...
def f_any(a: Any) -> None: ...
def f_bare(a) -> None: ...  # type: ignore[no-untyped-def]
def f_optional_list(a: list[int] | None) -> None: ...
def f_nested(a: dict[str, list[int]]) -> None: ...
def f_sequence(a: Sequence[str]) -> None: ...
def f_mapping(a: Mapping[str, float]) -> None: ...
def f_set(a: set[int]) -> None: ...
def f_bare_set(a: set) -> None: ...  # type: ignore[type-arg]
def f_annotated(a: Annotated[int, "doc"]) -> None: ...
def f_newtype(a: UserId) -> None: ...
def f_custom(a: Custom) -> None: ...
def f_typeddict(a: Point) -> None: ...
def f_callable(a: Callable[[int], int]) -> None: ...
def f_str_or_none(a: str | None) -> None: ...
def f_list_str(a: list[str]) -> None: ...


@pytest.mark.parametrize(
    ("fn", "value", "expected"),
    [
        (f_int, 10, 10),
        (f_int, -3, -3),
        (f_float, 1.5, 1.5),
        (f_str, "x", "x"),
        (f_bool, False, False),
        (f_list, [1, "a"], [1, "a"]),
        (f_dict, {"k": [1]}, {"k": [1]}),
        (f_list_int, [1, 2], [1, 2]),
        (f_dict_str_int, {"a": 1}, {"a": 1}),
        (f_tuple, [1, "a"], (1, "a")),
        (f_tuple_pair, [1, "a"], (1, "a")),
        (f_tuple_ints, [1, 2, 3], (1, 2, 3)),
        (f_optional, None, None),
        (f_optional, 3, 3),
        (f_int_or_none, None, None),
        (f_union, 3, 3),
        (f_union, "three", "three"),
        (f_literal, "weekly", "weekly"),
        (f_any, object, object),
        (f_bare, {"x": None}, {"x": None}),
        (f_optional_list, [1], [1]),
        (f_nested, {"a": [1, 2]}, {"a": [1, 2]}),
        (f_sequence, ["a", "b"], ["a", "b"]),
        (f_mapping, {"a": 1}, {"a": 1.0}),
        (f_set, [1, 2, 2], {1, 2}),
        (f_annotated, 4, 4),
        (f_newtype, 7, 7),
    ],
)
def test_values_that_fit(fn: Callable[..., Any], value: Any, expected: Any) -> None:
    result = accepted(fn, value)
    assert result == expected
    assert type(result) is type(expected)


def test_an_int_is_accepted_for_float_and_converted() -> None:
    result = accepted(f_float, 10)
    assert result == 10.0
    assert type(result) is float


def test_an_int_too_large_for_a_float_is_a_mismatch_not_an_error() -> None:
    _, messages = check(f_float, a=10**400)
    assert messages == ["parameter 'a': expected float, got an integer too large for a float (401 digits)"]


def test_a_union_keeps_the_member_that_fits_without_conversion() -> None:
    assert type(accepted(f_float_or_int, 3)) is int
    assert type(accepted(f_float_or_int, 3.5)) is float


@pytest.mark.parametrize(
    ("fn", "value", "message"),
    [
        (f_int, "ten", "parameter 'a': expected int, got str 'ten'"),
        (f_int, True, "parameter 'a': expected int, got bool True"),
        (f_int, 1.5, "parameter 'a': expected int, got float 1.5"),
        (f_int, None, "parameter 'a': expected int, got None"),
        (f_float, "1.5", "parameter 'a': expected float, got str '1.5'"),
        (f_float, False, "parameter 'a': expected float, got bool False"),
        (f_bool, 1, "parameter 'a': expected bool, got int 1"),
        (f_bool, "yes", "parameter 'a': expected bool, got str 'yes'"),
        (f_str, 5, "parameter 'a': expected str, got int 5"),
        (f_list, "abc", "parameter 'a': expected list, got str 'abc'"),
        (f_list, (1,), "parameter 'a': expected list, got tuple (1,)"),
        (f_dict, [1], "parameter 'a': expected dict, got list [1]"),
        (f_list_int, [1, "x"], "parameter 'a' at [1]: expected int, got str 'x'"),
        (f_dict_str_int, {"k": "v"}, "parameter 'a' at ['k']: expected int, got str 'v'"),
        (f_dict_str_int, {1: 1}, "parameter 'a' at [1]: expected str, got int 1"),
        (f_nested, {"k": [1, None]}, "parameter 'a' at ['k'][1]: expected int, got None"),
        (f_tuple_pair, [1], "parameter 'a': expected tuple[int, str] (2 items), got 1 items"),
        (f_tuple_pair, [1, 2], "parameter 'a' at [1]: expected str, got int 2"),
        (f_optional, "x", "parameter 'a': expected int | None, got str 'x'"),
        (f_int_or_none, [], "parameter 'a': expected int | None, got list []"),
        (f_union, None, "parameter 'a': expected int | str, got None"),
        (f_union, 1.5, "parameter 'a': expected int | str, got float 1.5"),
        (f_optional_list, [1, "x"], "parameter 'a' at [1]: expected int, got str 'x'"),
        (f_literal, "hourly", "parameter 'a': expected one of 'daily', 'weekly', got str 'hourly'"),
        (f_sequence, "ab", "parameter 'a': expected Sequence[str], got str 'ab'"),
        (f_set, [[1]], "parameter 'a' at [0]: expected int, got list [1]"),
        (f_bare_set, [[1]], "parameter 'a': expected set, got unhashable items"),
        (f_annotated, "4", "parameter 'a': expected int, got str '4'"),
        (f_newtype, "7", "parameter 'a': expected int, got str '7'"),
    ],
)
def test_values_that_do_not_fit(fn: Callable[..., Any], value: Any, message: str) -> None:
    assert issue(fn, value) == message


def test_a_literal_does_not_confuse_true_with_1() -> None:
    def f(a: Literal[1, 2]) -> None: ...

    assert accepted(f, 1) == 1
    assert issue(f, True) == "parameter 'a': expected one of 1, 2, got bool True"


@pytest.mark.parametrize("fn", [f_str, f_str_or_none, f_list_str, f_literal])
def test_a_boolean_where_a_string_is_expected_explains_yaml_1_1(fn: Callable[..., Any]) -> None:
    value = [True] if fn is f_list_str else True
    message = issue(fn, value)
    assert "got bool True" in message
    assert "YAML 1.1 reads plain yes/no/on/off/true/false as booleans; quote the value" in message


def test_no_yaml_hint_when_a_string_was_not_expected() -> None:
    assert "YAML" not in issue(f_int, True)


def test_long_values_are_cut_in_messages() -> None:
    message = issue(f_int, "x" * 200)
    assert message.endswith("...")
    assert len(message) < len("parameter 'a': expected int, got str ") + 45


@pytest.mark.parametrize(
    ("fn", "value"),
    [
        (f_custom, "anything"),
        (f_typeddict, {"x": "not an int"}),
        (f_callable, 3),
        (f_any, None),
        (f_bare, 1.5),
    ],
)
def test_annotations_not_understood_accept_anything(fn: Callable[..., Any], value: Any) -> None:
    assert accepted(fn, value) == value


def test_without_future_import_class_and_string_annotations_mix(tmp_path: Path) -> None:
    module = load(
        tmp_path,
        """
        from runner import RunContext

        def f(ctx: RunContext, session: "AsyncSession | None", n: "int" = 1) -> None: ...
        """,
    )
    sig = inspect_callable(module.f)
    assert [(p.name, p.inject) for p in sig.params] == [
        ("ctx", RUN_CONTEXT),
        ("session", ASYNC_SESSION),
        ("n", None),
    ]
    assert sig.params[2].annotation is int
