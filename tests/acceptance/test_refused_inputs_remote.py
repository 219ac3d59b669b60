"""A job from another host whose parameters could not reach a task: the worker refuses it (the
run recorded failed, naming the parameter), and goes on taking jobs. PostgreSQL only; a job's
arguments are ``jsonb`` there, which cannot hold a NUL or a lone surrogate at all, so what can
arrive is a bad name or parameters that are not a mapping."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import anyio
import pytest
from conftest import Cli, ProjectDir, ok
from pg import pg_server, pg_url  # noqa: F401

from tests.acceptance.test_workers import Database, Workers, cli, pg, poll, workers  # noqa: F401
from tests.contract.test_store_remote import job, unowned

pytestmark = pytest.mark.timeout(60)

TASKS = """
    version: 1
    tasks:
      show:
        command: 'printf "%s" "$RUNNER_PARAMS"'
"""


def queue_directly(url: str, run_id: str, parameters: Any) -> None:
    """Write a run and its job as another host's runner would, without its checks."""
    from runner.records import RunBatch
    from runner.store import open_store

    async def write() -> None:
        async with open_store(url) as store:
            await store.ensure_queue()
            sent = replace(job(run_id, task="show", invocation=run_id), parameters=parameters)
            await store.write_runs(RunBatch(inserts=[unowned(run_id, "show", run_id)], jobs=[sent]))

    anyio.run(write)


def test_a_worker_refuses_a_job_with_parameters_that_cannot_reach_a_task_and_goes_on(
    project: ProjectDir, cli: Cli, workers: Workers, pg: Database, pg_url: str  # noqa: F811
) -> None:
    project.tasks("a.yaml", TASKS)
    ok(cli("--db", pg_url, "sync"))
    (worker,) = workers.started(1)
    cases = {
        "a" * 32: ({"a b": 1, "ok": 2}, "'a b' is not a valid parameter name"),
        "b" * 32: ({"a=b": "x"}, "'a=b' is not a valid parameter name"),
        "c" * 32: (["x"], "parameters must be a mapping of names to values, not list"),
    }
    for run_id, (parameters, _) in cases.items():
        queue_directly(pg_url, run_id, parameters)
    for run_id, (_, message) in cases.items():
        run = poll(lambda run_id=run_id: pg.final(run_id), what=f"run {run_id} to be refused")
        assert run["status"] == "failed"
        error = run["error"] if isinstance(run["error"], dict) else json.loads(run["error"])
        assert error["type"] == "ParameterError" and message in error["message"]
        assert run["started_at"] is None  # refused before anything started
    refused = worker.wait_for("job_refused", count=len(cases))  # logged just after the record is
    assert sorted(e["run_id"] for e in refused) == sorted(cases)
    assert worker.process.poll() is None
    done = ok(cli("--db", pg_url, "run", "--remote", "show", "-p", "x=1", "--json"))
    assert json.loads(done.stdout.splitlines()[-1])["stdout"] == '{"x": 1}'
