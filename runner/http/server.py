"""Serve the API with uvicorn inside the daemon's task group, stopping when it is cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING

import anyio
import uvicorn
from anyio.abc import TaskStatus

from runner import log
from runner.errors import HttpError
from runner.http.app import build_app
from runner.http.limits import BACKLOG, IDLE_TIMEOUT, Guard, connection_cap, protocol

if TYPE_CHECKING:
    from runner.daemon import HttpOptions
    from runner.http.view import DaemonView

SHUTDOWN_GRACE = 2.0
"""Seconds open requests get to finish when the daemon stops (event streams end at once)."""


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the daemon owns SIGTERM/SIGINT and stops the
    server by cancelling it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listen(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise HttpError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise HttpError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock


async def serve(
    daemon: DaemonView, options: HttpOptions, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Serve the API for ``daemon`` until cancelled; ready (``task_status``) once listening."""
    sock = _listen(options.host, options.port)
    app = build_app(daemon, options)
    cap = connection_cap(options.max_connections)
    guard = Guard(asyncio.get_running_loop(), cap, options.timeout)
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        http=protocol(guard),
        ws="none",
        timeout_keep_alive=IDLE_TIMEOUT,
        backlog=BACKLOG,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=int(SHUTDOWN_GRACE),
    )
    server = _Server(config)
    done = anyio.Event()

    async def run() -> None:
        # Shielded: on cancellation the server is told to exit and closes its connections
        # itself, instead of being torn down mid-response.
        with anyio.CancelScope(shield=True):
            try:
                await server.serve(sockets=[sock])
            finally:
                done.set()

    host, port = sock.getsockname()[:2]
    with guard:
        async with anyio.create_task_group() as group:
            group.start_soon(run)
            try:
                while not server.started:
                    if done.is_set():
                        raise HttpError(f"the HTTP API did not start on {options.host}:{options.port}")
                    await anyio.sleep(0.01)
                log.logger.info(
                    f"HTTP API on http://{_hostport(host, port)}/ "
                    f"({'triggers allowed' if options.allow_trigger else 'read-only'})",
                    extra={
                        "event": "http_started", "host": host, "port": port, "allow_trigger": options.allow_trigger,
                        "max_connections": cap, "timeout_s": options.timeout,
                    },
                )
                task_status.started()
                await done.wait()
            finally:
                app.state.closing.set()
                server.should_exit = True
    sock.close()


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
