"""A real `runner daemon` keeps going when one run fails for reasons of its own, keeps every
secret it knows out of what it stores and out of its children, and records what python tasks
print and log with their runs rather than in its own output.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from typing import Any

import pytest
from conftest import Cli, ProjectDir, ok, poll
from test_daemon import Daemon as _Daemon

pytestmark = pytest.mark.timeout(60)

SECRET_X = "x-s3cr3t-Jb4W"
FILE_SECRET = "f-s3cr3t-Qm8T"
TOKEN = "t0k3n-Hs2Z"


class Daemon(_Daemon):
    """A daemon started with extra environment variables."""

    def __init__(self, cli: Cli, env: dict[str, str]) -> None:
        self.cli = cli
        self.log_path = cli.project.root / f"daemon-{len(cli.started)}.log"
        self.log_file = self.log_path.open("w")
        self.process = cli.start("--log-format", "json", "daemon", env=env, stderr=self.log_file)


def runs(project: ProjectDir, task: str, status: str | None = None) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(project.db)) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT * FROM runs WHERE task = ? ORDER BY queued_at", (task,)).fetchall()
    return [dict(row) for row in rows if status is None or row["status"] == status]


FAULTS_PLUGIN = '''
from runner import RunContext
from runner.inject import register_injectable
from runner.masking import Masker

# Masking cannot fail for real: this plugin makes it fail for one task's output, in the daemon.
_text = Masker.text


def _text_or_fail(self, text):
    if "BOOM" in text:
        raise RuntimeError("the masker broke")
    return _text(self, text)


Masker.text = _text_or_fail


class Flaky:
    pass


def _broken(scope):
    raise RuntimeError("the provider broke")


register_injectable(Flaky, _broken)


async def wants_flaky(flaky: Flaky) -> str:
    return "never"


async def surrogate(ctx: RunContext) -> str:
    ctx.logger.info("found %s", b"caf\\xe9".decode("utf-8", "surrogateescape"))
    return "logged"
'''

FAULTS = """
version: 1
tasks:
  tick:
    command: echo tick
    schedule: {every: 1s}
  nul:
    command: 'echo "$X"'
    env: {X: {from_file: secrets/nul}}
    schedule: {every: 0.5s}
  boom:
    command: echo BOOM
    schedule: {every: 0.5s}
  provider:
    type: python
    callable: plugins.faults:wants_flaky
    schedule: {every: 0.5s}
  refused:
    type: python
    callable: plugins.faults:surrogate
    schedule: {every: 0.5s}
"""


def test_runs_that_fail_at_spawn_masking_injection_or_recording_fail_alone(project: ProjectDir, cli: Cli) -> None:
    project.tasks("a.yaml", FAULTS)
    project.plugin("faults", FAULTS_PLUGIN)
    (project.root / "secrets").mkdir()
    (project.root / "secrets" / "nul").write_bytes(b"a\0b\n")  # read when the task runs: no check sees it
    daemon = Daemon(cli, {}).started()
    expected = {
        "nul": "contains a NUL byte",
        "boom": "the masker broke",
        "provider": "the provider broke",
        "refused": "surrogates not allowed",
    }
    for task in expected:
        poll(lambda task=task: len(runs(project, task, "failed")) >= 2, within=15, what=f"two failed runs of {task}")
    ticks = len(runs(project, "tick", "succeeded"))
    poll(lambda: len(runs(project, "tick", "succeeded")) >= ticks + 2, within=10, what="more ticks")
    assert daemon.process.poll() is None
    assert daemon.stop() == 0
    for task, message in expected.items():
        for run in runs(project, task):
            assert run["status"] == "failed", (task, run)
            error = json.loads(run["error"])
            assert message in error["message"], (task, error)
    assert not [r for r in runs(project, "tick") if r["status"] != "succeeded"]


TALK_PLUGIN = '''
import logging
import pathlib

import anyio

from runner import RunContext


async def talk(ctx: RunContext) -> str:
    secret = pathlib.Path("secrets/f").read_text().strip()
    print("printed", secret)
    logging.getLogger("plugins.talk").warning("logged %s", secret)
    return "ok"


async def chatter(marker: str) -> None:
    for i in range(100):
        print(marker, i)
        await anyio.sleep(0)
'''

SECRETS = """
version: 1
tasks:
  holder:
    command: 'echo "$S $F"'
    env: {S: {from_env: SECRET_X}, F: {from_file: secrets/f}}
  envdump:
    command: env
    schedule: {every: 0.5s}
  echoer:
    command: 'cat secrets/f'
    schedule: {every: 0.5s}
  talk:
    type: python
    callable: plugins.talk:talk
    schedule: {every: 0.5s}
  left:
    type: python
    callable: plugins.talk:chatter
    parameters: {marker: left}
    schedule: {every: 0.5s}
  right:
    type: python
    callable: plugins.talk:chatter
    parameters: {marker: right}
    schedule: {every: 0.5s}
"""


def test_the_token_and_secrets_stay_out_of_runs_and_python_output_is_recorded_with_its_run(
    project: ProjectDir, cli: Cli
) -> None:
    project.tasks("a.yaml", SECRETS)
    project.plugin("talk", TALK_PLUGIN)
    (project.root / "secrets").mkdir()
    (project.root / "secrets" / "f").write_text(FILE_SECRET + "\n")
    daemon = Daemon(cli, {"RUNNER_HTTP_TOKEN": TOKEN, "SECRET_X": SECRET_X}).started()
    for task in ("envdump", "echoer", "talk", "left", "right"):
        daemon.wait_for("run_finished", task=task, within=15)
    assert daemon.stop() == 0
    out, _ = daemon.process.communicate()

    [dump, *_] = runs(project, "envdump", "succeeded")
    assert "PATH=" in dump["stdout"]
    for leak in ("RUNNER_HTTP_TOKEN", TOKEN, "SECRET_X", SECRET_X):
        assert leak not in dump["stdout"]
    assert {r["stdout"] for r in runs(project, "echoer")} == {"***\n"}

    [talk, *_] = runs(project, "talk", "succeeded")
    shown = json.loads(ok(cli("show", talk["id"], "--json")).stdout)
    assert shown["stdout"] == "printed ***\n"
    assert [(line["level"], line["message"]) for line in shown["logs"]] == [("warning", "plugins.talk: logged ***")]
    for marker in ("left", "right"):
        for run in runs(project, marker, "succeeded"):
            assert run["stdout"] == "".join(f"{marker} {i}\n" for i in range(100))

    daemon_output = out + daemon.log_path.read_text()
    for leak in ("printed", "logged", "left 1", "right 1", FILE_SECRET):
        assert leak not in daemon_output
    with closing(sqlite3.connect(project.db)) as conn:
        conn.execute("PRAGMA wal_checkpoint")
    raw = b"".join(p.read_bytes() for p in project.db.parent.glob("runner.db*"))
    for secret in (TOKEN, SECRET_X, FILE_SECRET):
        assert secret.encode() not in raw
