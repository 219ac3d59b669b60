"""/openapi.json as a pure function of the daemon's options and tasks, and the parameter schemas
it holds: a value fits an annotation's schema exactly when ``runner.signature`` accepts it."""

from __future__ import annotations

import inspect
from typing import Any, Literal

import pytest
from jsonschema import Draft202012Validator

from runner.daemon import HttpOptions
from runner.http.openapi import TASK_OPERATIONS, document
from runner.http.parameters import JSON_VALUE, value_schema
from runner.models import StoredTask, TaskSpec, TaskType
from runner.signature import _convert, _Mismatch


def shell(name: str, *, enabled: bool = True, removed: bool = False) -> StoredTask:
    spec = TaskSpec(name, TaskType.SHELL, None, command="echo", parameters={"x": 1})  # type: ignore[arg-type]
    return StoredTask(name, spec, enabled, None if enabled else "declared", removed)


def trigger_paths(doc: dict[str, Any]) -> set[str]:
    return {p for p in doc["paths"] if p.startswith("/api/v1/tasks/") and p.endswith("/runs")}


def test_without_triggers_the_document_has_no_trigger_operation() -> None:
    doc = document(HttpOptions(), [shell("a")])
    assert trigger_paths(doc) == set()
    assert doc["paths"]["/api/v1/runs"]["get"]["security"] == [] and "securitySchemes" not in doc["components"]
    read_only = document(HttpOptions(auth_read=True, token="t"), [shell("a")])
    assert read_only["paths"]["/api/v1/runs"]["get"]["security"] == [{"bearer": []}]


def test_one_operation_per_runnable_task_up_to_the_limit_then_one_for_any_task() -> None:
    options = HttpOptions(allow_trigger=True, token="t")
    few = [shell("b"), shell("a"), shell("off", enabled=False), shell("gone", removed=True)]
    assert trigger_paths(document(options, few)) == {"/api/v1/tasks/a/runs", "/api/v1/tasks/b/runs"}
    many = [shell(f"t{i:04d}") for i in range(TASK_OPERATIONS + 1)]
    paths = trigger_paths(document(options, many))
    assert len(paths) == TASK_OPERATIONS + 1 and "/api/v1/tasks/{name}/runs" in paths
    assert f"/api/v1/tasks/t{TASK_OPERATIONS:04d}/runs" not in paths  # the last by name shares it


NUL = "a\x00b"
CASES: list[tuple[Any, list[Any]]] = [
    (int, [1, -5, 2**70, 1.5, True, "1", None, [1]]),
    (float, [1, 1.5, True, "1.5", None]),
    (str, ["x", "", NUL, 1, None]),
    (bool, [True, False, 0, "true"]),
    (type(None), [None, 0, ""]),
    (list[int], [[], [1, 2], [1, "2"], [True], (1,), "12", {"a": 1}]),
    (tuple[int, str], [[1, "a"], [1], [1, "a", 2], ["a", 1]]),
    (tuple[int, ...], [[], [1, 2, 3], [1, "x"]]),
    (set[str], [["a", "a"], [], [1]]),
    (dict[str, int], [{}, {"a": 1}, {"a": "1"}, [], {"a\x00": 1}]),
    (dict[int, str], [{}, {"1": "a"}]),
    (dict, [{}, {"a": [1, {"b": None}]}, []]),
    (Literal["a", "b"], ["a", "c", 1]),
    (Literal[1, True], [1, True, 2, "1"]),
    (int | None, [None, 1, "1"]),
    (int | str, [1, "x", 1.5, None]),
    (list[int] | None, [None, [1], [1, "x"]]),
    (Any, [None, 1, "x", [1, {"a": [None]}], {"k": NUL}]),
    (inspect.Parameter.empty, [1, {"a": 1}]),
]


@pytest.mark.parametrize(("annotation", "values"), CASES, ids=[repr(a) for a, _ in CASES])
def test_a_value_fits_the_schema_exactly_when_runner_accepts_it(annotation: Any, values: list[Any]) -> None:
    schema = {**value_schema(annotation), "components": {"schemas": {"JsonValue": JSON_VALUE}}}
    validator = Draft202012Validator(schema)
    for value in values:
        try:
            _convert(value, annotation, "")
            accepted = not _holds_nul(value)  # the HTTP API refuses NUL bytes runner would take
        except _Mismatch:
            accepted = False
        assert validator.is_valid(value) == accepted, (annotation, value)


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, list | tuple):
        return any(_holds_nul(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    return False

