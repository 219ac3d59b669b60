"""Commands that serve until a signal: the daemon (schedules, triggers, reload, HTTP) and a
worker (runs off a PostgreSQL store's queue)."""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Any

import click

from runner import log
from runner.cli.common import (
    EXIT_USAGE,
    Settings,
    duration_option,
    fail,
    require_postgres,
    run_async,
)


def _http_options(
    listen: str | None, allow_trigger: bool, auth_read: bool, timeout: str | None = None,
    max_connections: int | None = None,
) -> Any:
    """The daemon's HttpOptions for --http and its flags (None without --http); exit 2 on a
    bad address, a flag without --http or the token, or without the runner-tasks[http] extra."""
    from runner.daemon import HttpOptions  # lazy, for start-up time (SQLAlchemy)

    if listen is None:
        if allow_trigger or auth_read:
            fail("--http-allow-trigger and --http-auth-read need --http [HOST:]PORT", EXIT_USAGE)
        if timeout is not None or max_connections is not None:
            fail("--http-timeout and --http-max-connections need --http [HOST:]PORT", EXIT_USAGE)
        return None
    if any(importlib.util.find_spec(module) is None for module in ("starlette", "uvicorn")):
        fail("--http needs the HTTP extra: pip install 'runner-tasks[http]'", EXIT_USAGE)
    host, _, port = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]") or "127.0.0.1"
    if not port.isascii() or not port.isdigit() or not 0 <= int(port) <= 65535 or any(c.isspace() for c in host):
        fail(f"--http: {listen!r} is not [HOST:]PORT (a port from 0 to 65535, e.g. 127.0.0.1:8080)", EXIT_USAGE)
    token = os.environ.get("RUNNER_HTTP_TOKEN") or None
    if (allow_trigger or auth_read) and token is None:
        flag = "--http-allow-trigger" if allow_trigger else "--http-auth-read"
        fail(f"{flag} needs a bearer token: set RUNNER_HTTP_TOKEN (e.g. to `openssl rand -hex 32`)", EXIT_USAGE)
    limits: dict[str, Any] = {"max_connections": max_connections}
    if timeout is not None:
        limits["timeout"] = duration_option(timeout, "--http-timeout")
        if limits["timeout"] is None:
            fail(f"--http-timeout: give a duration above 0 (default {HttpOptions.timeout:g}s)", EXIT_USAGE)
    return HttpOptions(
        host=host, port=int(port), allow_trigger=allow_trigger, auth_read=auth_read, token=token, **limits
    )


@click.command()
@click.option("--no-watch", is_flag=True, help="Do not reload when files in tasks.d/ or plugins/ change.")
@click.option(
    "--grace", default="30s", show_default=True, metavar="DURATION",
    help="On SIGTERM/SIGINT, how long running runs may go on before they are cancelled.",
)
@click.option("--concurrency", type=click.IntRange(min=1), default=None, metavar="N", help="Runs at once, at most (default 16).")
@click.option(
    "--retain", default="30d", show_default=True, metavar="DURATION",
    help="Prune finished runs older than this (0: keep them).",
)
@click.option(
    "--retain-runs", type=click.IntRange(min=0), default=1000, show_default=True, metavar="N",
    help="Keep at most N finished runs per task (0: no limit).",
)
@click.option(
    "--http", "http", default=None, metavar="[HOST:]PORT",
    help="Serve the HTTP API here (host 127.0.0.1 unless given); needs runner-tasks[http].",
)
@click.option("--http-allow-trigger", is_flag=True, help="Let POST /api/v1/tasks/NAME/runs start runs (needs RUNNER_HTTP_TOKEN).")
@click.option("--http-auth-read", is_flag=True, help="Ask for the token on the read endpoints too (needs RUNNER_HTTP_TOKEN).")
@click.option(
    "--http-timeout", default=None, metavar="DURATION",
    help="How long an HTTP client may take to send a request's head, and then its body (default 10s).",
)
@click.option(
    "--http-max-connections", type=click.IntRange(min=1), default=None, metavar="N",
    help="HTTP connections open at once, at most; more get a 503 (default 200, fewer under a low `ulimit -n`).",
)
@click.option("--remote", is_flag=True, help="Send runs to workers (`runner worker`; PostgreSQL store) instead of running them here.")
@click.pass_obj
def daemon(
    settings: Settings, no_watch: bool, grace: str, concurrency: int | None, retain: str, retain_runs: int,
    http: str | None, http_allow_trigger: bool, http_auth_read: bool, http_timeout: str | None,
    http_max_connections: int | None, remote: bool,
) -> None:
    """Sync, fire schedules, take triggers and reload on file changes, until SIGTERM/SIGINT.

    On the first signal it stops firing and lets running runs finish within --grace, then
    cancels the rest (process groups killed, runs recorded cancelled) and exits 0. A second
    daemon on the same SQLite store exits 2 at once, naming the first; on PostgreSQL it waits
    as a standby and leads when the leader goes.
    """
    # lazy, for start-up time (SQLAlchemy)
    from runner.daemon import Daemon, DaemonOptions
    from runner.shutdown import end_leftover_tasks
    from runner.store import open_store

    http_options = _http_options(http, http_allow_trigger, http_auth_read, http_timeout, http_max_connections)
    if remote:
        require_postgres(settings, "runner daemon --remote")
    if log.logger.level > logging.INFO:
        log.logger.setLevel(logging.INFO)
    options = DaemonOptions(
        watch=not no_watch,
        grace=duration_option(grace, "--grace") or 0.0,
        max_concurrency=concurrency,
        retain=duration_option(retain, "--retain"),
        retain_runs=retain_runs or None,
        http=http_options,
        remote=remote,
    )

    async def serve() -> None:
        async with open_store(settings.store_location, sweep=False) as store:
            await Daemon(settings.project, store, options).run()
        await end_leftover_tasks()

    import faulthandler  # lazy, for start-up time
    import signal

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID`: where it is stuck
    # Python's garbage collection thresholds kept (not ``runs_tasks``): a daemon lives for
    # weeks through reloads, and its memory (~100 MB at 10,000 tasks) was measured with them.
    run_async(serve)
    log.logger.info("daemon stopped", extra={"event": "daemon_stopped"})


@click.command()
@click.option("--concurrency", type=click.IntRange(min=1), default=4, show_default=True, metavar="N", help="Runs at once, at most.")
@click.option(
    "--queue", "queues", multiple=True, metavar="NAME",
    help="Take runs of this queue only (repeat for several; default: every queue).",
)
@click.option(
    "--grace", default="30s", show_default=True, metavar="DURATION",
    help="On SIGTERM/SIGINT, how long running runs may go on before they are cancelled.",
)
@click.pass_obj
def worker(settings: Settings, concurrency: int, queues: tuple[str, ...], grace: str) -> None:
    """Take runs off the queue of a PostgreSQL store and run them, until SIGTERM/SIGINT.

    Runs come from `runner daemon --remote`, `runner run --remote` and `runner trigger
    --remote`, as the store's definitions say (the daemon syncs the files); python callables
    are imported from this machine's plugins/. On the first signal it takes no more runs and
    lets running ones finish within --grace, then cancels them and exits 0.
    """
    # lazy, for start-up time (SQLAlchemy)
    from runner.remote import Worker, store_connections
    from runner.shutdown import end_leftover_tasks
    from runner.store import open_store

    require_postgres(settings, "runner worker")
    if log.logger.level > logging.INFO:
        log.logger.setLevel(logging.INFO)
    seconds = duration_option(grace, "--grace") or 0.0

    async def serve() -> None:
        async with open_store(settings.store_location, connections=store_connections(concurrency)) as store:
            await Worker(settings.project, store, queues=list(queues) or None, concurrency=concurrency, grace=seconds).run()
        await end_leftover_tasks()

    run_async(serve, runs_tasks=True)
    log.logger.info("worker stopped", extra={"event": "worker_stopped"})
