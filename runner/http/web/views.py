"""The page handlers: read what a page shows (indexed queries, a page at a time), render it,
and answer with the security headers every page and file gets.

Reads ask for the same credentials as the API's (``--http-auth-read``). A browser cannot put a
bearer token on a link it follows, so pages also take HTTP Basic credentials whose password is
the token (any user name); ``/login`` asks for them at the root path, so that the browser sends
them on with every later request to the daemon, the page's own event streams included.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import anyio
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from runner import log, registry
from runner.errors import RunnerError, RunNotFound, StoreError
from runner.http.parameters import value_schema
from runner.http.problems import reader_ok
from runner.http.web import graph, pages
from runner.http.web.html import ASSETS, esc, page
from runner.models import RunStatus, StoredTask, TaskType
from runner.project import signature_of
from runner.schedule import describe

if TYPE_CHECKING:
    from runner.daemon import HttpOptions
    from runner.http.view import DaemonView

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
HEX = re.compile(r"[0-9a-f]{32}")
TASKS_PER_PAGE = 100
RUNS_PER_PAGE = 50
HISTORY_PER_PAGE = 20
STRIP = 10
"""Runs shown per task on the overview."""
CHART = 60
"""Runs in a task's duration chart."""
OUTPUT_ROWS = 5000
"""Rows of a live run's output put in its page; the page's event stream brings them all."""
QUEUE_EVERY = 2.0
"""Seconds the queue depth in the corner, and the overview's counts of the last 24 h, are
reused before they are counted again (many open pages cost one count)."""
STATUS_WAIT = 20.0
"""Seconds ``/-/status`` holds a request open waiting for a change (long polling)."""
STATUS_STEP = 0.2
STATUS_SPREAD = 1.0
"""Seconds over which the waiting long polls answer a change of the queue depth alone: a
hundred pages answered and asking again at once delayed the daemon's fires by up to 60 ms. A
change of the reload banner is answered at once."""

Handler = Callable[[Request], Awaitable[Response]]


class PageError(Exception):
    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail


def _html(body: str, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        body, status_code=status, media_type="text/html; charset=utf-8",
        headers={**SECURITY_HEADERS, "Cache-Control": "no-store", **(headers or {})},
    )


def _query(request: Request, key: str) -> str:
    values = request.query_params.getlist(key)
    if len(values) > 1:
        raise PageError(400, "Bad request", f"{key!r} is given {len(values)} times; give it once")
    return values[0].strip() if values else ""


class Web:
    """The pages, over one daemon."""

    def __init__(self, daemon: DaemonView, options: HttpOptions, closing: anyio.Event) -> None:
        self.daemon = daemon
        self.options = options
        self.closing = closing
        self._queued: tuple[float, int | None] = (0.0, None)
        self._counts: tuple[float, dict[RunStatus, int]] = (0.0, {})
        self._index: tuple[object, dict[str, int], list[str], dict[str, list[str]]] | None = None
        self._watching = False  # a long poll is looking at the corner for all of them
        self._corner_news = anyio.Event()  # set when the corner changed, or its watcher left
        self._news_spread = 0.0  # over how long the polls it wakes answer it

    # -- plumbing ---------------------------------------------------------------------------

    def handler(self, fn: Handler) -> Handler:
        @functools.wraps(fn)
        async def wrapped(request: Request) -> Response:
            if self.options.auth_read and not reader_ok(request, self.options.token):
                if request.url.path.startswith("/-/"):
                    return _html("", 401)
                return RedirectResponse("/login?next=" + quote(_local(request), safe="/"), 303, headers=SECURITY_HEADERS)
            await self.daemon.settled()
            started = time.perf_counter()
            try:
                response = await fn(request)
                # The server's own time, for browsers' developer tools and benchmarks/bench_web.py.
                response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.1f}"
                return response
            except PageError as exc:
                return await self._error(exc.status, exc.title, exc.detail)
            except StoreError as exc:
                log.logger.error(f"HTTP {request.url.path}: {exc}", extra={"event": "store_error"})
                return await self._error(503, "Store unavailable", "The store cannot be read right now; this page tries again when reloaded.")
            except Exception:
                log.logger.exception(f"HTTP {request.method} {request.url.path} failed", extra={"event": "http_error"})
                return await self._error(500, "Internal error", "The daemon's log has the details.")

        return wrapped

    async def _error(self, status: int, title: str, detail: str) -> Response:
        return _html(page(title, f"<h1>{esc(title)}</h1><p>{esc(detail)}</p>" + '<p><a href="/">All tasks</a> · <a href="/runs">All runs</a></p>', health=await self._corner(safe=True)), status)

    async def login(self, request: Request) -> Response:
        target = _query(request, "next") or "/"
        if not target.startswith("/") or target.startswith("//") or "\\" in target:
            target = "/"
        if self.options.auth_read and not reader_ok(request, self.options.token):
            return _html(
                "<!doctype html><title>runner: sign in</title><p>This daemon wants its token "
                "(RUNNER_HTTP_TOKEN) as the password; any user name.</p>",
                401,
                {"WWW-Authenticate": 'Basic realm="runner", charset="UTF-8"'},
            )
        return RedirectResponse(target, 303, headers=SECURITY_HEADERS)

    async def static(self, request: Request) -> Response:
        asset = ASSETS.get(request.path_params["name"])
        if asset is None:
            return _html("<!doctype html><title>Not found</title><p>No such file.</p>", 404)
        cache = "public, max-age=31536000, immutable" if request.query_params.get("v") == asset.version else "no-cache"
        return Response(asset.body, media_type=asset.media_type, headers={**SECURITY_HEADERS, "Cache-Control": cache})

    # -- what every page shows ----------------------------------------------------------------

    async def _health(self, *, safe: bool = False) -> pages.Health:
        at, queued = self._queued
        store_ok = True
        if time.monotonic() - at > QUEUE_EVERY:
            # Marked fresh before the read: the other pages waiting meanwhile show the last
            # count instead of all reading at once (a hundred reads every 2 s took the store's
            # connections from the daemon's own writes).
            self._queued = (time.monotonic(), queued)
            try:
                queued = await self.daemon.store.queued_count()
            except StoreError:
                if not safe:
                    raise
                queued, store_ok = None, False
            self._queued = (time.monotonic(), queued)
        sync = self.daemon.sync_state
        return pages.Health(store_ok, queued, sync.problems, sync.last_failed_at, sync.last_ok_at)

    async def _corner(self, *, safe: bool = False) -> str:
        return pages.health_corner(await self._health(safe=safe))

    async def _page(self, title: str, body: str, current: str = "") -> Response:
        health = await self._health()
        corner, banner = pages.health_corner(health), pages.sync_banner(health)
        return _html(page(
            title, body.replace("<!--sync-->", banner, 1), health=corner, current=current, status=_digest(corner, banner)
        ))

    def _tasks(self) -> Mapping[str, StoredTask]:
        return self.daemon.engine.tasks

    def _indexes(self) -> tuple[dict[str, int], list[str], dict[str, list[str]]]:
        """Counts by state, the tags, and every task's needs: computed once per set of tasks
        (the engine replaces its mapping on each reload)."""
        tasks = self._tasks()
        if self._index is None or self._index[0] is not tasks:
            states = dict.fromkeys(pages.STATES, 0)
            tags: set[str] = set()
            needs: dict[str, list[str]] = {}
            for name, task in tasks.items():
                states[pages.task_state(task)] += 1
                tags.update(task.spec.tags)
                needs[name] = list(task.spec.needs)
            self._index = (tasks, states, sorted(tags), needs)
        return self._index[1], self._index[2], self._index[3]

    def _next_fire(self, task: StoredTask) -> float | None:
        schedule = task.spec.schedule
        if schedule is None or not task.enabled or task.removed:
            return None
        state = self.daemon.states.get(task.name)
        return state.next_fire_at if state is not None and state.schedule == schedule.key else None

    # -- pages ------------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        q, tag, state = _query(request, "q").lower(), _query(request, "tag"), _query(request, "state")
        if state and state not in pages.STATES:
            raise PageError(400, "Bad request", f"state must be one of {', '.join(pages.STATES)}, not {state!r}")
        offset_text = _query(request, "offset") or "0"
        if not offset_text.isdigit() or len(offset_text) > 9:
            raise PageError(400, "Bad request", f"offset must be a whole number, not {offset_text!r}")
        offset = int(offset_text)
        states, tags, _needs = self._indexes()
        matching = [
            task
            for name, task in self._tasks().items()
            if (not q or q in name.lower())
            and (not tag or tag in task.spec.tags)
            and (pages.task_state(task) == state if state else not task.removed)
        ]
        matching.sort(key=lambda task: task.name)
        shown = matching[offset : offset + TASKS_PER_PAGE]
        last = await self.daemon.store.recent_statuses([task.name for task in shown], STRIP)
        at, counts = self._counts
        if time.monotonic() - at > QUEUE_EVERY:
            self._counts = (time.monotonic(), counts)  # as the queue's count above
            counts = await self.daemon.store.run_counts_since(time.time() - 86400)
            self._counts = (time.monotonic(), counts)
        rows = [
            pages.OverviewRow(task, describe(task.spec.schedule) if task.spec.schedule else None, self._next_fire(task), last[task.name])
            for task in shown
        ]
        filters = {k: v for k, v in (("q", _query(request, "q")), ("tag", tag), ("state", state)) if v}
        body = pages.overview(
            pages.Overview(
                rows, len(matching), offset, TASKS_PER_PAGE, counts, states, tags, filters, "<!--sync-->",
                self.daemon.sync_state.last_ok_at,
            )
        )
        return await self._page("Tasks", body, "tasks")

    async def task(self, request: Request) -> Response:
        name = request.path_params["name"]
        stored = self._tasks().get(name) if NAME.fullmatch(name) else None
        if stored is None:
            raise PageError(404, "Not found", f"No task named {name!r}.")
        before = _query(request, "before")
        if before and not HEX.fullmatch(before):
            raise PageError(400, "Bad request", "before must be a run id (32 lowercase hex digits)")
        _states, _tags, needs = self._indexes()
        nodes, among = graph.neighbourhood(name, needs)
        try:
            history = await self.daemon.store.runs_before(task=name, before=before or None, limit=HISTORY_PER_PAGE + 1)
        except RunNotFound:
            raise PageError(404, "Not found", f"No run {before!r} (pruned, or never there).") from None
        more = history[HISTORY_PER_PAGE - 1].id if len(history) > HISTORY_PER_PAGE else None
        data = pages.TaskPage(
            task=stored,
            schedule=describe(stored.spec.schedule) if stored.spec.schedule else None,
            next_fire_at=self._next_fire(stored),
            parameters=_parameters(stored),
            needs=among,
            nodes=nodes,
            known=set(self._tasks()),
            history=history[:HISTORY_PER_PAGE],
            next_before=more,
            durations=await self.daemon.store.task_durations(name, CHART),
            allow_trigger=self.options.allow_trigger,
            banner="<!--sync-->",
            before=before,
        )
        return await self._page(name, pages.task_page(data))

    async def runs(self, request: Request) -> Response:
        task, status, invocation, before = (_query(request, k) for k in ("task", "status", "invocation", "before"))
        if task and not NAME.fullmatch(task):
            raise PageError(400, "Bad request", f"{task!r} is not a task name")
        if status and status not in RunStatus.__members__.values():
            raise PageError(400, "Bad request", f"status must be one of {', '.join(RunStatus)}, not {status!r}")
        for key, value in (("invocation", invocation), ("before", before)):
            if value and not HEX.fullmatch(value):
                raise PageError(400, "Bad request", f"{key} must be 32 lowercase hex digits, not {value!r}")
        store = self.daemon.store
        more = None
        if invocation:
            # One invocation is one workflow: a few runs, shown at once.
            found = await store.runs(task=task or None, status=status or None, invocation=invocation, limit=500)
        else:
            try:
                found = await store.runs_before(task=task or None, status=status or None, before=before or None, limit=RUNS_PER_PAGE + 1)
            except RunNotFound:
                raise PageError(404, "Not found", f"No run {before!r} (pruned, or never there).") from None
            if len(found) > RUNS_PER_PAGE:
                found = found[:RUNS_PER_PAGE]
                more = found[-1].id
        filters = {k: v for k, v in (("task", task), ("status", status), ("invocation", invocation), ("before", before)) if v}
        names = sorted(self._tasks()) if len(self._tasks()) <= 1000 else []
        body = pages.runs_page(pages.RunsPage(found, filters, more, names, "<!--sync-->"))
        return await self._page("Runs", body, "runs")

    async def run(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        if not HEX.fullmatch(run_id):
            raise PageError(404, "Not found", f"{run_id!r} is not a run id (32 lowercase hex digits).")
        store = self.daemon.store
        try:
            found = await store.run(run_id)
        except RunNotFound:
            raise PageError(404, "Not found", f"No run {run_id!r} (pruned, or never there).") from None
        output: list[tuple[str, str, str]] = []
        if found.status in (RunStatus.QUEUED, RunStatus.RUNNING):
            output = [(row.stream, row.level or "", row.message) for row in await store.log_lines(run_id, limit=OUTPUT_ROWS)]
        workflow = [found]
        if found.invocation:
            workflow = await store.runs(invocation=found.invocation, limit=500)
        _states, _tags, needs = self._indexes()
        names = {run.task for run in workflow}
        among = {name: [n for n in needs.get(name, ()) if n in names] for name in names}
        body = pages.run_page(
            pages.RunPage(found, output, workflow, among, "<!--sync-->", allow_cancel=self.options.allow_trigger)
        )
        return await self._page(f"{found.task} {pages.short(found.id)}", body, "runs")

    async def status(self, request: Request) -> Response:
        """The corner and the reload banner as JSON, once they differ from what the page has
        (``have``: their digest): a long poll, so a failed reload shows at once."""
        have = _query(request, "have")
        deadline = anyio.current_time() + STATUS_WAIT
        while True:
            digest, corner, banner = await self._corner_now()
            left = deadline - anyio.current_time()
            if digest != have or left <= 0 or self.closing.is_set():
                break
            if self._watching:
                news = self._corner_news
                with anyio.move_on_after(left):
                    await news.wait()
                    await anyio.sleep(random.uniform(0.0, self._news_spread))
            else:
                await self._watch(digest, banner, left)
        return Response(
            json.dumps({"digest": digest, "health": corner, "sync": banner}),
            media_type="application/json",
            headers={**SECURITY_HEADERS, "Cache-Control": "no-store"},
        )

    async def _corner_now(self) -> tuple[str, str, str]:
        health = await self._health(safe=True)
        corner, banner = pages.health_corner(health), pages.sync_banner(health)
        return _digest(corner, banner), corner, banner

    async def _watch(self, digest: str, banner: str, seconds: float) -> None:
        """Look at the corner every ``STATUS_STEP`` for every waiting long poll, for up to
        ``seconds``, until it differs from ``digest`` (whose reload banner is ``banner``); then
        (or when this poll goes) wake them all, and the first to wait again watches next. A
        hundred polls each looking were 500 wake-ups a second; now 5."""
        self._watching = True
        self._news_spread = 0.0
        try:
            with anyio.move_on_after(seconds):
                while not self.closing.is_set():
                    with anyio.move_on_after(STATUS_STEP):
                        await self.closing.wait()
                    await self.daemon.settled()
                    now, _, now_banner = await self._corner_now()
                    if now != digest:
                        self._news_spread = STATUS_SPREAD if now_banner == banner else 0.0
                        break
        finally:
            self._watching = False
            self._corner_news.set()
            self._corner_news = anyio.Event()


def _digest(corner: str, banner: str) -> str:
    return hashlib.sha256((corner + banner).encode()).hexdigest()[:16]


def _local(request: Request) -> str:
    return request.url.path + (f"?{request.url.query}" if request.url.query else "")


def _parameters(task: StoredTask) -> list[pages.Parameter]:
    """What a trigger may pass: for a python task its callable's parameters (not the injected
    ones) with their annotations; for a shell task the names its file declares."""
    declared = task.spec.parameters
    found = []
    if task.spec.type is TaskType.PYTHON:
        try:
            sig = signature_of(registry.resolve(task.spec.callable or ""))
        except RunnerError:
            return [pages.Parameter(name, "?", _json(value), []) for name, value in declared.items()]
        for param in sig.params:
            if param.inject is not None:
                continue
            default = declared.get(param.name, param.default)
            kinds = value_schema(param.annotation).get("type", [])
            found.append(
                pages.Parameter(
                    param.name,
                    pages.annotation_name(param.annotation),
                    "" if default is inspect.Parameter.empty else _json(default),
                    [kinds] if isinstance(kinds, str) else list(kinds),
                )
            )
        return found
    for name, value in declared.items():
        kind = "string" if isinstance(value, str) else type(value).__name__ if value is not None else "any"
        found.append(pages.Parameter(name, kind, _json(value), ["string"] if isinstance(value, str) else []))
    return found


def _json(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)
