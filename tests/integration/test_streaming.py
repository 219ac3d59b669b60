"""A run's output and log lines reach the store while it runs: batched, cut at line ends, capped
and masked; ``Store.log_lines`` reads them back.

Real parts throughout: a SQLite file, the engine running real subprocesses and callables, and a
second store opened on the same file to read what another process would see. Tasks that must
still be running while the test looks wait for a gate file the test creates; the test polls
for what it expects with a deadline, never sleeps for timing.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import ProjectDir, recording

from runner.livelog import FLUSH_BYTES
from runner.masking import Masker
from runner.models import RunStatus
from runner.oneshot import OneShot, run_once
from runner.store import LogEntry, Store, open_store

pytestmark = [pytest.mark.timeout(15), pytest.mark.usefixtures("fresh_plugins")]

SECRET = "Zx9-stream-s3cret"  # distinctive: finding even its start in the file is a leak
GATE = "until [ -e gate ]; do sleep 0.01; done"

PLUGIN = '''
import asyncio
import time
from pathlib import Path

from runner import RunContext


def _gate(ctx: RunContext) -> None:
    deadline = time.monotonic() + 10
    while not Path(ctx.env["GATE"]).exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def chatty(ctx: RunContext) -> str:
    ctx.logger.info("first")
    _gate(ctx)
    ctx.logger.warning("second %s", 2)
    return "done"


async def chatty_async(ctx: RunContext) -> str:
    ctx.logger.info("first")
    while not Path(ctx.env["GATE"]).exists():
        await asyncio.sleep(0.01)
    ctx.logger.warning("second %s", 2)
    return "done"


def leaky(ctx: RunContext) -> None:
    ctx.logger.info("token %s", ctx.env["TOKEN"])
    _gate(ctx)


def quiet() -> int:
    return 1
'''


def write(project: ProjectDir, tasks: str) -> None:
    project.tasks("a.yaml", tasks)
    project.plugin("jobs", PLUGIN)


def db_bytes(db: Path) -> bytes:
    """The database as it is on disk, write-ahead log included."""
    return b"".join(p.read_bytes() for p in sorted(db.parent.glob(db.name + "*")))


async def run(project: ProjectDir, store: Store, name: str, **options: Any) -> OneShot:
    return await run_once(project.root, store, name, handle_signals=False, **options)


async def poll_store(check: Callable[[], Any], *, within: float = 5.0) -> Any:
    """Await ``check()`` until it returns something truthy; another process's work signals nothing."""
    with anyio.fail_after(within):
        while not (found := await check()):  # noqa: ASYNC110
            await anyio.sleep(0.01)
    return found


def text_of(rows: list[LogEntry], stream: str) -> str:
    return "".join(row.message for row in rows if row.stream == stream and row.level is None)


@asynccontextmanager
async def running(project: ProjectDir, store: Store, name: str, **options: Any) -> AsyncIterator[dict[str, Any]]:
    """Start ``name`` in the background; yield a dict that gets ``run`` (its final run) at the end."""
    ended: dict[str, Any] = {}

    async def go() -> None:
        ended["run"] = (await run(project, store, name, **options)).target

    async with anyio.create_task_group() as group:
        group.start_soon(go)
        yield ended


async def run_id_of(reader: Store, task: str) -> str:
    found = await poll_store(functools.partial(reader.runs, task=task, limit=1))
    return str(found[0].id)


# -- while a run goes -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_shell_output_reaches_the_store_while_the_run_goes(
    project: ProjectDir, store: Store, db: Path
) -> None:
    write(
        project,
        f"""
        version: 1
        tasks:
          slow:
            command: 'echo first; echo oops >&2; {GATE}; echo second; printf "no end"'
        """,
    )
    async with open_store(db) as reader, running(project, store, "slow") as ended:
        run_id = await run_id_of(reader, "slow")

        async def both_streams() -> list[LogEntry] | None:
            rows = await reader.log_lines(run_id)
            return rows if {r.stream for r in rows} == {"stdout", "stderr"} else None

        rows = await poll_store(both_streams)
        assert (text_of(rows, "stdout"), text_of(rows, "stderr")) == ("first\n", "oops\n")
        assert (await reader.run_status(run_id)) == ("slow", RunStatus.RUNNING)
        (project.root / "gate").touch()
    final = ended["run"]
    assert final.status is RunStatus.SUCCEEDED
    rows = await store.log_lines(run_id)
    assert text_of(rows, "stdout") == final.stdout == "first\nsecond\nno end"
    assert text_of(rows, "stderr") == final.stderr == "oops\n"
    assert [r.id for r in rows] == sorted(r.id for r in rows)
    assert {(r.run_id, r.task) for r in rows} == {(run_id, "slow")}
    assert (await store.run(run_id)).logs == ()  # output is not a log line


@pytest.mark.anyio
@pytest.mark.parametrize("callable_", ["chatty", "chatty_async"])
async def test_python_log_lines_are_stored_as_they_are_written_and_once(
    project: ProjectDir, store: Store, db: Path, callable_: str
) -> None:
    write(
        project,
        f"""
        version: 1
        tasks:
          chatty:
            type: python
            callable: plugins.jobs:{callable_}
            env: {{GATE: {project.root / "gate"}}}
        """,
    )
    async with open_store(db) as reader, running(project, store, "chatty") as ended:
        run_id = await run_id_of(reader, "chatty")
        [first] = await poll_store(functools.partial(reader.log_lines, run_id))
        assert (first.stream, first.level, first.message) == ("log", "info", "first")
        assert (await reader.run_status(run_id))[1] is RunStatus.RUNNING
        (project.root / "gate").touch()
    final = ended["run"]
    assert final.status is RunStatus.SUCCEEDED
    expected = [("info", "first"), ("warning", "second 2")]
    assert [(line.level, line.message) for line in final.logs] == expected
    assert [(line.level, line.message) for line in (await store.run(run_id)).logs] == expected
    rows = await store.log_lines(run_id)
    assert [(r.stream, r.level, r.message) for r in rows] == [("log", *line) for line in expected]
    assert [r.at for r in rows] == [line.at for line in final.logs]


# -- batching ---------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_output_is_written_in_batches_not_a_commit_per_line(
    project: ProjectDir, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(
        project,
        """
        version: 1
        tasks:
          trickle:
            command: 'for i in $(seq 1 40); do echo "line $i"; sleep 0.01; done'
          burst:
            command: 'seq 1 20000'
          silent:
            command: [ "true" ]
          quiet:
            type: python
            callable: plugins.jobs:quiet
        """,
    )
    commits: list[int] = []
    write_runs = store.write_runs

    async def counting(batch: Any) -> Any:
        if batch.logs:
            commits.append(len(batch.logs))
        return await write_runs(batch)

    monkeypatch.setattr(store, "write_runs", counting)
    started = anyio.current_time()
    trickle = (await run(project, store, "trickle")).target
    took = anyio.current_time() - started
    assert trickle is not None and trickle.succeeded
    rows = await store.log_lines(trickle.id)
    assert text_of(rows, "stdout") == "".join(f"line {i}\n" for i in range(1, 41))
    # One row per flush (every 0.2 s) and one with the final record, however many lines.
    assert len(rows) <= took / 0.2 + 2 < 40
    assert len(commits) <= len(rows)

    burst = (await run(project, store, "burst")).target
    assert burst is not None
    rows = await store.log_lines(burst.id)
    assert text_of(rows, "stdout") == burst.stdout
    assert len(rows) <= 3  # 109 KB: one or two full buffers and the rest

    for name in ("silent", "quiet"):
        quiet = (await run(project, store, name)).target
        assert quiet is not None and quiet.succeeded
        assert await store.log_lines(quiet.id) == []


# -- cutting, capping, masking ------------------------------------------------------------------------


async def queued_run(project: ProjectDir, store: Store) -> str:
    """A run row for log rows to belong to (the table's foreign key wants one)."""
    from runner.engine import Engine

    async with Engine(store, project.root) as engine:
        workflow = engine.workflow("t")
        await workflow.queue()
        return workflow.target_run_id


@pytest.fixture
async def synced(project: ProjectDir, store: Store) -> Store:
    from runner.sync import sync_project

    write(project, "version: 1\ntasks:\n  t:\n    command: 'true'\n")
    await sync_project(project.root, store)
    return store


@pytest.mark.anyio
async def test_output_is_cut_at_line_ends_so_a_secret_is_never_split(
    project: ProjectDir, synced: Store
) -> None:
    run_id = await queued_run(project, synced)
    async with recording(synced) as recorder:
        live = recorder.live(run_id, Masker([SECRET]), output_cap=1_000_000)
        live.output(1, f"one\ntoken={SECRET[:5]}".encode())
        assert [r.message for r in live.take()] == ["one\n"]
        live.output(1, f"{SECRET[5:]} ok\npartial".encode())
        live.output(2, "ünï".encode()[:-1])  # a character cut in two, and no line end yet
        assert [r.message for r in live.take()] == ["token=*** ok\n"]
        live.output(2, "ünï".encode()[-1:] + b" ok\n")
        assert [(r.stream, r.message) for r in live.take()] == [("stderr", "ünï ok\n")]
        assert [r.message for r in live.close()] == ["partial"]
        live.output(1, b"after the end\n")
        assert live.take() == []


@pytest.mark.anyio
async def test_a_long_line_is_written_in_parts_but_never_with_the_start_of_a_secret(
    project: ProjectDir, synced: Store, db: Path
) -> None:
    run_id = await queued_run(project, synced)
    async with recording(synced) as recorder:
        live = recorder.live(run_id, Masker([SECRET]), output_cap=1_000_000)
        live.output(1, b"x" * FLUSH_BYTES + SECRET[:8].encode())  # no line end: long enough
        [part] = await poll_store(functools.partial(synced.log_lines, run_id))
        assert part.message == "x" * FLUSH_BYTES
        assert SECRET[:8].encode() not in db_bytes(db)
        live.output(1, SECRET[8:].encode() + b"\n")
        assert [r.message for r in live.close()] == ["***\n"]


@pytest.mark.anyio
async def test_streaming_stops_at_the_output_cap_with_one_row_saying_so(
    project: ProjectDir, synced: Store, db: Path
) -> None:
    run_id = await queued_run(project, synced)
    async with recording(synced) as recorder:
        live = recorder.live(run_id, Masker([SECRET]), output_cap=30)
        live.output(1, b"0123456789\n")
        live.output(1, f"abcdef {SECRET} and more\n".encode())  # the cap falls inside the secret
        live.output(1, b"never streamed\n")
        rows = await poll_store(functools.partial(synced.log_lines, run_id))
        [notice] = [r for r in rows if r.level is not None]
        assert notice.stream == "stdout" and notice.level == "warning"
        assert notice.message == (
            "[runner: stdout beyond 30 bytes is not streamed; the end is in the run's record]\n"
        )
        assert text_of(rows, "stdout") == "0123456789\nabcdef "
        assert live.close() == []
    assert SECRET[:5].encode() not in db_bytes(db)


@pytest.mark.anyio
async def test_engine_streams_up_to_its_output_cap_and_keeps_the_tail_in_the_record(
    project: ProjectDir, store: Store
) -> None:
    write(project, "version: 1\ntasks:\n  big:\n    command: 'seq 1 2000; echo done >&2'\n")
    final = (await run(project, store, "big", output_cap=1000)).target
    assert final is not None and final.succeeded
    rows = await store.log_lines(final.id)
    everything = "".join(f"{i}\n" for i in range(1, 2001))
    assert text_of(rows, "stdout") == everything[:1000]
    assert final.stdout == everything[-1000:]
    assert [r.message for r in rows if r.level == "warning"] == [
        "[runner: stdout beyond 1000 bytes is not streamed; the end is in the run's record]\n"
    ]
    assert text_of(rows, "stderr") == "done\n"


@pytest.mark.anyio
async def test_secrets_never_reach_streamed_rows(
    project: ProjectDir, store: Store, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNNER_TEST_SECRET", SECRET)
    write(
        project,
        f"""
        version: 1
        tasks:
          shell:
            # One write: the line and the start of the secret reach runner together.
            command: 'printf "line\\ntok=%.5s" "$TOKEN"; {GATE}; printf "%s end\\n" "${{TOKEN#?????}}"; echo "$TOKEN" >&2'
            env: {{TOKEN: {{from_env: RUNNER_TEST_SECRET}}}}
          python:
            type: python
            callable: plugins.jobs:leaky
            env: {{TOKEN: {{from_env: RUNNER_TEST_SECRET}}, GATE: {project.root / "gate"}}}
        """,
    )
    for name, expected in (("shell", "line\n"), ("python", "token ***")):
        (project.root / "gate").unlink(missing_ok=True)
        async with open_store(db) as reader, running(project, store, name) as ended:
            run_id = await run_id_of(reader, name)
            [row] = await poll_store(functools.partial(reader.log_lines, run_id))
            assert row.message == expected
            assert (await reader.run_status(run_id))[1] is RunStatus.RUNNING
            assert SECRET[:5].encode() not in db_bytes(db)
            (project.root / "gate").touch()
        assert ended["run"].status is RunStatus.SUCCEEDED
    shell = (await store.runs(task="shell", limit=1))[0]
    rows = await store.log_lines(shell.id)
    assert (text_of(rows, "stdout"), text_of(rows, "stderr")) == ("line\ntok=*** end\n", "***\n")
    assert SECRET[:5].encode() not in db_bytes(db)


# -- ends other than success ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_timed_out_and_cancelled_runs_keep_what_they_printed(
    project: ProjectDir, store: Store, db: Path
) -> None:
    write(
        project,
        """
        version: 1
        tasks:
          late:
            command: 'printf "before\\npartial"; sleep 30'
            timeout: 0.5s
          stopped:
            command: 'printf "before\\npartial"; sleep 30'
        """,
    )
    late = (await run(project, store, "late", kill_grace=0.2)).target
    assert late is not None and late.status is RunStatus.TIMED_OUT
    assert text_of(await store.log_lines(late.id), "stdout") == "before\npartial"

    async with open_store(db) as reader:
        with anyio.CancelScope() as scope:
            async with running(project, store, "stopped", kill_grace=0.2):
                run_id = await run_id_of(reader, "stopped")
                await poll_store(functools.partial(reader.log_lines, run_id))
                scope.cancel()
        assert (await reader.run_status(run_id))[1] is RunStatus.CANCELLED
        assert text_of(await reader.log_lines(run_id), "stdout") == "before\npartial"


# -- reading ------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_log_lines_after_an_id_and_by_task(project: ProjectDir, store: Store) -> None:
    write(
        project,
        """
        version: 1
        tasks:
          say:
            command: 'echo "$PARAM_WORD"'
            parameters: {word: one}
          other:
            command: 'echo other'
        """,
    )
    one = (await run(project, store, "say")).target
    cursor = await store.last_log_id()
    other = (await run(project, store, "other")).target
    two = (await run(project, store, "say", parameters={"word": "two"})).target
    assert one is not None and two is not None and other is not None
    assert [r.message for r in await store.log_lines(task="say")] == ["one\n", "two\n"]
    [after] = await store.log_lines(task="say", after=cursor)
    assert (after.run_id, after.message) == (two.id, "two\n")
    assert [r.message for r in await store.log_lines(other.id)] == ["other\n"]
    assert await store.log_lines(one.id, after=cursor) == []
    assert len(await store.log_lines(limit=2)) == 2
    assert await store.last_log_id() == max(r.id for r in await store.log_lines())


@pytest.mark.anyio
async def test_a_run_ends_recorded_through_a_short_outage_of_the_store(project: ProjectDir, tmp_path: Path) -> None:
    """The store going away for a moment (a database restarting) is something we cannot cause
    for a file: its writes fail twice, as the driver reports a lost connection, and the run's
    records still arrive once it answers again."""
    from sqlalchemy.exc import OperationalError

    from runner.errors import StoreError
    from runner.records import RunBatch, Written

    write(project, "version: 1\ntasks:\n  hello: {command: echo hi}\n")
    async with open_store(tmp_path / "runner.db") as store:
        write_runs, failures = store.write_runs, [2]

        async def flaky(batch: RunBatch) -> Written:
            if failures[0]:
                failures[0] -= 1
                cause = OperationalError("COMMIT", {}, Exception("connection refused"))
                raise StoreError("cannot write the store") from cause
            return await write_runs(batch)

        store.write_runs = flaky  # type: ignore[method-assign]
        outcome = await run(project, store, "hello")
        store.write_runs = write_runs  # type: ignore[method-assign]
        assert outcome.target is not None and outcome.target.status is RunStatus.SUCCEEDED
        assert failures == [0]
        stored = await store.run(outcome.target.id)
        assert (stored.status, stored.stdout) == (RunStatus.SUCCEEDED, "hi\n")
