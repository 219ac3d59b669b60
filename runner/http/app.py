"""The API's routes: tasks, runs, run events, triggers, health, metrics, the OpenAPI document.

Every answer that is not a success is a problem document (``problems.py``): input is checked
before it reaches the store, and store trouble is a 503, never a traceback.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from runner import log
from runner.engine import checked_parameters
from runner.errors import ParameterError, RunnerError, RunNotFound, StoreError, TaskNotRunnable
from runner.http import events, metrics, web
from runner.http.openapi import document
from runner.http.parameters import Checker
from runner.http.problems import Problem, problem_response, reader_ok, require_reader, require_token
from runner.models import RunStatus, TaskType, iso
from runner.store import CancelOutcome

if TYPE_CHECKING:
    from runner.daemon import HttpOptions
    from runner.http.view import DaemonView

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
RUN_ID = re.compile(r"[0-9a-f]{32}")
MAX_BODY = 64 * 1024
"""Bytes a POST body may have."""
DEFAULT_LIMIT, MAX_LIMIT = 50, 500
HEALTH_TIMEOUT = 2.0
"""Seconds the store gets to answer a health check before it counts as unreachable."""

Handler = Callable[[Request], Awaitable[Response]]


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body, default=str, separators=(",", ":")),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def _answering_problems(handler: Handler) -> Handler:
    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except Problem as exc:
            return problem_response(exc.status, exc.detail, instance=request.url.path, headers=exc.headers, **exc.extra)
        except ClientDisconnect:
            # The client went, or was cut off for sending its body too slowly (limits.py
            # answered it 408): nobody reads this, and it is no error of the daemon's.
            return problem_response(400, "the client closed the connection before the body arrived")
        except StoreError as exc:
            log.logger.error(f"HTTP {request.url.path}: {exc}", extra={"event": "store_error"})
            return problem_response(503, "the store cannot be read right now; try again shortly", instance=request.url.path)
        except Exception:
            log.logger.exception(f"HTTP {request.method} {request.url.path} failed", extra={"event": "http_error"})
            return problem_response(500, "internal error; the daemon's log has the details", instance=request.url.path)

    return wrapped


# -- reading input --------------------------------------------------------------------------


def _query(request: Request, key: str) -> str | None:
    values = request.query_params.getlist(key)
    if len(values) > 1:
        raise Problem(400, f"query parameter {key!r} is given {len(values)} times; give it once")
    return values[0] if values else None


def _bool(request: Request, key: str) -> bool | None:
    value = _query(request, key)
    if value is None:
        return None
    if value not in ("true", "false"):
        raise Problem(400, f"query parameter {key!r} must be true or false, not {value!r}")
    return value == "true"


def _limit(request: Request) -> int:
    value = _query(request, "limit")
    if value is None:
        return DEFAULT_LIMIT
    if not value.isascii() or not value.isdigit() or len(value) > 9 or not 1 <= int(value) <= MAX_LIMIT:
        raise Problem(400, f"query parameter 'limit' must be an integer from 1 to {MAX_LIMIT}, not {value!r}")
    return int(value)


def _name(value: str, what: str = "task name") -> str:
    if not NAME.fullmatch(value):
        raise Problem(
            404 if what == "task name" else 400,
            f"{value!r} is not a valid {what} (letters, digits, _ . -; at most 100; starting with a letter or digit)",
        )
    return value


def _run_id(value: str, what: str = "run id") -> str:
    if not RUN_ID.fullmatch(value):
        raise Problem(404 if what == "run id" else 400, f"{value!r} is not a run id (32 lowercase hex digits)")
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number runner accepts")


async def _json_body(request: Request) -> dict[str, Any]:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or len(declared) > 9 or int(declared) > MAX_BODY):
        raise Problem(413, f"the body may have at most {MAX_BODY} bytes")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise Problem(413, f"the body may have at most {MAX_BODY} bytes")
    if not raw.strip():
        return {}
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise Problem(415, "send the body as application/json")
    try:
        body = json.loads(bytes(raw), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise Problem(400, f"the body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(body, dict):
        raise Problem(422, 'the body must be a JSON object: {"parameters": {...}}')
    unknown = sorted(set(body) - {"parameters"})
    if unknown:
        raise Problem(422, f"unknown field(s) in the body: {', '.join(map(repr, unknown))}; only 'parameters' is read")
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict):
        raise Problem(422, "'parameters' must be a JSON object of parameter names to values")
    return parameters


# -- the API --------------------------------------------------------------------------------


class Api:
    """The handlers, over one daemon."""

    def __init__(self, daemon: DaemonView, options: HttpOptions) -> None:
        self.daemon = daemon
        self.options = options
        self.metrics = metrics.Metrics(daemon)
        self.closing = anyio.Event()
        self.started_at = time.time()
        self.checker = Checker()
        self.hub = events.Hub(daemon.store, settled=daemon.settled)

    def _reader(self, request: Request) -> None:
        if self.options.auth_read:
            require_reader(request, self.options.token)

    def _known(self, name: str) -> None:
        if name not in self.daemon.engine.tasks:
            raise Problem(404, f"no task named {name!r}; GET /api/v1/tasks lists them")

    async def tasks(self, request: Request) -> Response:
        self._reader(request)
        enabled = _bool(request, "enabled")
        everything = _bool(request, "all") or False
        found = [
            task.to_json()
            for task in self.daemon.engine.tasks.values()
            if (everything or not task.removed) and (enabled is None or task.enabled == enabled)
        ]
        return json_response({"tasks": found})

    async def task(self, request: Request) -> Response:
        self._reader(request)
        name = _name(request.path_params["name"])
        stored = self.daemon.engine.tasks.get(name)
        if stored is None:
            raise Problem(404, f"no task named {name!r}; GET /api/v1/tasks lists them")
        return json_response(stored.to_json())

    async def runs(self, request: Request) -> Response:
        self._reader(request)
        task = _query(request, "task")
        if task is not None:
            _name(task, "task filter")
            self._known(task)
        status = _query(request, "status")
        if status is not None and status not in RunStatus.__members__.values():
            raise Problem(400, f"query parameter 'status' must be one of {', '.join(RunStatus)}, not {status!r}")
        before = _query(request, "before")
        if before is not None:
            _run_id(before, "before")
        limit = _limit(request)
        try:
            # One more than asked: a full last page has no ``next`` (it would lead to an empty one).
            page = await self.daemon.store.runs_before(task=task, status=status, before=before, limit=limit + 1)
        except RunNotFound:
            raise Problem(404, f"query parameter 'before': no run with id {before!r} (pruned, or never there)") from None
        following = None
        if len(page) > limit:
            page = page[:limit]
            params = {k: v for k, v in (("task", task), ("status", status)) if v is not None}
            params.update(limit=str(limit), before=page[-1].id)
            following = request.url.path + "?" + "&".join(f"{k}={v}" for k, v in params.items())
        return json_response({"runs": [run.to_json() for run in page], "next": following})

    async def run(self, request: Request) -> Response:
        self._reader(request)
        run_id = _run_id(request.path_params["run_id"])
        try:
            found = await self.daemon.store.run(run_id)
        except RunNotFound as exc:
            raise Problem(404, str(exc)) from None
        return json_response(found.to_json(with_logs=True))

    async def run_events(self, request: Request) -> Response:
        self._reader(request)
        run_id = _run_id(request.path_params["run_id"])
        await self.daemon.settled()
        if not self.hub.knows(run_id):  # else another page follows it: a hundred opening read once
            try:
                await self.daemon.store.run_status(run_id)
            except RunNotFound as exc:
                raise Problem(404, str(exc)) from None
        after = request.headers.get("last-event-id", "0").strip()
        if not after.isascii() or not after.isdigit() or len(after) > 19 or int(after) > events.MAX_EVENT_ID:
            raise Problem(400, f"Last-Event-ID must be the id of an event of this stream, not {after[:40]!r}")
        stream = events.run_events(self.hub, run_id, after=int(after), closing=self.closing)
        return StreamingResponse(
            stream,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    def _require_writes(self, request: Request, what: str) -> None:
        """405 unless the daemon allows writes (not an operation of this daemon then:
        /openapi.json leaves it out, so no method is allowed); then the bearer token."""
        if not self.options.allow_trigger:
            raise Problem(
                405,
                f"{what} over HTTP is off; the daemon allows it with --http-allow-trigger (and RUNNER_HTTP_TOKEN)",
                headers={"Allow": ""},
            )
        require_token(request, self.options.token)

    async def trigger(self, request: Request) -> Response:
        self._require_writes(request, "starting runs")
        name = _name(request.path_params["name"])
        parameters = await _json_body(request)
        self._check_parameters(name, parameters)
        try:
            # Names and values that could not reach the task (inputs.py) are a ParameterError
            # too, raised after the task is found runnable, so a 404 or 409 comes first.
            run_id = await self.daemon.run_now(name, parameters)
        except TaskNotRunnable as exc:
            raise Problem(404 if name not in self.daemon.engine.tasks else 409, str(exc)) from None
        except ParameterError as exc:
            raise Problem(422, str(exc), errors=exc.problems) from None
        location = f"/api/v1/runs/{run_id}"
        return json_response(
            {"id": run_id, "task": name, "status": RunStatus.QUEUED.value, "run": location, "events": f"{location}/events"},
            202,
            headers={"Location": location},
        )

    async def cancel(self, request: Request) -> Response:
        """Ask whichever process runs the run to stop it (``Store.request_cancel``); 202 with
        the run as it is now: the record of its end comes from that process."""
        self._require_writes(request, "cancelling runs")
        run_id = _run_id(request.path_params["run_id"])
        try:
            outcome = await self.daemon.store.request_cancel(run_id)
            found = await self.daemon.store.run(run_id)
        except RunNotFound as exc:
            raise Problem(404, str(exc)) from None
        if outcome is CancelOutcome.FINISHED:
            raise Problem(409, f"run {run_id} had already finished: {found.status.value}", run_status=found.status.value)
        log.logger.info(
            f"{found.task}: cancel of run {run_id} requested over HTTP",
            extra={"event": "cancel_requested", "task": found.task, "run_id": run_id},
        )
        return json_response(found.to_json(), 202, headers={"Location": f"/api/v1/runs/{run_id}"})

    def _check_parameters(self, name: str, parameters: dict[str, Any]) -> None:
        """422 for parameters the task does not take, as its operation in /openapi.json says
        (a task that cannot run is left to run_now: 404 or 409)."""
        stored = self.daemon.engine.tasks.get(name)
        if stored is None or not stored.enabled or stored.removed:
            return
        if stored.spec.type is TaskType.PYTHON:
            # The engine's own check first: its messages name what the callable takes.
            try:
                checked_parameters(stored.spec, {**stored.spec.parameters, **parameters})
            except ParameterError as exc:
                raise Problem(422, str(exc), errors=exc.problems) from None
            except RunnerError:
                return  # its callable does not resolve now: run_now says so (409)
        problems = self.checker.problems(stored, parameters)
        if problems:
            raise Problem(422, "; ".join(problems), errors=problems)

    async def health(self, request: Request) -> Response:
        store_error = None
        try:
            with anyio.fail_after(HEALTH_TIMEOUT):
                await self.daemon.store.ping()
        except StoreError as exc:
            store_error = str(exc)
        except TimeoutError:
            store_error = f"the store did not answer within {HEALTH_TIMEOUT:g}s"
        sync = self.daemon.sync_state
        if store_error is not None:
            status = "unavailable"
        else:
            status = "ok" if sync.last_error is None else "degraded"
        body: dict[str, Any] = {"status": status}
        if not self.options.auth_read or reader_ok(request, self.options.token):
            body.update(
                store={"ok": store_error is None, "error": store_error},
                sync={
                    "ok": sync.last_error is None,
                    "last_ok_at": iso(sync.last_ok_at),
                    "last_error": sync.last_error,
                    "errors": sync.errors,
                },
                daemon={"started_at": iso(self.started_at), "tasks": len(self.daemon.engine.tasks), "scheduled": len(self.daemon.states)},
            )
        return json_response(body, 503 if store_error is not None else 200, headers={"Cache-Control": "no-store"})

    async def prometheus(self, request: Request) -> Response:
        self._reader(request)
        return Response(await self.metrics.render(), media_type=metrics.CONTENT_TYPE)

    async def openapi(self, request: Request) -> Response:
        return json_response(document(self.options, self.daemon.engine.tasks.values()))


async def _http_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail = {404: f"no such endpoint: {request.url.path}; GET /openapi.json lists them",
              405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
    return problem_response(exc.status_code, detail, instance=request.url.path, headers=dict(exc.headers or {}))


def build_app(daemon: DaemonView, options: HttpOptions) -> Starlette:
    api = Api(daemon, options)

    def route(path: str, handler: Handler, method: str = "GET") -> Route:
        return Route(path, _answering_problems(handler), methods=[method])

    app = Starlette(
        routes=[
            route("/api/v1/tasks", api.tasks),
            route("/api/v1/tasks/{name}", api.task),
            route("/api/v1/tasks/{name}/runs", api.trigger, "POST"),
            route("/api/v1/runs", api.runs),
            route("/api/v1/runs/{run_id}", api.run),
            route("/api/v1/runs/{run_id}/events", api.run_events),
            route("/api/v1/runs/{run_id}/cancel", api.cancel, "POST"),
            route("/health", api.health),
            route("/metrics", api.prometheus),
            route("/openapi.json", api.openapi),
            *web.routes(daemon, options, api.closing),
        ],
        exception_handlers={HTTPException: _http_problem},
    )
    app.state.closing = api.closing
    return app

