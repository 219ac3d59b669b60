"""What ``runner daemon``'s options ask of the daemon and of its HTTP API."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_GRACE = 30.0
"""Seconds running runs get to finish after SIGTERM/SIGINT before they are cancelled."""


@dataclass(frozen=True)
class DaemonOptions:
    watch: bool = True
    grace: float = DEFAULT_GRACE
    max_concurrency: int | None = None
    retain: float | None = 30 * 86400.0
    retain_runs: int | None = 1000
    http: HttpOptions | None = None  # serve the HTTP API (runner-tasks[http]) while the daemon runs
    remote: bool = False  # send runs to workers (runner worker) instead of running them here


@dataclass(frozen=True)
class HttpOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    allow_trigger: bool = False  # POST /api/v1/tasks/{name}/runs, with the bearer token
    auth_read: bool = False  # the read endpoints want the token too
    token: str | None = None  # RUNNER_HTTP_TOKEN
    timeout: float = 10.0  # seconds a client gets to send a request head, then its body
    max_connections: int | None = None  # None: 200, fewer under a low file descriptor limit
