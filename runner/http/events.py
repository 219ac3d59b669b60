"""A run's events as Server-Sent Events: its status changes, output and log lines, to its end.

The store is polled as ``runner logs -f`` does (``runner.follow``): the status is read first,
then the log rows after the last one sent, so rows committed with a final status are never
missed. Every stream starts with a ``status`` event, so a client that connects late learns the
run's state before its output, and ends with the final ``status`` and ``end``.

Every event carries an SSE ``id``: an output or log event its row's id, a status or end event
the id of the last row sent before it (the ``Last-Event-ID`` the stream started from, when no
row came yet). Ids never go down within a stream, and reconnecting with any of them picks up
after that row: nothing missed, nothing twice (a reconnected stream starts with a fresh status).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio

from runner.errors import RunNotFound, StoreError
from runner.follow import POLL_INTERVAL
from runner.models import RunStatus, iso
from runner.store import LogEntry, Store

KEEPALIVE = 15.0
"""Seconds without an event after which a comment line is sent, so proxies keep the stream."""

MAX_EVENT_ID = 2**63 - 1
"""Row ids are 64-bit signed integers in both stores; a larger Last-Event-ID is no id of ours."""
_PAGE = 1000
_UNFINISHED = (RunStatus.QUEUED, RunStatus.RUNNING)


def message(event: str, data: Any, event_id: int) -> str:
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data, default=str, separators=(',', ':'))}\n\n"


def _row(entry: LogEntry) -> str:
    if entry.stream == "log":
        return message("log", {"run_id": entry.run_id, "at": iso(entry.at), "level": entry.level, "message": entry.message}, entry.id)
    return message(
        "output", {"run_id": entry.run_id, "at": iso(entry.at), "stream": entry.stream, "text": entry.message}, entry.id
    )


async def run_events(
    store: Store, run_id: str, *, after: int = 0, closing: anyio.Event, interval: float = POLL_INTERVAL
) -> AsyncIterator[str]:
    """The event stream of ``run_id``: ``status`` (the run as JSON, at first and on every
    change), ``output`` and ``log`` (rows), then ``end`` when the run is final."""
    last: RunStatus | None = None
    quiet_since = anyio.current_time()
    try:
        while not closing.is_set():
            _task, status = await store.run_status(run_id)
            if last is None or (status != last and status in _UNFINISHED):
                yield message("status", (await store.run(run_id)).to_json(), after)
                last = status
                quiet_since = anyio.current_time()
            while True:
                rows = await store.log_lines(run_id, after=after, limit=_PAGE)
                for row in rows:
                    yield _row(row)
                if rows:
                    after = rows[-1].id
                    quiet_since = anyio.current_time()
                if len(rows) < _PAGE:
                    break
            if status not in _UNFINISHED:
                yield message("status", (await store.run(run_id)).to_json(), after)
                yield message("end", {"run_id": run_id, "status": status.value}, after)
                return
            if anyio.current_time() - quiet_since >= KEEPALIVE:
                yield ": keep-alive\n\n"
                quiet_since = anyio.current_time()
            with anyio.move_on_after(interval):
                await closing.wait()
    except RunNotFound:
        yield message("error", {"run_id": run_id, "detail": "the run is gone (pruned)"}, after)
    except StoreError:
        yield message(
            "error", {"run_id": run_id, "detail": "the store cannot be read right now; reconnect with Last-Event-ID"}, after
        )
