"""A fast, conservative check of task-file data against the schema.

Validating with jsonschema costs about 140 µs per task, most of it spent on ``oneOf`` branches
that do not match; on 10,000 tasks that is two seconds of a sync. ``plainly_valid`` walks the
data once and says True only when the schema certainly accepts it, so jsonschema (and its
import) is needed only for data that may be invalid, where it finds the errors and their
positions. It may say False for valid data (jsonschema then decides); it must never say True
for invalid data, which ``tests/unit/test_precheck.py`` checks against jsonschema itself.
The patterns are taken from the schema, so the two cannot drift apart on those.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

from runner.schema import load_schema

_TASK_KEYS = frozenset(
    {
        "type", "command", "callable", "parameters", "enabled", "description", "needs",
        "schedule", "timeout", "retries", "env", "cwd", "tags", "concurrency", "queue",
    }
)


@functools.cache
def _checks() -> dict[str, Callable[[Any], bool]]:
    """One checker per task field (and for names), with the schema's own patterns."""
    defs = load_schema()["$defs"]
    task = defs["task"]["properties"]

    def matcher(pattern: str) -> Callable[[Any], bool]:
        compiled = re.compile(pattern)
        return lambda value: type(value) is str and compiled.fullmatch(value) is not None

    name = matcher(defs["taskName"]["pattern"])
    duration_text = matcher(defs["duration"]["then"]["pattern"])
    inside = matcher(task["cwd"]["pattern"])
    secret_file = matcher(defs["secretRef"]["properties"]["from_file"]["pattern"])
    parameter = matcher(task["parameters"]["propertyNames"]["pattern"])
    env_name = matcher(task["env"]["propertyNames"]["pattern"])
    from_env = matcher(defs["secretRef"]["properties"]["from_env"]["pattern"])

    def text(value: Any) -> bool:
        return type(value) is str and value != ""

    def os_text(value: Any) -> bool:  # the schema's NUL-free pattern, for what reaches the OS
        return type(value) is str and "\x00" not in value

    def unique_texts(value: Any, item: Callable[[Any], bool] = text) -> bool:
        return type(value) is list and all(map(item, value)) and len(set(value)) == len(value)

    def duration(value: Any) -> bool:
        if type(value) in (int, float):
            return bool(value >= 0)
        return duration_text(value)

    def schedule(value: Any) -> bool:
        if text(value):
            return True
        if type(value) is not dict:
            return False
        if value.get("misfire", "once") not in ("once", "skip"):
            return False
        if value.get("overlap", "skip") not in ("skip", "allow"):
            return False
        if "every" in value:
            return value.keys() <= {"every", "misfire", "overlap"} and duration(value["every"])
        return (
            text(value.get("cron"))
            and value.keys() <= {"cron", "timezone", "misfire", "overlap"}
            and ("timezone" not in value or text(value["timezone"]))
        )

    def retries(value: Any) -> bool:
        if type(value) is int:
            return value >= 0
        return (
            type(value) is dict
            and value.keys() <= {"count", "backoff"}
            and type(value.get("count")) is int
            and value["count"] >= 0
            and ("backoff" not in value or duration(value["backoff"]))
        )

    def secret(value: Any) -> bool:
        if type(value) is not dict or len(value) != 1:
            return False
        if "from_env" in value:
            return from_env(value["from_env"])
        return secret_file(value.get("from_file"))

    def env(value: Any) -> bool:
        return (
            type(value) is dict
            and all(map(env_name, value))
            and all(os_text(v) or secret(v) for v in value.values())
        )

    return {
        "name": name,
        "callable": matcher(task["callable"]["pattern"]),
        "command": lambda v: (text(v) and os_text(v)) or (type(v) is list and bool(v) and all(map(os_text, v))),
        "parameters": lambda v: type(v) is dict and all(map(parameter, v)),
        "enabled": lambda v: type(v) is bool,
        "description": lambda v: type(v) is str,
        "needs": lambda v: unique_texts(v, name),
        "schedule": schedule,
        "timeout": duration,
        "retries": retries,
        "env": env,
        "cwd": inside,
        "tags": unique_texts,
        "concurrency": lambda v: type(v) is int and v >= 1,
        "queue": matcher(task["queue"]["pattern"]),
    }


_OPTIONAL = (
    "parameters", "enabled", "description", "needs", "schedule", "timeout", "retries", "env",
    "cwd", "tags", "concurrency", "queue",
)


def _task(body: Any, checks: dict[str, Callable[[Any], bool]]) -> bool:
    if type(body) is not dict or not body.keys() <= _TASK_KEYS:
        return False
    kind = body.get("type", "shell")
    if kind == "python":
        if "command" in body or not checks["callable"](body.get("callable")):
            return False
    elif kind != "shell" or "callable" in body or not checks["command"](body.get("command")):
        return False
    return all(checks[key](body[key]) for key in _OPTIONAL if key in body)


def plainly_valid(data: Any) -> bool:
    """True only if the task-file schema certainly accepts ``data``."""
    if type(data) is not dict or data.keys() != {"version", "tasks"}:
        return False
    if type(data["version"]) is not int or data["version"] != 1 or type(data["tasks"]) is not dict:
        return False
    checks = _checks()
    name = checks["name"]
    return all(name(key) and _task(body, checks) for key, body in data["tasks"].items())
