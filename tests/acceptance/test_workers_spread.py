"""A workflow spread over workers, as operators run it: each run of ``runner run --remote`` goes
to whichever worker is free, a run with needs goes once they are final (reading their results
from the store), and failures, retries, a worker killed with -9 and Ctrl-C end the workflow as
``runner run`` ends it on one machine. Real PostgreSQL, real ``runner worker`` processes."""

from __future__ import annotations

import itertools
import json
import signal
from typing import Any

import anyio
import pytest
from conftest import Cli, ProjectDir, json_lines, live_members, ok
from pg import pg_server, pg_url  # noqa: F401

from tests.acceptance.test_workers import (  # noqa: F401
    Database,
    Workers,
    cli,
    marked,
    pg,
    poll,
    processes_with,
    task_started,
    waiting_for_signals,
    workers,
)

pytestmark = pytest.mark.timeout(60)

FAN, NAP, SLOTS = 16, 1.0, 4  # naps, seconds each, slots of each worker

NAPS = """
import time

from runner import Upstream


def nap(i: int) -> int:
    time.sleep(1.0)
    return i


def total(upstream: Upstream) -> int:
    return sum(upstream[name] for name in upstream)
"""


def fan_tasks() -> str:
    naps = "".join(
        f"  n{i}:\n    type: python\n    callable: plugins.naps:nap\n    parameters: {{i: {i}}}\n" for i in range(FAN)
    )
    needs = ", ".join(f"n{i}" for i in range(FAN))
    return f"version: 1\ntasks:\n{naps}  total:\n    type: python\n    callable: plugins.naps:total\n    needs: [{needs}]\n"


def test_a_fan_runs_on_every_worker_in_about_the_time_its_slots_allow(
    project: ProjectDir, cli: Cli, workers: Workers, pg: Database, pg_url: str  # noqa: F811
) -> None:
    project.tasks("fan.yaml", fan_tasks())
    project.plugin("naps", NAPS)
    crew = workers.started(2, "--concurrency", str(SLOTS))

    (*_, target) = json_lines(ok(cli("--db", pg_url, "run", "--remote", "total", "--json")).stdout)
    assert (target["task"], target["status"], target["result"]) == ("total", "succeeded", sum(range(FAN)))

    naps = pg.rows("SELECT * FROM runs WHERE task <> 'total'")
    assert len(naps) == FAN and {r["status"] for r in naps} == {"succeeded"}
    assert {r["pid"] for r in naps} == {w.pid for w in crew}, "the fan did not run on both workers"
    (total,) = pg.runs_of("total")
    assert total["started_at"] >= max(r["finished_at"] for r in naps)
    # More naps at once than one worker has slots: both workers' slots were used together.
    moments = sorted([(r["started_at"], 1) for r in naps] + [(r["finished_at"], -1) for r in naps])
    at_once = max(itertools.accumulate(step for _, step in moments))
    assert SLOTS < at_once <= 2 * SLOTS
    # 16 naps of 1 s on 8 slots: 2 s at best; one worker's 4 slots could not do it in 4 s.
    span = max(r["finished_at"] for r in naps) - min(r["started_at"] for r in naps)
    assert span < 0.9 * FAN * NAP / SLOTS, f"the fan took {span:.2f}s"
    assert [w.stop() for w in crew] == [0, 0]


FAILING = """
    version: 1
    tasks:
      fine:
        command: echo fine
      broken:
        command: echo "half done"; exit 3
      side:
        command: echo side
        needs: [fine]
      mid:
        command: echo mid
        needs: [fine, broken]
      top:
        command: echo top
        needs: [mid, side]
"""


def outcome(runs: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return sorted((r["task"], r["status"], r["attempt"], r["exit_code"], r["stdout"], json.dumps(r["error"])) for r in runs)


def test_a_need_that_fails_skips_what_waits_for_it_as_runner_run_does(
    project: ProjectDir, cli: Cli, workers: Workers, pg: Database, pg_url: str  # noqa: F811
) -> None:
    project.tasks("a.yaml", FAILING)
    workers.started(2)
    remote, local = cli.side_by_side(
        ("--db", pg_url, "run", "--remote", "top", "--json"), ("run", "top", "--json")
    )
    assert remote.returncode == local.returncode == 1
    assert outcome(json_lines(remote.stdout)) == outcome(json_lines(local.stdout))
    assert json_lines(remote.stdout)[-1]["error"]["message"] == "a need did not succeed: mid skipped"
    statuses = {r["task"]: r["status"] for r in pg.rows("SELECT task, status FROM runs")}
    assert statuses == {"fine": "succeeded", "broken": "failed", "side": "succeeded", "mid": "skipped", "top": "skipped"}
    poll(lambda: pg.jobs() == 0, within=3, what="the jobs to leave the queue")
    assert pg.value("SELECT count(*) FROM waiting_jobs") == 0


RETRIED = """
    version: 1
    tasks:
      flaky:
        command: if [ -e tried ]; then echo "second $RUNNER_RUN_ID"; else touch tried; exit 5; fi
        retries: {count: 1, backoff: 0s}
      report:
        command: cat "$RUNNER_UPSTREAM_FILE"
        needs: [flaky]
"""


def test_what_waits_for_a_retried_need_waits_for_its_last_attempt(
    project: ProjectDir, cli: Cli, workers: Workers, pg: Database, pg_url: str  # noqa: F811
) -> None:
    project.tasks("a.yaml", RETRIED)
    workers.started(2)
    runs = json_lines(ok(cli("--db", pg_url, "run", "--remote", "report", "--json")).stdout)
    first, second, report = runs
    assert [(r["task"], r["attempt"], r["status"]) for r in runs] == [
        ("flaky", 1, "failed"), ("flaky", 2, "succeeded"), ("report", 1, "succeeded"),
    ]
    upstream = json.loads(report["stdout"])["flaky"]
    assert (upstream["id"], upstream["stdout"]) == (second["id"], f"second {second['id']}\n")
    assert report["started_at"] >= second["finished_at"] > first["finished_at"]


KILLED = "\n".join(
    ["version: 1", "tasks:"]
    + [
        # Each waits for the test to let it go; the attempts on the killed worker die waiting.
        f"  w{i}:\n    command: {json.dumps(marked(f'w{i}', 'while [ ! -e go ]; do sleep 0.05; done; echo done'))}\n"
        "    retries: {count: 1, backoff: 0s}"
        for i in range(4)
    ]
    + ["  all:\n    command: echo all\n    needs: [w0, w1, w2, w3]"]
)


def test_a_worker_killed_with_9_mid_fan_leaves_every_run_recorded_once(
    project: ProjectDir, cli: Cli, workers: Workers, pg: Database, pg_url: str  # noqa: F811
) -> None:
    project.tasks("a.yaml", KILLED)
    crew = workers.started(2, "--concurrency", "2")
    waiting = cli.start("--db", pg_url, "run", "--remote", "all", "--json")
    for i in range(4):
        task_started(cli, f"w{i}")
    poll(lambda: pg.value("SELECT count(*) FROM runs WHERE status = 'running'") == 4, what="4 runs to be running")
    pids = {r["pid"] for r in pg.rows("SELECT pid FROM runs WHERE status = 'running'")}
    assert pids == {w.pid for w in crew}, "the fan did not reach both workers"
    victim, survivor = crew
    victim.kill()
    (project.root / "go").touch()

    runs = json_lines(ok(cli.finish(waiting)).stdout)
    assert runs[-1]["task"] == "all" and runs[-1]["status"] == "succeeded"  # as `runner run` ends it
    stored = pg.rows("SELECT * FROM runs")
    assert len(stored) == 4 + 2 + 1 and len({r["id"] for r in stored}) == 7
    assert sorted((r["attempt"], r["status"]) for r in stored if r["task"] != "all") == [
        (1, "interrupted"), (1, "interrupted"), (1, "succeeded"), (1, "succeeded"), (2, "succeeded"), (2, "succeeded"),
    ]
    for run in stored:
        if run["status"] == "interrupted":
            assert run["pid"] == victim.pid
        elif run["attempt"] == 2:
            assert run["pid"] == survivor.pid and run["invocation"] == runs[-1]["invocation"]
    assert max(workers.finished_runs().values()) == 1, "a run was recorded finished twice"
    poll(lambda: processes_with("while [ ! -e go ]") == [], what="the killed worker's tasks to go")
    poll(lambda: pg.jobs() == 0, what="the jobs to be settled")
    assert survivor.stop() == 0


CANCELLED = f"""
    version: 1
    tasks:
      slow:
        command: {json.dumps(marked("slow", "sleep 29.6"))}
      unserved:
        command: echo never
        queue: nobody
      top:
        command: echo never
        needs: [slow, unserved]
"""


def test_ctrl_c_of_run_remote_cancels_a_spread_workflow_wherever_its_runs_are(
    project: ProjectDir, cli: Cli, workers: Workers, pg: Database, pg_url: str  # noqa: F811
) -> None:
    project.tasks("a.yaml", CANCELLED)
    (worker,) = workers.started(1, "--queue", "default")
    waiting = cli.start("--db", pg_url, "run", "--remote", "top")
    pgid, _ = task_started(cli, "slow")  # on the worker; unserved on a queue no one takes; top waits
    waiting_for_signals(waiting)
    assert pg.jobs() == 2 and pg.value("SELECT count(*) FROM waiting_jobs") == 1
    waiting.send_signal(signal.SIGINT)
    stopped = cli.finish(waiting)
    assert stopped.returncode == 130, stopped.stderr
    runs = {r["task"]: r for r in pg.rows("SELECT * FROM runs")}
    assert {task: r["status"] for task, r in runs.items()} == dict.fromkeys(("slow", "unserved", "top"), "cancelled")
    assert runs["slow"]["started_at"] is not None and runs["unserved"]["started_at"] is None
    assert live_members(pgid) == [] and processes_with("sleep 29.6") == []
    poll(lambda: pg.jobs() == 0, what="the jobs to go")
    assert pg.value("SELECT count(*) FROM waiting_jobs") == 0
    assert worker.stop() == 0


def test_a_job_of_a_whole_workflow_queued_before_the_upgrade_still_runs(
    project: ProjectDir, cli: Cli, workers: Workers, pg: Database, pg_url: str  # noqa: F811
) -> None:
    project.tasks(
        "a.yaml",
        """
        version: 1
        tasks:
          fetch:
            command: echo fetched
          report:
            command: cat "$RUNNER_UPSTREAM_FILE"
            needs: [fetch]
        """,
    )
    ok(cli("--db", pg_url, "sync"))
    queue_old_job(pg_url)
    (worker,) = workers.started(1)
    poll(lambda: pg.final("r-report"), what="the old job's workflow to end")
    runs = {r["task"]: r for r in pg.rows("SELECT * FROM runs")}
    assert {task: (r["status"], r["pid"]) for task, r in runs.items()} == {
        "fetch": ("succeeded", worker.pid), "report": ("succeeded", worker.pid),
    }
    assert json.loads(runs["report"]["stdout"])["fetch"]["stdout"] == "fetched\n"
    assert worker.events("job_refused") == []
    assert worker.stop() == 0


def queue_old_job(url: str) -> None:
    """A workflow queued as runner queued them before they were spread: one job carrying
    every run (its arguments without ``needs`` and ``upstream``), written as that runner did."""
    from sqlalchemy import text

    from runner.records import RunBatch
    from runner.store import open_store
    from tests.contract.test_store_remote import unowned

    async def write() -> None:
        async with open_store(url) as store:
            await store.ensure_queue()
            await store.write_runs(RunBatch(inserts=[unowned("r-fetch", "fetch", "old"), unowned("r-report", "report", "old")]))
            args = {
                "task": "report", "parameters": {}, "with_needs": True, "trigger": "cli", "parent_id": None,
                "attempt": 1, "scheduled_for": None, "invocation": "old",
                "runs": {"fetch": "r-fetch", "report": "r-report"}, "revision": None, "queue": "default",
            }
            async with store.engine.begin() as conn:
                job = await conn.execute(
                    text("SELECT procrastinate_defer_jobs_v1(ARRAY[ROW('default', 'runner.run', 0, NULL, NULL,"
                         " CAST(:args AS jsonb), NULL)::procrastinate_job_to_defer_v1])"),
                    {"args": json.dumps(args)},
                )
                (job_id,) = job.scalar_one()
                await conn.execute(text("UPDATE runs SET job_id = :id WHERE invocation = 'old'"), {"id": job_id})

    anyio.run(write)
