"""The API's OpenAPI 3.0 document (``GET /openapi.json``), written out by hand."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runner.models import RunStatus

if TYPE_CHECKING:
    from runner.daemon import HttpOptions

NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
RUN_ID_PATTERN = "^[0-9a-f]{32}$"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/problem+json": {"schema": _ref("Problem")}}}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _nullable(kind: str, **more: Any) -> dict[str, Any]:
    return {"type": kind, "nullable": True, **more}


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
            "command": {"nullable": True, "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
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


def document(options: HttpOptions) -> dict[str, Any]:
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "pattern": NAME_PATTERN}}
    run_id = {"name": "run_id", "in": "path", "required": True, "schema": {"type": "string", "pattern": RUN_ID_PATTERN}}
    boolean = {"type": "string", "enum": ["true", "false"]}
    security: list[dict[str, list[str]]] = [{"bearer": []}] if options.auth_read else []
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "runner daemon API",
            "version": "1",
            "description": "Read-only by default: tasks come from git. POST starts a run only when the "
            "daemon runs with --http-allow-trigger, and only with the bearer token.",
        },
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
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
            "/api/v1/tasks/{name}/runs": {
                "post": {
                    "summary": "Run the task after its needs (only with --http-allow-trigger and the token)",
                    "security": [{"bearer": []}],
                    "parameters": [name],
                    "requestBody": {
                        "required": False,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {"parameters": {"type": "object"}},
                                }
                            }
                        },
                    },
                    "responses": {
                        "202": _json("The run is queued", {
                            "type": "object", "required": ["id", "task", "status"],
                            "properties": {
                                "id": {"type": "string", "pattern": RUN_ID_PATTERN},
                                "task": {"type": "string"},
                                "status": {"type": "string", "enum": ["queued"]},
                                "run": {"type": "string"},
                                "events": {"type": "string"},
                            },
                        }),
                        "400": _problem("The body is not JSON"),
                        "401": _problem("The bearer token is missing or wrong"),
                        "403": _problem("Triggering over HTTP is off"),
                        "404": _problem("No such task"),
                        "409": _problem("The task is disabled, orphaned, invalid or removed"),
                        "413": _problem("The body is too large"),
                        "415": _problem("The body is not application/json"),
                        "422": _problem("The body or its parameters do not fit the task"),
                        "503": _problem("The store cannot be written right now"),
                    },
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
                    "parameters": [run_id],
                    "responses": {
                        "200": {
                            "description": "events: status, output, log, end (and error)",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
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
                "get": {"summary": "This document", "responses": {"200": _json("OpenAPI 3.0", {"type": "object"})}}
            },
        },
    }
