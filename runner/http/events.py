"""A run's events as Server-Sent Events: its status changes, output and log lines, to its end.

The store is polled as ``runner logs -f`` does (``runner.follow``): the status is read first,
then the log rows after the last one read, so rows committed with a final status are never
missed. Every stream starts with a ``status`` event, so a client that connects late learns the
run's state before its output, and ends with the final ``status`` and ``end``.

The reads are shared (:class:`Hub`): once per poll interval, one query takes the status of every
run some stream follows and one the rows written since, whatever the number of streams. Each
stream polling on its own cost the daemon's fires 4.5 s at p95 with 100 streams on 10 runs
(docs/performance.md). A stream that joins late gets its run's earlier rows from the hub too:
the first such stream of a run reads them into the hub's rows, for the others to take from
there (a hundred pages opening on ten runs read ten histories, not a hundred). Only what does
not fit in the hub's ``KEEP_ROWS`` is read by each stream itself.
The waiting is shared too: one stream (whichever waits first) sleeps out the interval and reads
for all; the others sleep until their run has news, instead of each waking every interval.
Neither the reads nor the sends happen while the daemon fires its schedules (``settled``): the
loop that serves the streams is the one that starts the scheduled runs.

Every event carries an SSE ``id``: an output or log event its row's id, a status or end event
the id of the last row sent before it (the ``Last-Event-ID`` the stream started from, when no
row came yet). Ids never go down within a stream, and reconnecting with any of them picks up
after that row: nothing missed, nothing twice (a reconnected stream starts with a fresh status).
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio

from runner.errors import RunNotFound, StoreError
from runner.follow import POLL_INTERVAL
from runner.http.view import Settled
from runner.models import RunStatus, iso
from runner.store import LogEntry, Store

KEEPALIVE = 15.0
"""Seconds without an event after which a comment line is sent, so proxies keep the stream."""

MAX_EVENT_ID = 2**63 - 1
"""Row ids are 64-bit signed integers in both stores; a larger Last-Event-ID is no id of ours."""
_PAGE = 1000
_UNFINISHED = (RunStatus.QUEUED, RunStatus.RUNNING)
KEEP_ROWS = 2000
"""Rows the hub keeps of each followed run; a stream further behind reads the store itself."""


def message(event: str, data: Any, event_id: int) -> str:
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data, default=str, separators=(',', ':'))}\n\n"


def _row(entry: LogEntry) -> str:
    if entry.stream == "log":
        return message("log", {"run_id": entry.run_id, "at": iso(entry.at), "level": entry.level, "message": entry.message}, entry.id)
    return message(
        "output", {"run_id": entry.run_id, "at": iso(entry.at), "stream": entry.stream, "text": entry.message}, entry.id
    )


async def _at_once() -> None:
    """``Hub.settled`` with no daemon firing beside it."""


@dataclass
class _Followed:
    """What the hub knows of one run: its status at the last read, and the rows read since it
    joined (every row with an id above ``floor``)."""

    floor: int
    rows: list[LogEntry] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)  # the rows' ids, for bisect
    messages: list[str] = field(default_factory=list)  # the rows as events, made once for every stream
    status: RunStatus | None = None
    gone: bool = False  # not in the store at the last read (pruned)
    runs: dict[RunStatus, dict[str, Any]] = field(default_factory=dict)  # the run as JSON, per status
    streams: int = 0
    news: anyio.Event = field(default_factory=anyio.Event)  # set when a read brought this run something
    earlier: anyio.Lock = field(default_factory=anyio.Lock)  # held by the stream reading rows below floor


class Hub:
    """The store reads of every event stream: at most one round (statuses, then new rows) per
    half poll interval, for all the runs followed, made by whichever stream asks first."""

    def __init__(self, store: Store, interval: float = POLL_INTERVAL, *, settled: Settled | None = None) -> None:
        self.store = store
        self.interval = interval
        self.settled = settled or _at_once
        self.followed: dict[str, _Followed] = {}
        self._after: int | None = None  # the newest row id read
        self._read_at = -math.inf
        self._lock = anyio.Lock()
        self._polling = False  # a stream is sleeping out the interval to read for all
        # The reads of one stream alone (a run as JSON, a joining stream's earlier rows), two
        # at a time: a hundred pages opening at once read them all together, took the store's
        # connections and were most of what the daemon's fires lost to pages (docs/performance.md).
        self.alone = anyio.CapacityLimiter(2)

    async def join(self, run_id: str) -> _Followed:
        async with self._lock:
            if self._after is None:
                self._after = await self.store.last_log_id()
            followed = self.followed.get(run_id)
            if followed is None:
                followed = self.followed[run_id] = _Followed(floor=self._after)
                self._read_at = -math.inf  # its status is not known yet
            followed.streams += 1
            return followed

    def knows(self, run_id: str) -> bool:
        """Whether the last read found ``run_id`` in the store (a stream follows it)."""
        followed = self.followed.get(run_id)
        return followed is not None and followed.status is not None and not followed.gone

    def leave(self, run_id: str) -> None:
        followed = self.followed[run_id]
        followed.streams -= 1
        if followed.streams == 0:
            del self.followed[run_id]
            if not self.followed:
                self._after = None  # nobody follows: the next one starts from the newest row

    async def refresh(self) -> None:
        async with self._lock:
            after = self._after
            if anyio.current_time() - self._read_at < self.interval / 2 or after is None:
                return
            # A stream may leave while this reads (leaving takes no lock): its run's rows are
            # then dropped, and the hub forgets where it was once nobody follows anything.
            ids = list(self.followed)
            statuses = await self.store.run_statuses(ids)
            changed: set[str] = set()
            for run_id, followed in self.followed.items():
                status = statuses.get(run_id)
                if status != followed.status:
                    changed.add(run_id)
                followed.status = status
                followed.gone = status is None
            while True:
                rows = await self.store.log_lines_of(ids, after=after, limit=_PAGE)
                for row in rows:
                    reader = self.followed.get(row.run_id)
                    if reader is not None:
                        changed.add(row.run_id)
                        reader.rows.append(row)
                        reader.ids.append(row.id)
                        reader.messages.append(_row(row))
                if rows:
                    after = rows[-1].id
                if len(rows) < _PAGE:
                    break
            self._after = after if self.followed else None
            for followed in self.followed.values():
                if len(followed.rows) > KEEP_ROWS:
                    cut = len(followed.rows) - KEEP_ROWS
                    followed.floor = followed.ids[cut - 1]
                    del followed.rows[:cut], followed.ids[:cut], followed.messages[:cut]
            self._read_at = anyio.current_time()
            for run_id in changed:
                self._wake(self.followed.get(run_id))

    @staticmethod
    def _wake(followed: _Followed | None) -> None:
        if followed is not None:
            followed.news.set()
            followed.news = anyio.Event()

    async def wait(self, followed: _Followed, seconds: float, closing: anyio.Event) -> None:
        """Wait until ``followed`` has news, ``closing`` is set or ``seconds`` have passed.

        One waiting stream polls for all: it reads every interval and wakes the streams whose
        run the read brought something, until its own run has news. Then, while it sends them,
        it wakes the streams of one other run, and the first stream to wait again polls next. A
        hundred streams were a hundred wake-ups every interval; now one, plus one per stream
        whose run has news."""
        if self._polling:
            with anyio.move_on_after(seconds):
                await followed.news.wait()
            return
        self._polling = True
        news = followed.news
        try:
            with anyio.move_on_after(seconds):
                while not news.is_set() and not closing.is_set():
                    with anyio.move_on_after(self.interval):
                        await closing.wait()
                    await self.settled()
                    await self.refresh()
        finally:
            self._polling = False
            others = [other for other in self.followed.values() if other is not followed]
            for other in (self.followed.values() if closing.is_set() else others[:1] or [followed]):
                self._wake(other)

    async def backfill(self, run_id: str, followed: _Followed, after: int) -> None:
        """Read ``run_id``'s rows above ``after`` and below the hub's into ``followed`` (its
        ``floor`` then goes down to ``after``), once for all the streams of the run; unless
        they would not fit in ``KEEP_ROWS``, or the hub let rows go meanwhile."""
        async with followed.earlier:
            floor = followed.floor
            if after >= floor:
                return  # another stream of this run read them meanwhile
            rows: list[LogEntry] = []
            async with self.alone:
                while True:
                    page = await self.store.log_lines(run_id, after=rows[-1].id if rows else after, limit=_PAGE)
                    rows += [row for row in page if row.id <= floor]
                    if len(rows) + len(followed.rows) > KEEP_ROWS:
                        return  # more than the hub keeps: the stream reads them itself
                    if len(page) < _PAGE or page[-1].id >= floor:
                        break
            if followed.floor != floor:
                return  # the hub let rows go meanwhile: these would leave a gap
            followed.rows[:0] = rows
            followed.ids[:0] = [row.id for row in rows]
            followed.messages[:0] = [_row(row) for row in rows]
            followed.floor = after

    async def run_json(self, run_id: str, followed: _Followed, status: RunStatus) -> dict[str, Any]:
        """The run as JSON, read once for each status it is seen with (the final one after the
        run ended, so with its output)."""
        found = followed.runs.get(status)
        if found is None:
            async with self.alone:
                found = followed.runs.get(status)  # another stream of this run may have read it meanwhile
                if found is None:
                    found = followed.runs[status] = (await self.store.run(run_id)).to_json()
        return found


async def run_events(
    hub: Hub, run_id: str, *, after: int = 0, closing: anyio.Event
) -> AsyncIterator[str]:
    """The event stream of ``run_id``: ``status`` (the run as JSON, at first and on every
    change), ``output`` and ``log`` (rows), then ``end`` when the run is final."""
    last: RunStatus | None = None
    quiet_since = anyio.current_time()
    followed = await hub.join(run_id)
    try:
        while not closing.is_set():
            await hub.settled()
            await hub.refresh()
            status = followed.status
            if followed.gone or status is None:
                raise RunNotFound(run_id)
            if last is None or (status != last and status in _UNFINISHED):
                yield message("status", await hub.run_json(run_id, followed, status), after)
                last = status
                quiet_since = anyio.current_time()
            if after < followed.floor:
                await hub.backfill(run_id, followed, after)
            while after < followed.floor:
                # Rows from before this run was followed that the hub could not keep: read here.
                async with hub.alone:
                    rows = await hub.store.log_lines(run_id, after=after, limit=_PAGE)
                for row in rows:
                    if row.id > followed.floor:
                        break
                    yield _row(row)
                    after = row.id
                    quiet_since = anyio.current_time()
                else:
                    if len(rows) == _PAGE:
                        continue
                after = max(after, followed.floor)
            start = bisect.bisect_right(followed.ids, after)
            if start < len(followed.ids):
                # One chunk for all the new rows: a write to the socket each costs more than the event.
                yield "".join(followed.messages[start:])
                after = followed.ids[-1]
                quiet_since = anyio.current_time()
            if status not in _UNFINISHED:
                yield message("status", await hub.run_json(run_id, followed, status), after)
                yield message("end", {"run_id": run_id, "status": status.value}, after)
                return
            if anyio.current_time() - quiet_since >= KEEPALIVE:
                yield ": keep-alive\n\n"
                quiet_since = anyio.current_time()
            await hub.wait(followed, max(0.0, KEEPALIVE - (anyio.current_time() - quiet_since)), closing)
    except RunNotFound:
        yield message("error", {"run_id": run_id, "detail": "the run is gone (pruned)"}, after)
    except StoreError:
        yield message(
            "error", {"run_id": run_id, "detail": "the store cannot be read right now; reconnect with Last-Event-ID"}, after
        )
    finally:
        hub.leave(run_id)
