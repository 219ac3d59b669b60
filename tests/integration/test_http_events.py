"""The event streams' shared reads (runner/http/events.py ``Hub``) on a real store: streams that
join early, late, and from a Last-Event-ID, on a run whose rows outgrow what the hub keeps, each
get every row after their start exactly once, in order, then the final status and the end; and
the streams of other runs keep hearing when the stream that polled for them goes."""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
import pytest

from runner.http import events
from runner.models import RunStatus, TaskType
from runner.records import LogChunk, QueuedRun, RunEnd
from runner.store import RunBatch, Store

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

NOW = time.time()


def lines(run_id: str, numbers: range) -> RunBatch:
    return RunBatch(logs=[LogChunk(run_id, NOW, "stdout", "", f"line {i}\n") for i in numbers])


def running(*run_ids: str) -> RunBatch:
    runs = [
        QueuedRun(id=run_id, task="t", type=TaskType.SHELL, attempt=1, trigger="api", parent_id=None,
                  invocation=run_id, parameters_json="{}", queued_at=NOW)
        for run_id in run_ids
    ]
    return RunBatch(inserts=runs, starts=[(run_id, NOW) for run_id in run_ids])


def parse(message: str) -> dict[str, Any]:
    fields = dict(line.split(": ", 1) for line in message.strip().splitlines())
    return {"id": int(fields["id"]), "event": fields["event"], "data": json.loads(fields["data"])}


async def test_streams_on_one_run_each_get_every_row_once_whenever_they_join(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "KEEP_ROWS", 4)  # the hub lets rows go: late streams read them themselves
    await store.write_runs(running("r", "o"))
    await store.write_runs(lines("r", range(1, 4)))
    await store.write_runs(lines("o", range(100, 110)))  # another run's rows: never in r's streams
    hub = events.Hub(store, interval=0.01)
    closing = anyio.Event()
    seen: dict[str, list[dict[str, Any]]] = {"early": [], "late": [], "resumed": []}

    async def consume(name: str, after: int) -> None:
        async for chunk in events.run_events(hub, "r", after=after, closing=closing):
            seen[name].extend(parse(message) for message in chunk.split("\n\n") if message.strip())

    def texts(name: str) -> list[str]:
        return [e["data"]["text"] for e in seen[name] if e["event"] == "output"]

    async def until(condition: Any) -> None:
        for _ in range(500):  # 5 s at most: the streams poll every 0.01 s
            if condition():
                return
            await anyio.sleep(0.01)
        raise AssertionError(f"gave up waiting; seen {seen}")

    async with anyio.create_task_group() as group:
        group.start_soon(consume, "early", 0)
        await until(lambda: len(texts("early")) == 3)
        for i in range(4, 14):
            await store.write_runs(lines("r", range(i, i + 1)))
        await until(lambda: len(texts("early")) == 13)
        fifth = next(e["id"] for e in seen["early"] if e["event"] == "output" and e["data"]["text"] == "line 5\n")
        group.start_soon(consume, "late", 0)
        group.start_soon(consume, "resumed", fifth)
        await until(lambda: len(texts("late")) == 13 and len(texts("resumed")) == 8)
        await store.write_runs(lines("r", range(14, 16)))
        await store.write_runs(RunBatch(finishes=[RunEnd("r", RunStatus.SUCCEEDED, NOW + 1, stdout="all\n")]))
    every = [f"line {i}\n" for i in range(1, 16)]
    assert texts("early") == texts("late") == every
    assert texts("resumed") == every[5:]
    for name, stream in seen.items():
        kinds = [e["event"] for e in stream]
        assert kinds[0] == "status" and kinds[-2:] == ["status", "end"], name
        assert stream[-2]["data"]["status"] == "succeeded" and stream[-2]["data"]["stdout"] == "all\n"
        ids = [e["id"] for e in stream]
        assert ids == sorted(ids), name
    assert hub.followed == {}  # every stream left


async def test_a_pruned_run_ends_its_stream_with_an_error(store: Store) -> None:
    hub = events.Hub(store, interval=0.01)
    got = [parse(m) async for m in events.run_events(hub, "nope", closing=anyio.Event())]
    assert [e["event"] for e in got] == ["error"] and "gone" in got[0]["data"]["detail"]
    assert hub.followed == {}


async def test_a_stream_leaving_while_the_hub_reads_leaves_the_others_reading(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    await store.write_runs(running("a", "b"))
    hub = events.Hub(store, interval=0.01)
    await hub.join("a")
    await hub.join("b")
    await store.write_runs(lines("a", range(1, 3)))
    await store.write_runs(lines("b", range(1, 3)))
    # The race made sure of: the hub is between its two reads when b's only stream goes.
    reading, go_on = anyio.Event(), anyio.Event()
    statuses = store.run_statuses

    async def held(run_ids: Any) -> Any:
        reading.set()
        await go_on.wait()
        return await statuses(run_ids)

    monkeypatch.setattr(store, "run_statuses", held)
    async with anyio.create_task_group() as group:
        group.start_soon(hub.refresh)
        await reading.wait()
        hub.leave("b")
        go_on.set()
    assert list(hub.followed) == ["a"]
    assert [row.message for row in hub.followed["a"].rows] == ["line 1\n", "line 2\n"]


async def test_streams_of_other_runs_go_on_when_the_stream_polling_for_them_goes(store: Store) -> None:
    # One waiting stream polls the hub for all; the others sleep until their run has news. The
    # poller going, as its run ends or as its client leaves, must leave someone polling.
    await store.write_runs(running("a", "b", "c"))
    hub = events.Hub(store, interval=0.01)
    closing = anyio.Event()
    seen: dict[str, list[dict[str, Any]]] = {"a": [], "b": [], "c": []}

    async def consume(run_id: str) -> None:
        async for chunk in events.run_events(hub, run_id, closing=closing):
            seen[run_id].extend(parse(message) for message in chunk.split("\n\n") if message.strip())

    def texts(run_id: str) -> list[str]:
        return [e["data"]["text"] for e in seen[run_id] if e["event"] == "output"]

    async def until(condition: Any) -> None:
        for _ in range(500):  # 5 s at most
            if condition():
                return
            await anyio.sleep(0.01)
        raise AssertionError(f"gave up waiting; seen {seen}")

    async with anyio.create_task_group() as group:
        async with anyio.create_task_group() as first:
            first.start_soon(consume, "a")
            await until(lambda: seen["a"] != [])  # a's stream waits first: it polls
            group.start_soon(consume, "b")
            group.start_soon(consume, "c")
            await until(lambda: seen["b"] != [] and seen["c"] != [])
            first.cancel_scope.cancel()  # a's client leaves, mid-wait
        await store.write_runs(lines("b", range(1, 3)))
        await until(lambda: texts("b") == ["line 1\n", "line 2\n"])
        await store.write_runs(RunBatch(finishes=[RunEnd("b", RunStatus.SUCCEEDED, NOW + 1)]))
        await until(lambda: [e["event"] for e in seen["b"]][-1:] == ["end"])
        await store.write_runs(lines("c", range(1, 2)))  # b's stream has gone too: c's still hears
        await store.write_runs(RunBatch(finishes=[RunEnd("c", RunStatus.FAILED, NOW + 1)]))
        await until(lambda: [e["event"] for e in seen["c"]][-1:] == ["end"])
    assert texts("c") == ["line 1\n"]
    assert hub.followed == {}


async def test_streams_joining_a_run_with_earlier_rows_read_them_once_for_all(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    # A hundred pages opening on one run: its history is read from the store once, not per page.
    await store.write_runs(running("r"))
    await store.write_runs(lines("r", range(1, 6)))
    hub = events.Hub(store, interval=0.01)
    await hub.join("r")  # followed already: the rows above are below the hub's own
    reads: list[int] = []
    log_lines = store.log_lines

    async def counted(run_id: str, *, after: int, limit: int) -> Any:
        reads.append(after)
        return await log_lines(run_id, after=after, limit=limit)

    monkeypatch.setattr(store, "log_lines", counted)
    closing = anyio.Event()
    seen: list[list[str]] = [[] for _ in range(10)]

    async def consume(i: int) -> None:
        async for chunk in events.run_events(hub, "r", closing=closing):
            seen[i] += [parse(m)["data"]["text"] for m in chunk.split("\n\n") if m.strip() and parse(m)["event"] == "output"]

    async def each_has(rows: int) -> None:
        for _ in range(500):  # 5 s at most: the streams poll every 0.01 s
            if all(len(texts) == rows for texts in seen):
                return
            await anyio.sleep(0.01)
        raise AssertionError(f"gave up waiting; seen {seen}")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            for i in range(10):
                group.start_soon(consume, i)
            await each_has(5)
            await store.write_runs(lines("r", range(6, 7)))  # and a new row, after them
            await each_has(6)
            closing.set()
    assert seen == [[f"line {i}\n" for i in range(1, 7)]] * 10
    assert reads == [0]
