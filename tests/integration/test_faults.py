"""Fault isolation in process: whatever fails while one run is prepared, started or recorded
fails that run, recorded ``failed`` with the error, and nothing else.

Real causes where there are any (a secret file with a NUL byte or not UTF-8, a provider that
raises, a result JSON cannot write, a log line the database cannot store); faults that cannot
be caused for real (a spawn or a masker that raises, a full disk under the upstream file) are
injected at their boundary. Each test runs a good task next to the faulty one and another run
after it, in the same engine, and checks the store holds every run with a final status.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import ProjectDir

from runner import execution
from runner.engine import Engine
from runner.errors import RecordRefused
from runner.masking import Masker
from runner.models import Run, RunStatus
from runner.records import LogChunk, RunBatch, RunEnd, Written
from runner.store import Store
from runner.sync import sync_project

pytestmark = [pytest.mark.timeout(10), pytest.mark.usefixtures("fresh_plugins")]

PLUGIN = '''
import anyio

from runner import RunContext
from runner.inject import register_injectable

GATE = anyio.Event()  # the test opens it to let gated tasks end together


class Flaky:
    """An injectable whose provider fails."""


def _broken(scope):
    raise RuntimeError("the provider broke")


register_injectable(Flaky, _broken)


async def wants_flaky(flaky: Flaky) -> str:
    return "never"


async def huge() -> int:
    return 10 ** 5000  # more digits than Python turns into a string by default


async def surrogate(ctx: RunContext) -> str:
    await GATE.wait()
    # A file name that is not UTF-8, as os.listdir hands it over (surrogateescape).
    ctx.logger.info("found %s", b"caf\\xe9".decode("utf-8", "surrogateescape"))
    return "logged"


async def fine(ctx: RunContext) -> str:
    await GATE.wait()
    ctx.logger.info("all good")
    return "fine"


def boom() -> str:
    print("BOOM")
    return "printed"
'''

TASKS = """
version: 1
tasks:
  good:
    type: python
    callable: plugins.faults:fine
  nul_secret:
    command: 'echo "$X"'
    env: {X: {from_file: secrets/nul}}
  not_utf8_secret:
    command: 'echo "$X"'
    env: {X: {from_file: secrets/latin1}}
  provider:
    type: python
    callable: plugins.faults:wants_flaky
  huge:
    type: python
    callable: plugins.faults:huge
  shell:
    command: 'echo shell'
  upstream:
    command: 'cat "$RUNNER_UPSTREAM_FILE"'
    needs: [shell]
  boom_shell:
    command: 'echo BOOM'
  boom_python:
    type: python
    callable: plugins.faults:boom
  surrogate:
    type: python
    callable: plugins.faults:surrogate
"""


def write(project: ProjectDir) -> None:
    project.tasks("a.yaml", TASKS)
    project.plugin("faults", PLUGIN)
    (project.root / "secrets").mkdir()
    (project.root / "secrets" / "nul").write_bytes(b"a\0b\n")
    (project.root / "secrets" / "latin1").write_bytes(b"caf\xe9\n")


def spawn_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    async def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("spawn exploded")

    monkeypatch.setattr(execution, "run_shell", explode)


def disk_full(monkeypatch: pytest.MonkeyPatch) -> None:
    def full(data: Any) -> str:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(execution, "_write_upstream_file", full)


def masker_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Masker.text

    def text(self: Masker, value: str) -> str:
        if "BOOM" in value:
            raise RuntimeError("the masker broke")
        return original(self, value)

    monkeypatch.setattr(Masker, "text", text)


def nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    pass


async def finals(store: Store) -> dict[str, list[Run]]:
    """Every run in the store, by task; none of them left queued or running."""
    runs = await store.runs(limit=1000)
    assert [r for r in runs if r.status in (RunStatus.QUEUED, RunStatus.RUNNING)] == []
    by_task: dict[str, list[Run]] = {}
    for r in runs:
        by_task.setdefault(r.task, []).append(r)
    return by_task


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("task", "fault", "error_type", "message"),
    [
        ("nul_secret", nothing, "SecretUnavailable", "contains a NUL byte"),
        ("not_utf8_secret", nothing, "SecretUnavailable", "secrets/latin1"),
        ("provider", nothing, "RuntimeError", "the provider broke"),
        ("shell", spawn_raises, "RuntimeError", "spawn exploded"),
        ("upstream", disk_full, "OSError", "No space left on device"),
        ("boom_shell", masker_raises, "RuntimeError", "the masker broke"),
        ("boom_python", masker_raises, "RuntimeError", "the masker broke"),
        ("huge", nothing, "ValueError", "integer string conversion"),
    ],
)
async def test_a_fault_in_one_run_fails_that_run_and_the_engine_goes_on(
    project: ProjectDir,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    task: str,
    fault: Callable[[pytest.MonkeyPatch], None],
    error_type: str,
    message: str,
) -> None:
    write(project)
    await sync_project(project.root, store)
    fault(monkeypatch)
    async with Engine(store, project.root) as engine:
        good_id = await engine.submit("good")
        faulty = await engine.run(task, with_needs=False)
        sys.modules["plugins.faults"].GATE.set()
        with anyio.fail_after(5):
            good = await engine.wait(good_id)
            again = await engine.run("good")  # the engine still runs tasks
    assert faulty.status is RunStatus.FAILED, faulty
    assert faulty.error is not None
    assert faulty.error["type"] == error_type, faulty.error
    assert message in (faulty.error["message"] + (faulty.error["traceback"] or "")), faulty.error
    assert good.status is RunStatus.SUCCEEDED and again.status is RunStatus.SUCCEEDED
    stored = await store.run(faulty.id)
    assert stored.status is RunStatus.FAILED and stored.error == faulty.error
    assert "BOOM" not in str(stored.to_json())  # what could not be masked is not kept
    assert len((await finals(store))["good"]) == 2


@pytest.mark.anyio
async def test_a_run_whose_record_the_store_refuses_is_recorded_failed_and_the_others_land(
    project: ProjectDir, store: Store
) -> None:
    write(project)
    await sync_project(project.root, store)
    async with Engine(store, project.root) as engine:
        ids = [await engine.submit(name) for name in ("surrogate", "good", "good")]
        sys.modules["plugins.faults"].GATE.set()  # all three end together, in shared batches
        with anyio.fail_after(5):
            bad, *good = [await engine.wait(run_id) for run_id in ids]
            again = await engine.run("good")
    assert bad.status is RunStatus.FAILED and bad.error is not None
    assert bad.error["type"] == "RecordRefused"
    assert "surrogates not allowed" in bad.error["message"]
    assert [r.status for r in (*good, again)] == [RunStatus.SUCCEEDED] * 3
    for run in good:
        stored = await store.run(run.id)
        assert stored.status is RunStatus.SUCCEEDED and [line.message for line in stored.logs] == ["all good"]
    assert (await store.run(bad.id)).error == bad.error
    await finals(store)


@pytest.mark.anyio
async def test_a_refused_batch_is_written_again_run_by_run(
    project: ProjectDir, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(project)
    await sync_project(project.root, store)
    batches: list[RunBatch] = []
    write_runs = store.write_runs

    async def seen(batch: RunBatch) -> Written:
        batches.append(batch)
        return await write_runs(batch)

    monkeypatch.setattr(store, "write_runs", seen)
    async with Engine(store, project.root) as engine:
        bad, good = engine.workflow("good"), engine.workflow("good")
        await bad.queue()
        await good.queue()
        batches.clear()

        def ending(run_id: str, message: str) -> tuple[RunEnd, list[LogChunk]]:
            return RunEnd(run_id, RunStatus.SUCCEEDED, 2.0, 1.0), [LogChunk(run_id, 1.0, "log", "info", message)]

        outcomes: dict[str, Any] = {}

        async def finish(run_id: str, message: str) -> None:
            try:
                outcomes[run_id] = await engine.recorder.finished(*ending(run_id, message))
            except RecordRefused as exc:
                outcomes[run_id] = exc

        async with anyio.create_task_group() as group:
            group.start_soon(finish, bad.target_run_id, "caf\udce9")
            group.start_soon(finish, good.target_run_id, "fine")
    assert len(batches[0].finishes) == 2  # one batch for both, refused as a whole
    assert isinstance(outcomes[bad.target_run_id], RecordRefused)
    assert "surrogates not allowed" in str(outcomes[bad.target_run_id])
    assert outcomes[good.target_run_id] is True
    landed = await store.run(good.target_run_id)
    assert landed.status is RunStatus.SUCCEEDED and [line.message for line in landed.logs] == ["fine"]
    assert (await store.run(bad.target_run_id)).status is RunStatus.QUEUED  # the engine's to fail


@pytest.mark.anyio
async def test_a_secret_path_with_a_nul_byte_fails_the_run_not_the_workflow(
    project: ProjectDir, store: Store, tmp_path: Path
) -> None:
    write(project)
    await sync_project(project.root, store)
    async with Engine(store, project.root) as engine:
        # The Python API takes what a task file could not say; the spec is the engine's own.
        stored = engine.tasks["nul_secret"]
        from dataclasses import replace

        from runner.models import SecretRef

        spec = replace(stored.spec, env={"X": SecretRef(from_file="secrets/a\0b")})
        engine.tasks["nul_secret"] = replace(stored, spec=spec)
        run = await engine.run("nul_secret")
    assert run.status is RunStatus.FAILED and run.error is not None
    assert run.error["type"] == "SecretUnavailable" and "null byte" in run.error["message"]


@pytest.mark.anyio
async def test_a_run_the_store_never_takes_ends_its_workflow_with_a_store_error_not_a_group(
    project: ProjectDir, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(project)
    await sync_project(project.root, store)
    write_runs = store.write_runs

    async def refuse_upstream(batch: RunBatch) -> Written:
        if any(run.task == "upstream" for run in batch.inserts) or any(
            end.run_id == refused_id for end in batch.finishes
        ):
            raise ValueError("the store will not take this run")
        return await write_runs(batch)

    async with Engine(store, project.root) as engine:
        workflow = engine.workflow("upstream")
        await workflow.queue()
        refused_id = workflow.target_run_id
        monkeypatch.setattr(store, "write_runs", refuse_upstream)
        # Its end is refused, and so is the end that says so: a StoreError, as from one task.
        with pytest.raises(RecordRefused, match="will not take this run"):
            await workflow.execute(queued=True)
        monkeypatch.setattr(store, "write_runs", write_runs)
        again = await engine.run("shell")
    assert again.status is RunStatus.SUCCEEDED
    assert [r.status for r in workflow.runs] == [RunStatus.SUCCEEDED]  # shell, its need
