"""Secrets across a project, and a python task's own output, in process.

Every secret runner knows (every reference of the project that resolves, and the HTTP token) is
masked in every run, not only in the runs of the task that declares it; children do not get the
variables those references read from. What a python task prints or logs through the standard
library is recorded with its run, masked, and does not reach the process's own streams.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import anyio
import pytest
from conftest import ProjectDir

from runner.engine import Engine
from runner.models import RunStatus
from runner.store import Store, open_store
from runner.sync import sync_project

pytestmark = [pytest.mark.timeout(10), pytest.mark.usefixtures("fresh_plugins")]

SECRET_X = "x-s3cr3t-Jb4W"
FILE_SECRET = "f-s3cr3t-Qm8T"
TOKEN = "t0k3n-Hs2Z"

PLUGIN = '''
import logging
import pathlib
import sys
import threading

import anyio

from runner import RunContext

BOTH = threading.Barrier(2, timeout=5)  # two sync tasks print at the same time


async def talkative(ctx: RunContext) -> str:
    print("hello from", ctx.task)
    print("to stderr", file=sys.stderr)
    logging.getLogger("plugins.talk").warning("warned about %s", pathlib.Path("secrets/f").read_text().strip())
    logging.warning("root says hi")
    logging.getLogger("plugins.talk").debug("below the level: not recorded")
    ctx.logger.info("ctx logger")
    return "said"


def talkative_sync(ctx: RunContext) -> str:
    print("sync hello", pathlib.Path("secrets/f").read_text().strip())
    logging.getLogger("plugins.talk").error("sync error line")
    return "said"


def silent() -> int:
    return 1


async def chatter(marker: str) -> None:
    for i in range(50):
        print(marker, i)
        await anyio.sleep(0)


def chatter_sync(marker: str) -> None:
    BOTH.wait()
    for i in range(200):
        print(marker, i)
'''

TASKS = """
version: 1
tasks:
  holder:
    command: 'echo "$S $F"'
    env: {S: {from_env: SECRET_X}, F: {from_file: secrets/f}}
  envdump:
    command: [env]
  declarer:
    command: 'echo "declared $SECRET_X"'
    env: {SECRET_X: {from_env: SECRET_X}}
  echoer:
    command: 'cat secrets/f; echo "$PARAM_SAY"'
    parameters: {say: nothing}
  talkative:
    type: python
    callable: plugins.talk:talkative
  talkative_sync:
    type: python
    callable: plugins.talk:talkative_sync
  silent:
    type: python
    callable: plugins.talk:silent
  chatter:
    type: python
    callable: plugins.talk:chatter
    parameters: {marker: x}
  chatter_sync:
    type: python
    callable: plugins.talk:chatter_sync
    parameters: {marker: x}
"""


@pytest.fixture
def secrets_project(project: ProjectDir, monkeypatch: pytest.MonkeyPatch) -> ProjectDir:
    monkeypatch.setenv("SECRET_X", SECRET_X)
    monkeypatch.setenv("RUNNER_HTTP_TOKEN", TOKEN)
    monkeypatch.chdir(project.root)  # the plugin opens secrets/f as a task would, from the project
    project.tasks("a.yaml", TASKS)
    project.plugin("talk", PLUGIN)
    (project.root / "secrets").mkdir()
    (project.root / "secrets" / "f").write_text(FILE_SECRET + "\n")
    return project


def raw(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(db.parent.glob(db.name + "*")))


@pytest.mark.anyio
async def test_children_get_neither_the_token_nor_the_sources_of_secret_references(
    secrets_project: ProjectDir, store: Store, db: Path
) -> None:
    await sync_project(secrets_project.root, store)
    async with Engine(store, secrets_project.root) as engine:
        dump = await engine.run("envdump")
        declarer = await engine.run("declarer")
    assert dump.status is RunStatus.SUCCEEDED and dump.stdout is not None
    names = {line.split("=", 1)[0] for line in dump.stdout.splitlines()}
    assert "RUNNER_HTTP_TOKEN" not in names and "SECRET_X" not in names
    assert "PATH" in names  # the rest of runner's environment is there
    assert TOKEN not in dump.stdout and SECRET_X not in dump.stdout
    # A task that declares the variable gets it, masked in what is kept.
    assert declarer.stdout == "declared ***\n"
    assert TOKEN.encode() not in raw(db) and SECRET_X.encode() not in raw(db)


@pytest.mark.anyio
async def test_every_secret_of_the_project_and_the_token_are_masked_in_every_run(
    secrets_project: ProjectDir, store: Store, db: Path
) -> None:
    await sync_project(secrets_project.root, store)
    async with Engine(store, secrets_project.root) as engine:
        holder = await engine.run("holder")
        # echoer declares no secret: it reads holder's file and is handed the token and SECRET_X.
        echoer = await engine.run("echoer", parameters={"say": f"{TOKEN} {SECRET_X}"})
    assert holder.stdout == "*** ***\n"
    assert echoer.stdout == "***\n*** ***\n"
    assert echoer.parameters == {"say": "*** ***"}
    for secret in (TOKEN, SECRET_X, FILE_SECRET):
        assert secret.encode() not in raw(db)


@pytest.mark.anyio
async def test_a_python_tasks_print_and_logging_are_its_runs_masked_and_not_the_processs(
    secrets_project: ProjectDir, store: Store, db: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    await sync_project(secrets_project.root, store)
    streams = (sys.stdout, sys.stderr)
    # The process's own handler on the root logger (a daemon's, say) sees none of the runs' records.
    seen: list[str] = []
    own = logging.Handler()
    own.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    root = logging.getLogger()
    root.addHandler(own)
    try:
        async with Engine(store, secrets_project.root) as engine:
            talk = await engine.run("talkative")
            sync = await engine.run("talkative_sync")
            silent = await engine.run("silent")
        logging.warning("after the runs")
    finally:
        root.removeHandler(own)
    assert seen == ["after the runs"]
    assert own.filters == [] and not [h for h in root.handlers if type(h).__module__ == "runner.capture"]
    assert (sys.stdout, sys.stderr) == streams  # put back once no python run goes on
    assert talk.stdout == "hello from talkative\n" and talk.stderr == "to stderr\n"
    assert sync.stdout == "sync hello ***\n" and sync.stderr is None
    assert silent.stdout is None and silent.stderr is None  # printed nothing: as before
    async with open_store(db) as other:
        shown = (await other.run(talk.id)).to_json(with_logs=True)
        sync_shown = (await other.run(sync.id)).to_json(with_logs=True)
        streamed = await other.log_lines(talk.id)
    assert [(line["level"], line["message"]) for line in shown["logs"]] == [
        ("warning", "plugins.talk: warned about ***"),
        ("warning", "root says hi"),
        ("info", "ctx logger"),
    ]
    assert [(line["level"], line["message"]) for line in sync_shown["logs"]] == [
        ("error", "plugins.talk: sync error line"),
    ]
    assert {(row.stream, row.message) for row in streamed if row.stream != "log"} == {
        ("stdout", "hello from talkative\n"),
        ("stderr", "to stderr\n"),
    }
    out, err = capfd.readouterr()
    assert "hello" not in out + err and "warned" not in out + err and "root says" not in out + err
    assert FILE_SECRET.encode() not in raw(db)


@pytest.mark.anyio
@pytest.mark.parametrize("task", ["chatter", "chatter_sync"])
async def test_concurrent_python_runs_keep_their_own_output(
    secrets_project: ProjectDir, store: Store, task: str
) -> None:
    await sync_project(secrets_project.root, store)
    async with Engine(store, secrets_project.root) as engine:
        ids = [await engine.submit(task, parameters={"marker": m}) for m in ("left", "right")]
        with anyio.fail_after(5):
            left, right = [await engine.wait(run_id) for run_id in ids]
    count = 50 if task == "chatter" else 200
    assert left.stdout == "".join(f"left {i}\n" for i in range(count))
    assert right.stdout == "".join(f"right {i}\n" for i in range(count))


def test_runs_json_shape_is_unchanged_for_a_python_task_that_prints_nothing(
    secrets_project: ProjectDir,
) -> None:
    from runner.testing import run_task_sync

    outcome = run_task_sync("silent", project=secrets_project.root)
    body = outcome.run.to_json()
    assert json.dumps({k: body[k] for k in ("stdout", "stderr", "result")}) == (
        '{"stdout": null, "stderr": null, "result": 1}'
    )
