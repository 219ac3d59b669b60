"""The API's OpenAPI 3.1 document (``GET /openapi.json``), written out by hand.

It describes exactly what this daemon answers: the trigger operations only when triggers are
allowed, and then one operation per runnable task (up to :data:`TASK_OPERATIONS`, by name) whose
body is that task's parameters (:mod:`runner.http.parameters`), plus one for every other name.
A run's event stream is described one event at a time (OpenAPI before 3.2 reads the schema of
``text/event-stream`` so, and schemathesis checks each event against it): ``event``, ``id`` and
``data``, the JSON in ``data`` by ``contentSchema``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from runner.http.parameters import JSON_VALUE, VALUE_REF, parameters_schema
from runner.http.parameters import NAME_PATTERN as PARAMETER_NAME
from runner.models import RunStatus

if TYPE_CHECKING:
    from runner.daemon import HttpOptions
    from runner.models import StoredTask

TASK_OPERATIONS = 100
"""Runnable tasks that get a trigger operation of their own (by name); the document of a project
with thousands stays small. Beyond it, ``/api/v1/tasks/{name}/runs`` is described for any task,
with parameters only as every task takes them (names, values without NUL)."""

NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
RUN_ID_PATTERN = "^[0-9a-f]{32}$"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/problem+json": {"schema": _ref("Problem")}}}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _nullable(kind: str, **more: Any) -> dict[str, Any]:
    return {"type": [kind, "null"], **more}


_READ_ERRORS = {
    "400": _problem("A query value or header that is not valid"),
    "401": _problem("The bearer token is missing or wrong (the daemon runs with --http-auth-read)"),
    "503": _problem("The store cannot be read right now"),
}

_SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "instance": {"type": "string"},
            "errors": {"type": "array", "items": {"type": "string"}},
            "run_status": {"enum": list(RunStatus)},
        },
    },
    "Task": {
        "type": "object",
        "required": ["name", "type", "enabled", "disabled_reason", "parameters", "needs", "schedule", "source"],
        "properties": {
            "name": {"type": "string", "pattern": NAME_PATTERN},
            "type": {"type": "string", "enum": ["shell", "python"]},
            "enabled": {"type": "boolean"},
            "disabled_reason": _nullable("string"),
            "command": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}, {"type": "null"}]},
            "callable": _nullable("string"),
            "parameters": {"type": "object"},
            "needs": {"type": "array", "items": {"type": "string"}},
            "schedule": _nullable("object"),
            "source": {"type": "string"},
        },
    },
    "Run": {
        "type": "object",
        "required": ["id", "task", "type", "status", "attempt", "parameters", "queued_at"],
        "properties": {
            "id": {"type": "string", "pattern": RUN_ID_PATTERN},
            "task": {"type": "string"},
            "type": {"type": "string", "enum": ["shell", "python"]},
            "status": {"type": "string", "enum": list(RunStatus)},
            "attempt": {"type": "integer"},
            "parameters": {"type": "object"},
            "trigger": {"type": "string"},
            "parent_id": _nullable("string"),
            "invocation": _nullable("string"),
            "scheduled_for": _nullable("string", format="date-time"),
            "queued_at": {"type": "string", "format": "date-time"},
            "started_at": _nullable("string", format="date-time"),
            "finished_at": _nullable("string", format="date-time"),
            "duration_s": _nullable("number"),
            "exit_code": _nullable("integer"),
            "stdout": _nullable("string"),
            "stderr": _nullable("string"),
            "result": {"description": "the JSON of a python task's return value"},
            "error": _nullable("object"),
            "host": _nullable("string"),
            "revision": _nullable("string"),
            "git_commit": _nullable("string"),
            "queue": _nullable("string"),
            "logs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"at": {"type": "string"}, "level": {"type": "string"}, "message": {"type": "string"}},
                },
            },
        },
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "degraded", "unavailable"]},
            "store": {"type": "object"},
            "sync": {"type": "object"},
            "daemon": {"type": "object"},
        },
    },
}


def _event(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "properties": {
            "event": {"const": kind},
            "data": {"contentMediaType": "application/json", "contentSchema": data},
        }
    }


def _object(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


_SCHEMAS["JsonValue"] = JSON_VALUE
_SCHEMAS["RunEvent"] = {
    "description": "One Server-Sent Event of a run's stream, as a client parses it",
    "type": "object",
    "required": ["event", "id", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["status", "output", "log", "end", "error"]},
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "data": {"type": "string", "contentMediaType": "application/json"},
    },
    "oneOf": [
        _event("status", _ref("Run")),
        _event("output", _object(
            ["run_id", "at", "stream", "text"], run_id={"type": "string"}, at={"type": "string"},
            stream={"enum": ["stdout", "stderr"]}, text={"type": "string"},
        )),
        _event("log", _object(
            ["run_id", "at", "level", "message"], run_id={"type": "string"}, at={"type": "string"},
            level={"type": "string"}, message={"type": "string"},
        )),
        _event("end", _object(["run_id", "status"], run_id={"type": "string"}, status={"enum": list(RunStatus)})),
        _event("error", _object(["run_id", "detail"], run_id={"type": "string"}, detail={"type": "string"})),
    ],
}

_TRIGGER_ERRORS = {
    "400": _problem("The body is not JSON"),
    "401": _problem("The bearer token is missing or wrong"),
    "404": _problem("No such task"),
    "409": _problem("The task is disabled, orphaned, invalid or removed"),
    "413": _problem("The body is too large"),
    "415": _problem("The body is not application/json"),
    "422": _problem("The body is not {\"parameters\": {...}}, or the parameters do not fit the task"),
    "503": _problem("The store cannot be written right now"),
}

_ACCEPTED = _json("The run is queued; Location is the run", {
    "type": "object", "required": ["id", "task", "status", "run", "events"],
    "properties": {
        "id": {"type": "string", "pattern": RUN_ID_PATTERN},
        "task": {"type": "string"},
        "status": {"type": "string", "enum": ["queued"]},
        "run": {"type": "string"},
        "events": {"type": "string"},
    },
})


def _cancel(run_id: dict[str, Any]) -> dict[str, Any]:
    return {
        "post": {
            "summary": "Stop a queued or running run, wherever it runs (this daemon, a `runner run`, a worker)",
            "description": "The request goes through the store; the process running the run kills its task "
            "and records it `cancelled`, within about a second. Follow the run (or its events) to see that.",
            "operationId": "cancel-run",
            "security": [{"bearer": []}],
            "parameters": [run_id],
            "responses": {
                "202": _json("Asked: the run as it is now (queued or running; or cancelled, when no process "
                             "had taken it up yet)", _ref("Run")),
                "401": _problem("The bearer token is missing or wrong"),
                "404": _problem("No such run"),
                "409": _problem("The run had already finished; `run_status` says how"),
                "503": _problem("The store cannot be written right now"),
            },
        }
    }


def _trigger(summary: str, parameters: dict[str, Any], path_parameters: list[Any], operation_id: str) -> dict[str, Any]:
    body = {"type": "object", "additionalProperties": False, "properties": {"parameters": parameters}}
    return {
        "post": {
            "summary": summary,
            "operationId": operation_id,
            "security": [{"bearer": []}],
            "parameters": path_parameters,
            "requestBody": {"required": False, "content": {"application/json": {"schema": body}}},
            "responses": {
                "202": {"$ref": "#/components/responses/Accepted"},
                # By reference: 100 trigger operations make some 130 KB, not 250 KB.
                **{status: {"$ref": f"#/components/responses/Trigger{status}"} for status in _TRIGGER_ERRORS},
            },
        }
    }


def _trigger_paths(tasks: Iterable[StoredTask], name: dict[str, Any]) -> dict[str, Any]:
    runnable = sorted((t for t in tasks if t.enabled and not t.removed), key=lambda t: t.name)
    own = runnable[:TASK_OPERATIONS]
    paths = {
        f"/api/v1/tasks/{task.name}/runs": _trigger(
            f"Run {task.name} after its needs", parameters_schema(task), [], f"trigger-{task.name}"
        )
        for task in own
    }
    if len(runnable) > len(own):
        # Not "the other names" (`not: {enum}`): a fuzzer then sends a listed name as the
        # wrong input and expects a refusal. Both operations admit a listed task, and this
        # one only says what every task's parameters look like.
        paths["/api/v1/tasks/{name}/runs"] = _trigger(
            f"Run any task after its needs (the first {TASK_OPERATIONS} by name have an operation "
            "of their own, which describes their parameters)",
            {"type": "object", "propertyNames": {"pattern": PARAMETER_NAME}, "additionalProperties": {"$ref": VALUE_REF}},
            [name],
            "trigger",
        )
    return paths


def document(options: HttpOptions, tasks: Iterable[StoredTask] = ()) -> dict[str, Any]:
    """The document for a daemon with ``options`` that knows ``tasks``."""
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "pattern": NAME_PATTERN}}
    run_id = {"name": "run_id", "in": "path", "required": True, "schema": {"type": "string", "pattern": RUN_ID_PATTERN}}
    boolean = {"type": "string", "enum": ["true", "false"]}
    security: list[dict[str, list[str]]] = [{"bearer": []}] if options.auth_read else []
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "runner daemon API",
            "version": "1",
            "description": "Read-only by default: tasks come from git. POST starts a run only when the "
            "daemon runs with --http-allow-trigger (this daemon: "
            + ("allowed" if options.allow_trigger else "off, so not described here")
            + "), and only with the bearer token.",
        },
        "components": {
            "schemas": _SCHEMAS,
            "responses": {
                "Accepted": {**_ACCEPTED, "headers": {"Location": {"schema": {"type": "string"}}}},
                **{f"Trigger{status}": response for status, response in _TRIGGER_ERRORS.items()},
            },
        },
        "paths": {
            "/api/v1/tasks": {
                "get": {
                    "summary": "The tasks the daemon knows (not removed ones unless all=true)",
                    "security": security,
                    "parameters": [
                        {"name": "enabled", "in": "query", "schema": boolean},
                        {"name": "all", "in": "query", "schema": boolean},
                    ],
                    "responses": {
                        "200": _json("The tasks, by name", {
                            "type": "object", "required": ["tasks"],
                            "properties": {"tasks": {"type": "array", "items": _ref("Task")}},
                        }),
                        **_READ_ERRORS,
                    },
                }
            },
            "/api/v1/tasks/{name}": {
                "get": {
                    "summary": "One task",
                    "security": security,
                    "parameters": [name],
                    "responses": {"200": _json("The task", _ref("Task")), "404": _problem("No such task"), **_READ_ERRORS},
                }
            },
            "/api/v1/runs": {
                "get": {
                    "summary": "Run history, newest first, a page at a time",
                    "security": security,
                    "parameters": [
                        {"name": "task", "in": "query", "schema": {"type": "string", "pattern": NAME_PATTERN}},
                        {"name": "status", "in": "query", "schema": {"type": "string", "enum": list(RunStatus)}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}},
                        {"name": "before", "in": "query", "schema": {"type": "string", "pattern": RUN_ID_PATTERN},
                         "description": "a run id: the page starts after it (the `next` link)"},
                    ],
                    "responses": {
                        "200": _json("A page of runs", {
                            "type": "object", "required": ["runs", "next"],
                            "properties": {
                                "runs": {"type": "array", "items": _ref("Run")},
                                "next": _nullable("string"),
                            },
                        }),
                        "404": _problem("No such task (the task filter), or no run `before`"),
                        **_READ_ERRORS,
                    },
                }
            },
            "/api/v1/runs/{run_id}": {
                "get": {
                    "summary": "One run, with its log lines",
                    "security": security,
                    "parameters": [run_id],
                    "responses": {"200": _json("The run", _ref("Run")), "404": _problem("No such run"), **_READ_ERRORS},
                }
            },
            "/api/v1/runs/{run_id}/events": {
                "get": {
                    "summary": "The run's events (Server-Sent Events) until it ends",
                    "security": security,
                    "description": "A client that reconnects with the header `Last-Event-ID: N` (the id of an "
                    "event it got) gets what came after it; an id that is not a number from 0 to 2^63 - 1 is a 400.",
                    "parameters": [run_id],
                    "responses": {
                        "200": {
                            "description": "Server-Sent Events: status first, output and log, then the final "
                            "status and end (or error); each described here as one event",
                            "content": {"text/event-stream": {"schema": _ref("RunEvent")}},
                        },
                        "404": _problem("No such run"),
                        **_READ_ERRORS,
                    },
                }
            },
            "/health": {
                "get": {
                    "summary": "Liveness: the store answers, the last sync",
                    "responses": {
                        "200": _json("Alive (status ok, or degraded when the last sync failed)", _ref("Health")),
                        "503": _json("The store cannot be read", _ref("Health")),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "security": security,
                    "responses": {
                        "200": {"description": "Prometheus text format 0.0.4", "content": {"text/plain": {"schema": {"type": "string"}}}},
                        "401": _READ_ERRORS["401"],
                        "503": _READ_ERRORS["503"],
                    },
                }
            },
            "/openapi.json": {
                "get": {"summary": "This document", "responses": {"200": _json("OpenAPI 3.1", {"type": "object"})}}
            },
        },
    }
    if options.allow_trigger:
        doc["paths"].update(_trigger_paths(tasks, name))
        doc["paths"]["/api/v1/runs/{run_id}/cancel"] = _cancel(run_id)
        # The run a trigger queued is the one a client may then cancel.
        doc["components"]["responses"]["Accepted"] = {
            **doc["components"]["responses"]["Accepted"],
            "links": {"CancelRun": {"operationId": "cancel-run", "parameters": {"run_id": "$response.body#/id"}}},
        }
    if options.allow_trigger or options.auth_read:
        # Only where an operation asks for it: a documented scheme promises a 401 without it.
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return doc
