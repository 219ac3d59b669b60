"""What one HTTP client may hold of the daemon: time to send a request, connections, log lines.

uvicorn (0.55, h11) bounds the idle time between two requests of a connection
(``timeout_keep_alive``) and the size of a request head (h11: 16 KiB), but a connection that is
accepted and then sends its head a byte at a time, or nothing at all, stays open for ever, and
its ``limit_concurrency`` answers 503 only once a request head has arrived: the socket is held
in the meantime. 300 such connections under ``ulimit -n 256`` used up the daemon's file
descriptors (a run then failed to open ``/dev/null``), and asyncio logged a traceback for every
failed ``accept()``, up to one per pending connection per loop turn: 131 MB of log in 20 s.

So the protocol here gives a request head, then its body, ``timeout`` seconds each (408 and
closed when late), closes a connection over the cap at once with a 503, and every kind of
refusal is logged once per :data:`BURST_WINDOW` with a count (:class:`Burst`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from collections.abc import Callable
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from runner import log

IDLE_TIMEOUT = 5
"""Seconds a kept-alive connection may sit between two requests (uvicorn's keep-alive)."""
DEFAULT_MAX_CONNECTIONS = 200
"""Open connections at most (``--http-max-connections``). Under a low ``ulimit -n`` the default
is lower (:func:`connection_cap`), so that runs, the store and the task files keep descriptors."""
BACKLOG = 64
"""Connections the kernel queues before they are accepted. asyncio also accepts up to this many
per loop turn, each holding a descriptor for about two turns even when refused at once; and when
``accept()`` fails for want of descriptors it retries each of them a second later: uvicorn's
2048 made that some 10,000 failed calls a second."""
BURST_WINDOW = 10.0
"""Seconds over which repeated refusals of one kind make one log line."""


def connection_cap(max_connections: int | None) -> int:
    """The cap in force: the one given, or the default within ``ulimit -n``: half of what is
    left after a burst of connections being accepted (two turns' worth), at least 16. Measured:
    300 slow clients at ``ulimit -n 256`` and a cap of 128 still ran ``accept()`` out of
    descriptors; with 64 they do not."""
    if max_connections is not None:
        return max_connections
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return DEFAULT_MAX_CONNECTIONS
    return min(DEFAULT_MAX_CONNECTIONS, max(16, (soft - 2 * BACKLOG) // 2))


class Burst:
    """Logs the first of a run of like happenings at once, then at most one line per window
    saying how many more there were, so that a flood of them costs a line every few seconds."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        event: str,
        describe: Callable[[int, str], str],
        *,
        level: int = logging.WARNING,
        window: float = BURST_WINDOW,
    ) -> None:
        self.loop = loop
        self.event = event
        self.describe = describe  # (count, detail) -> message
        self.level = level
        self.window = window
        self.pending = 0
        self.detail = ""
        self.flush: asyncio.TimerHandle | None = None

    def hit(self, detail: str = "") -> None:
        self.detail = detail or self.detail
        if self.flush is None:
            self._emit(1)
            self.flush = self.loop.call_later(self.window, self._flushed)
        else:
            self.pending += 1

    def _flushed(self) -> None:
        if self.pending:
            self._emit(self.pending)
            self.pending = 0
            self.flush = self.loop.call_later(self.window, self._flushed)
        else:
            self.flush = None

    def _emit(self, count: int) -> None:
        log.logger.log(
            self.level, self.describe(count, self.detail),
            extra={"event": self.event, "count": count, "window_s": self.window, "detail": self.detail},
        )

    def close(self) -> None:
        """Log what is pending now (the server stops)."""
        if self.flush is not None:
            self.flush.cancel()
            self.flush = None
        if self.pending:
            self._emit(self.pending)
            self.pending = 0


def _times(count: int) -> str:
    return f"{count} time{'s' if count != 1 else ''} in {BURST_WINDOW:g}s"


class Guard:
    """The server's bursts of refusals, and the loop's exception handler that counts failed
    ``accept()`` calls among them instead of logging a traceback for each."""

    def __init__(self, loop: asyncio.AbstractEventLoop, cap: int, timeout: float) -> None:
        self.loop = loop
        self.cap = cap
        self.timeout = timeout
        self.accept_failed = Burst(
            loop, "http_accept_error",
            lambda n, why: f"HTTP: cannot accept connections ({why}), {_times(n)}; "
            "raise `ulimit -n` (LimitNOFILE=) or lower --http-max-connections",
            level=logging.ERROR,
        )
        self.busy = Burst(
            loop, "http_busy",
            lambda n, _: f"HTTP: refused a connection with 503, {_times(n)}: {cap} are open "
            "(--http-max-connections)",
        )
        self.slow = Burst(
            loop, "http_timeout",
            lambda n, what: f"HTTP: closed a connection that did not send {what} within {timeout:g}s "
            f"(--http-timeout), {_times(n)}",
        )
        self.invalid = Burst(loop, "http_invalid_request", lambda n, what: f"HTTP: {what} ({_times(n)})")
        self.previous = loop.get_exception_handler()

    def __enter__(self) -> Guard:
        self.loop.set_exception_handler(self._exception)
        for name in ("uvicorn.error", "uvicorn.access"):
            logging.getLogger(name).addFilter(self._uvicorn_line)
        return self

    def __exit__(self, *_exc: object) -> None:
        for name in ("uvicorn.error", "uvicorn.access"):
            logging.getLogger(name).removeFilter(self._uvicorn_line)
        self.loop.set_exception_handler(self.previous)
        for burst in (self.accept_failed, self.busy, self.slow, self.invalid):
            burst.close()

    def _exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == "socket.accept() out of system resource":
            exc = context.get("exception")
            self.accept_failed.hit(str(exc) if exc is not None else "out of resources")
        elif self.previous is not None:
            self.previous(loop, context)
        else:
            loop.default_exception_handler(context)

    def _uvicorn_line(self, record: logging.LogRecord) -> bool:
        """uvicorn's warnings about one client's bad request ("Invalid HTTP request received.")
        as a burst; its errors (an exception in the app) pass, with their traceback."""
        if record.levelno >= logging.ERROR or record.exc_info:
            return True
        self.invalid.hit(record.getMessage().rstrip("."))
        return False


def _raw_problem(status: int, reason: str, detail: str) -> bytes:
    """A whole HTTP/1.1 response with a problem document, for a connection h11 is not
    answering (not yet a request, or one that is late)."""
    body = json.dumps({"type": "about:blank", "title": reason, "status": status, "detail": detail}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/problem+json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


def protocol(guard: Guard) -> type[H11Protocol]:
    """uvicorn's h11 protocol with the guard's connection cap and request timeouts."""
    busy = _raw_problem(503, "Service Unavailable", "too many connections; try again shortly")
    late = _raw_problem(408, "Request Timeout", f"the request did not arrive within {guard.timeout:g}s")

    class Protocol(H11Protocol):
        refused = False
        deadline: asyncio.TimerHandle | None = None
        waiting_for = "a request"  # what the deadline is for: "a request" head, or "its body"
        received = False  # any byte of the current request yet

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            if len(self.server_state.connections) >= guard.cap:
                # Closed before uvicorn counts it: the descriptor is given back at once.
                self.refused = True
                transport.write(busy)
                transport.close()
                guard.busy.hit()
                return
            super().connection_made(transport)
            self._expect("a request")

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if not self.refused:
                super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            self.received = True
            super().data_received(data)
            self._follow()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self.received = False
                self._expect("a request")
                self._follow()  # a pipelined request may already be in

        def _follow(self) -> None:
            state = self.conn.their_state
            if state is h11.IDLE:
                if self.waiting_for != "a request":  # a body the answer did not wait for ended
                    self.received = False
                    self._expect("a request")
                return  # still waiting for the head: the deadline set for it holds
            if state is h11.SEND_BODY:
                if self.waiting_for != "its body":
                    self._expect("its body")
            else:
                self._disarm()

        def _expect(self, what: str) -> None:
            self._disarm()
            self.waiting_for = what
            self.deadline = self.loop.call_later(guard.timeout, self._late)

        def _disarm(self) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
                self.deadline = None

        def _late(self) -> None:
            self.deadline = None
            if self.transport.is_closing():
                return
            # A connection opened and never used (a browser's preconnect) just closes; a
            # request begun and not finished gets a 408 unless its answer has begun.
            begun = self.received or self.waiting_for == "its body"
            if begun and self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                self.transport.write(late)
            if begun:
                guard.slow.hit(self.waiting_for)
            self.transport.close()

    return Protocol
