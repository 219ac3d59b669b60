"""What a trigger may pass to one task, as a JSON Schema: documented in ``/openapi.json`` and
checked on every POST, so that the document and the server cannot disagree.

A python task's parameters come from its callable's signature (:mod:`runner.signature`): the
names it takes by keyword (not the injected ones), a JSON type for each understood annotation,
the task file's value or the signature's default as ``default`` (none is required: a task whose
file leaves out a required parameter is invalid and cannot run); ``**kwargs`` admits any other
name. A shell task takes the
names its file declares, each any JSON scalar (or any JSON value where the declared one is a list
or mapping). Everywhere: names match :data:`NAME_PATTERN`, and no string holds a NUL byte (it
cannot reach a process, and PostgreSQL's ``jsonb`` cannot store it).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Mapping, MutableMapping, MutableSequence, Sequence
from types import UnionType
from typing import TYPE_CHECKING, Any

from runner import registry
from runner.errors import RunnerError
from runner.inputs import PARAMETER_NAME, name_problem, place, text_problem
from runner.project import signature_of

if TYPE_CHECKING:
    from jsonschema.exceptions import ValidationError

    from runner.models import StoredTask

NAME_PATTERN = f"^{PARAMETER_NAME.pattern}$"
NO_NUL = "^[^\\x00]*$"
"""Strings without a NUL byte (``\\x00`` reads the same in ECMA 262 and Python regexes)."""

VALUE_REF = "#/components/schemas/JsonValue"
JSON_VALUE: dict[str, Any] = {
    "description": "Any JSON value whose strings (keys too) hold no NUL byte",
    "type": ["null", "boolean", "number", "string", "array", "object"],
    "pattern": NO_NUL,
    "items": {"$ref": VALUE_REF},
    "propertyNames": {"pattern": NO_NUL},
    "additionalProperties": {"$ref": VALUE_REF},
}
SCALAR: dict[str, Any] = {"type": ["null", "boolean", "number", "string"], "pattern": NO_NUL}

_EMPTY = inspect.Parameter.empty
_SEQUENCES = {list, tuple, set, frozenset, Sequence, MutableSequence}
_MAPPINGS = {dict, Mapping, MutableMapping}


def _any() -> dict[str, Any]:
    return {"$ref": VALUE_REF}


def value_schema(tp: Any) -> dict[str, Any]:
    """The JSON values ``runner.signature`` accepts for annotation ``tp``."""
    if tp is _EMPTY or tp is Any or tp is object:
        return _any()
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return value_schema(args[0])
    if hasattr(tp, "__supertype__"):  # NewType
        return value_schema(tp.__supertype__)
    if origin is typing.Union or origin is UnionType:
        return {"anyOf": [value_schema(a) for a in args]}
    if origin is typing.Literal:
        return {"enum": [a for a in args if a is None or isinstance(a, bool | int | float | str)]}
    if tp is None or tp is type(None):
        return {"type": "null"}
    simple = {bool: {"type": "boolean"}, int: {"type": "integer"}, float: {"type": "number"}}
    if tp in simple:
        return simple[tp]
    if tp is str:
        return {"type": "string", "pattern": NO_NUL}
    container = origin or tp
    if container in _SEQUENCES:
        if container is tuple and args and args[-1] is not Ellipsis:
            return {
                "type": "array", "prefixItems": [value_schema(a) for a in args],
                "minItems": len(args), "maxItems": len(args), "items": False,
            }
        return {"type": "array", "items": value_schema(args[0]) if args else _any()}
    if container in _MAPPINGS:
        if len(args) == 2 and args[0] not in (str, Any, _EMPTY):
            return {"type": "object", "maxProperties": 0}  # JSON keys are strings: only {} fits
        values = value_schema(args[1]) if len(args) == 2 else _any()
        return {"type": "object", "propertyNames": {"pattern": NO_NUL}, "additionalProperties": values}
    return _any()  # a class runner does not build from JSON: any value is passed as it is


def _jsonable(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | str):
        return True
    if isinstance(value, float):
        return value == value and value not in (float("inf"), float("-inf"))
    if isinstance(value, list | tuple):
        return all(_jsonable(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _jsonable(v) for k, v in value.items())
    return False


def parameters_schema(task: StoredTask) -> dict[str, Any]:
    """The schema of ``parameters`` in a trigger's body for ``task``."""
    declared = task.spec.parameters
    properties: dict[str, Any] = {}
    more: Any = False
    if task.spec.type.value == "python":
        sig = _signature(task)
        if sig is None:
            return {"type": "object", "propertyNames": {"pattern": NAME_PATTERN}, "additionalProperties": _any()}
        for param in sig.params:
            if param.inject is not None:
                continue
            schema = dict(value_schema(param.annotation))
            default = declared.get(param.name, param.default)
            if default is not _EMPTY and _jsonable(default):
                schema["default"] = list(default) if isinstance(default, tuple) else default
            properties[param.name] = schema
        if sig.accepts_var_kwargs:
            more = _any()
    else:
        for name, value in declared.items():
            schema = dict(_any() if isinstance(value, list | tuple | dict) else SCALAR)
            if _jsonable(value):
                schema["default"] = list(value) if isinstance(value, tuple) else value
            properties[name] = schema
    return {
        "type": "object",
        "properties": properties,
        "propertyNames": {"pattern": NAME_PATTERN},
        "additionalProperties": more,
    }


def _signature(task: StoredTask) -> Any:
    try:
        return signature_of(registry.resolve(task.spec.callable or ""))
    except RunnerError:
        return None  # orphaned or invalid: the task cannot run, and a trigger gets a 409


class Checker:
    """Checks a trigger's parameters against the task's schema, one validator per definition."""

    def __init__(self) -> None:
        self._validators: dict[str, tuple[StoredTask, Any]] = {}

    def problems(self, task: StoredTask, parameters: Mapping[str, Any]) -> list[str]:
        """What does not fit, one message each (empty when everything fits)."""
        from jsonschema import Draft202012Validator  # lazy, for start-up time

        cached = self._validators.get(task.name)
        if cached is None or cached[0] is not task:
            schema = {**parameters_schema(task), "components": {"schemas": {"JsonValue": JSON_VALUE}}}
            cached = self._validators[task.name] = (task, Draft202012Validator(schema))
        errors = sorted(cached[1].iter_errors(parameters), key=lambda e: [str(p) for p in e.absolute_path])
        found: list[str] = []
        for error in errors:
            message = _message(task, error, parameters)
            if message not in found:
                found.append(message)
        return found


def _message(task: StoredTask, error: ValidationError, parameters: Mapping[str, Any]) -> str:
    path = list(error.absolute_path)
    what = f"task {task.name!r}"
    if not path:
        if error.validator == "pattern":  # from propertyNames: the name itself
            return f"{what}: {name_problem(error.instance)}"
        if error.validator == "additionalProperties":
            known = sorted(error.schema.get("properties", {})) if isinstance(error.schema, Mapping) else []
            unknown = sorted(set(parameters) - set(known))
            takes = f"accepts: {', '.join(known)}" if known else "accepts no parameters"
            return f"{what}: unknown parameter(s) {', '.join(map(repr, unknown))}; {task.name!r} {takes}"
        return f"{what}: {error.message[:200]}"
    where = place(str(path[0]), "".join(f"[{p!r}]" for p in path[1:]))
    if error.validator == "pattern" and isinstance(error.instance, str):
        return f"{what}: {where}: {text_problem(error.instance) or 'contains a NUL byte'}"
    return f"{what}: {where}: {error.message[:200]}"
