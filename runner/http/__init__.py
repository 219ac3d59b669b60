"""The daemon's HTTP API (``runner daemon --http``; the ``runner-tasks[http]`` extra).

Read-only by default: tasks come from git only, so nothing here creates or edits one. A POST
may start a run when the operator allows it (``--http-allow-trigger``) and the caller holds the
bearer token. Starlette and uvicorn are imported only from this package.
"""

from __future__ import annotations

from runner.http.server import serve

__all__ = ["serve"]
