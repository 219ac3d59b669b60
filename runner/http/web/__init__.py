"""The web page: tasks, runs and a run's live output for a person, served by the daemon at
``/`` next to the API (``/api/v1``).

Server-rendered HTML that works without JavaScript, every page a permalink; a small script of
our own (``static/runner.js``, no library, no build step) follows runs live over the API's
event streams. Read-only: the one form, a trigger, posts to the API with the token the person
types, and exists only with ``--http-allow-trigger``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.routing import Route

from runner.http.web.views import Web

if TYPE_CHECKING:
    import anyio

    from runner.daemon import HttpOptions
    from runner.http.view import DaemonView


def routes(daemon: DaemonView, options: HttpOptions, closing: anyio.Event) -> list[Route]:
    web = Web(daemon, options, closing)
    return [
        Route("/", web.handler(web.overview)),
        Route("/tasks/{name}", web.handler(web.task)),
        Route("/runs", web.handler(web.runs)),
        Route("/runs/{run_id}", web.handler(web.run)),
        Route("/-/status", web.handler(web.status)),
        Route("/login", web.login),
        Route("/static/{name}", web.static),
    ]


__all__ = ["routes"]
