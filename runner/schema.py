"""The task-file JSON Schema: where it is, its validator, and its findings said plainly.

``problems`` turns one jsonschema error into what a person reads (``task 'a': timeout: '5x' is
not a duration ...``), placed at the key or value it is about; ``expects_string`` says where
the schema wants text, so the YAML reader can flag a plain ``no`` there.
"""

from __future__ import annotations

import difflib
import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runner.inputs import text_problem

Path_ = tuple[str | int, ...]
"""Where a value stands in a file's data: keys and list indexes from the top."""

Finding = tuple[Path_, str, bool]
"""A schema problem: where, the message, and whether it points at the key (not the value)."""


def schema_file() -> Path:
    """The task-file JSON Schema's file, in the installed package or the source checkout."""
    here = Path(__file__).parent
    for candidate in (here / "tasks.schema.json", here.parent / "schemas" / "tasks.schema.json"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("tasks.schema.json is missing from the runner installation")


@functools.cache
def load_schema() -> dict[str, Any]:
    """The task-file JSON Schema."""
    schema: dict[str, Any] = json.loads(schema_file().read_text(encoding="utf-8"))
    return schema


@functools.cache
def validator() -> Any:
    """A jsonschema validator of the schema. Imported lazily, for start-up time: only data
    that may be invalid needs jsonschema (see ``precheck.py``)."""
    from jsonschema import Draft202012Validator

    return Draft202012Validator(load_schema())


def label(where: Path_) -> str:
    if len(where) >= 2 and where[0] == "tasks":
        rest = ".".join(repr(p) if isinstance(p, str) and text_problem(p) else str(p) for p in where[2:])
        return f"task {where[1]!r}" + (f": {rest}" if rest else "")
    return ".".join(str(p) for p in where) or "file"


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "a mapping"


def problems(error: Any) -> Iterator[Finding]:
    """What one jsonschema error means, said plainly (none when another finding says it)."""
    where: Path_ = tuple(error.absolute_path)
    kind = error.validator
    if kind == "pattern" and isinstance(error.instance, str) and text_problem(error.instance):
        return  # reported where the file was read, with a message that says what
    schema = error.schema if isinstance(error.schema, dict) else {}
    said = label(where)
    defs = load_schema()["$defs"]
    if (kind == "pattern" and schema == defs["duration"]["then"]) or (
        kind in ("type", "minimum") and schema == defs["duration"]["else"]
    ):
        yield where, f"{said}: {error.instance!r} is not a duration (use 90s, 5m, 1h30m, 2d, 0.5s or seconds)", False
        return
    if kind == "pattern" and where[-1:] == ("cwd",):
        yield where, f"{said}: {error.instance!r} is not a path inside the project: write it relative to the project directory, without '..'", False
        return
    if kind == "pattern" and where[-1:] == ("from_file",):
        yield where, f"{said}: {error.instance!r} leaves the project: write an absolute path, or one relative to the project directory without '..'", False
        return
    if kind is None and error.schema is False and len(where) == 2 and where[0] == "tasks":
        # a key the task's type forbids (the schema's `then`/`else` on `type`); jsonschema
        # leaves the key out of the paths of a `false` schema's error, but `then` is python's
        if "then" in error.relative_schema_path:
            yield (*where, "command"), f"{said}: a python task takes 'callable', not 'command'", True
        else:
            yield (*where, "callable"), f"{said}: 'callable' needs 'type: python'", True
        return
    if kind == "oneOf" and where[-1:] == ("schedule",) and isinstance(error.instance, dict):
        if any(key not in schema.get("properties", {}) for key in error.instance):
            return  # a misspelt key: its own problem says which it may have meant
        if "cron" in error.instance and "every" in error.instance:
            yield (*where, "every"), f"{said}: give 'cron' or 'every', not both", True
        else:
            yield where, f"{said}: needs 'cron' (a cron expression) or 'every' (a DURATION)", False
        return
    if kind == "additionalProperties":
        known = list(schema.get("properties", {}))
        for key in error.instance:
            if key in known or not isinstance(key, str):
                continue
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(known)})"
            yield (*where, key), f"{said}: unknown key {key!r}{hint}", True
        return
    if "propertyNames" in error.relative_schema_path:
        name = error.instance
        if where == ("tasks",):
            message = (
                f"invalid task name {name!r}: use 1-100 letters, digits, '_', '.' or '-', "
                "starting with a letter or digit"
            )
        else:
            message = f"{said}: invalid name {name!r}: use letters, digits and '_', not starting with a digit"
        yield (*where, name), message, True
        return
    if kind == "required" and "dependentSchemas" in error.relative_schema_path:
        yield (*where, "timezone"), f"{said}: 'timezone' goes with 'cron' ('every' needs none)", True
        return
    if kind == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        what = {"command": "a shell task needs a 'command'", "callable": "a python task needs a 'callable'"}
        detail = what.get(missing) if len(where) == 2 and where[0] == "tasks" else None
        yield where, f"{said}: {detail or f'missing required key {missing!r}'}", True
        return
    if kind == "type":
        expected = schema.get("type")
        want = " or ".join(expected) if isinstance(expected, list) else expected
        want = {"object": "a mapping", "array": "a list", "string": "a string", "boolean": "true or false",
                "integer": "an integer", "number": "a number"}.get(str(want), str(want))
        yield where, f"{said}: expected {want}, found {_describe(error.instance)}", False
        return
    if kind == "const" and where == ("version",):
        yield where, f"version must be 1, found {error.instance!r}", False
        return
    if kind == "enum":
        options = ", ".join(str(o) for o in schema.get("enum", []))
        yield where, f"{said}: {error.instance!r} is not one of: {options}", False
        return
    if kind == "pattern" and where and where[-2:-1] == ("needs",):
        yield where, f"{said}: {error.instance!r} is not a valid task name", False
        return
    if kind == "pattern" and where[-1:] == ("callable",):
        yield where, f"{said}: {error.instance!r} is not 'module:qualname' or a registered name", False
        return
    yield where, f"{said}: {error.message}", False


def expects_string(where: Path_) -> bool:
    """Whether the schema wants a string at ``where`` (so a plain ``no`` there is a trap)."""
    if len(where) < 3 or where[0] != "tasks":
        return False
    field_, depth = where[2], len(where)
    if field_ in ("description", "callable", "cwd", "type"):
        return depth == 3
    if field_ in ("command", "needs", "tags"):
        return depth <= 4
    if field_ == "env":
        return depth == 4
    if field_ == "schedule":
        return depth == 3 or (depth == 4 and where[3] in ("cron", "timezone", "misfire", "overlap"))
    return False
