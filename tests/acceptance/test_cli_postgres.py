"""``runner`` on a PostgreSQL store, as a user types it: sync, run (shell and python, with needs
and an injected session), runs, show; two ``runner run``s at once."""

from __future__ import annotations

import json

import pytest
from conftest import Cli, ProjectDir, json_lines, ok
from pg import pg_server, pg_url  # noqa: F401

pytestmark = pytest.mark.timeout(30)

PLUGIN = """
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from runner import RunContext


async def count(session: AsyncSession, ctx: RunContext) -> dict:
    ctx.logger.info("counting")
    runs = (await session.execute(text("SELECT count(*) FROM runs"))).scalar()
    return {"runs": runs, "nul": "a\\x00b"}
"""

TASKS = """
version: 1
tasks:
  hello:
    command: printf 'hello from runner\\n'
  count:
    type: python
    callable: plugins.jobs:count
    needs: [hello]
"""


def test_runner_run_on_a_postgresql_store(project: ProjectDir, cli: Cli, pg_url: str) -> None:  # noqa: F811
    project.tasks("a.yaml", TASKS)
    project.plugin("jobs", PLUGIN)
    bare = pg_url.replace("postgresql+psycopg://", "postgresql://")
    assert json.loads(ok(cli("--db", bare, "sync", "--json")).stdout)["added"] == ["count", "hello"]

    hello, both = cli.side_by_side(("--db", pg_url, "run", "hello", "--json"), ("--db", pg_url, "run", "count", "--json"))
    assert [r["stdout"] for r in json_lines(ok(hello).stdout)] == ["hello from runner\n"]
    runs = json_lines(ok(both).stdout)
    assert [(r["task"], r["status"]) for r in runs] == [("hello", "succeeded"), ("count", "succeeded")]
    assert runs[-1]["result"]["runs"] >= 2
    assert runs[-1]["result"]["nul"] == "a\x00b"

    history = json.loads(ok(cli("--db", pg_url, "runs", "--json")).stdout)
    assert sorted(r["task"] for r in history) == ["count", "hello", "hello"]
    shown = json.loads(ok(cli("--db", pg_url, "show", runs[-1]["id"], "--json")).stdout)
    assert shown["status"] == "succeeded"
    assert [line["message"] for line in shown["logs"]] == ["counting"]
    assert not project.db.exists()
