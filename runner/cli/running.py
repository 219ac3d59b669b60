"""Commands that run a task: run (here, or on a worker) and trigger (through the daemon)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import click

from runner import log, registry
from runner.cli.common import (
    EXIT_OK,
    EXIT_RUN_FAILED,
    Settings,
    complete_task,
    fail,
    parse_parameter,
    require_postgres,
    run_async,
)
from runner.errors import TaskNotRunnable, refusal
from runner.graph import upstream_order
from runner.models import Run, StoredTask, new_run_id


@click.command()
@click.argument("name", shell_complete=complete_task)
@click.option("-p", "params", multiple=True, metavar="KEY=VALUE", help="Override a parameter of NAME (VALUE is read as in a task file: -p a=10 is a number).")
@click.option("--no-deps", is_flag=True, help="Run NAME alone, not its needs first.")
@click.option(
    "--concurrency", type=click.IntRange(min=1), default=None, metavar="N",
    help="Runs at once, at most (default 16).",
)
@click.option("--json", "as_json", is_flag=True, help="Print each run as a JSON line as it finishes, NAME's last.")
@click.option("--remote", is_flag=True, help="Run on a worker (`runner worker`; PostgreSQL store), and wait for it.")
@click.pass_obj
def run(
    settings: Settings, name: str, params: tuple[str, ...], no_deps: bool, concurrency: int | None, as_json: bool,
    remote: bool,
) -> None:
    """Sync, then run NAME after its needs, recording every run.

    Exits 0 when every run succeeded, 1 when one did not, 3 when NAME (or a task it needs)
    cannot run, 130/143 when stopped by SIGINT/SIGTERM (running tasks are killed and every
    unfinished run is recorded cancelled).
    """
    overrides = dict(parse_parameter(p) for p in params)  # refused before the heavy imports
    # lazy, for start-up time (SQLAlchemy)
    from runner.oneshot import run_once
    from runner.progress import Reporter
    from runner.store import open_store

    if remote:
        require_postgres(settings, "runner run --remote")
        _run_remote(settings, name, overrides, with_needs=not no_deps, as_json=as_json)
    options: dict[str, Any] = {"max_concurrency": concurrency} if concurrency else {}
    reporter = Reporter(as_json=as_json)

    async def go() -> Any:
        async with open_store(settings.store_location) as store:
            return await run_once(
                settings.project, store, name, parameters=overrides, with_needs=not no_deps,
                reporter=reporter, **options,
            )

    outcome = run_async(go, runs_tasks=True)
    if outcome.stopped_by is not None:
        click.echo(f"runner: stopped by signal {outcome.stopped_by}; unfinished runs recorded cancelled", err=True)
        sys.exit(128 + outcome.stopped_by)
    target = outcome.target
    assert target is not None
    if not as_json:
        print_run_output(target)
    last = {r.task: r for r in outcome.runs}  # each task's final attempt
    sys.exit(EXIT_OK if all(r.succeeded for r in last.values()) else EXIT_RUN_FAILED)


def _run_remote(settings: Settings, name: str, overrides: dict[str, Any], *, with_needs: bool, as_json: bool) -> NoReturn:
    # lazy, for start-up time (SQLAlchemy)
    from runner.remote import send, send_and_wait
    from runner.store import open_store
    from runner.sync import sync_project

    async def go() -> Any:
        async with open_store(settings.store_location) as store:
            await sync_project(settings.project, store, warn_unchanged=False)

            async def queue_it() -> str:
                run_id = await send(
                    settings.project, store, name, parameters=overrides, with_needs=with_needs, trigger="cli"
                )
                log.logger.info(f"{name}: run {run_id} queued for a worker")
                return run_id

            return await send_and_wait(store, queue_it)

    runs, stopped_by = run_async(go)
    exit_with_runs(runs, as_json=as_json, stopped_by=stopped_by)


@click.command()
@click.argument("name", shell_complete=complete_task)
@click.option("-p", "params", multiple=True, metavar="KEY=VALUE", help="Override a parameter of NAME (VALUE is read as in a task file: -p a=10 is a number).")
@click.option("--no-deps", is_flag=True, help="Run NAME alone, not its needs first.")
@click.option("--wait", is_flag=True, help="Wait for the run to end; print and exit as `runner run` does.")
@click.option(
    "--json", "as_json", is_flag=True,
    help='Print {"id", "task", "status"} of the queued run; with --wait, each run as a JSON line, NAME\'s last.',
)
@click.option("--remote", is_flag=True, help="Queue it for a worker (`runner worker`; PostgreSQL store), not the daemon.")
@click.pass_obj
def trigger(
    settings: Settings, name: str, params: tuple[str, ...], no_deps: bool, wait: bool, as_json: bool, remote: bool
) -> None:
    """Ask the running daemon to run NAME (after its needs); print the run id.

    Checks NAME as `runner run` does (exit 3 if it cannot run, 2 if a -p value does not fit).
    With --wait, exits 0 when every run succeeded and 1 when one did not.
    """
    overrides = dict(parse_parameter(p) for p in params)  # refused before the heavy imports
    # lazy, for start-up time (SQLAlchemy)
    from runner.engine import checked_parameters, runnable
    from runner.follow import wait_for
    from runner.lease import describe_holder, request_run
    from runner.remote import send
    from runner.store import Trigger, open_store

    if remote:
        require_postgres(settings, "runner trigger --remote")

    def queued(run_id: str) -> None:
        if not as_json:
            click.echo(run_id)
        elif not wait:  # with --wait, only the runs' JSON lines, as `runner run --json`
            click.echo(json.dumps({"id": run_id, "task": name, "status": "queued"}))

    async def request() -> Any:
        async with open_store(settings.store_location) as store:
            if remote:
                run_id = await send(
                    settings.project, store, name, parameters=overrides, with_needs=not no_deps, trigger="trigger"
                )
                queued(run_id)
                return await wait_for(store, run_id) if wait else None
            tasks = await store.tasks()
            try:
                stored = runnable(tasks, name)
                if not no_deps:
                    needs = {n: t.spec.needs for n, t in tasks.items()}
                    for need in upstream_order(name, needs)[:-1]:
                        runnable(tasks, need, needed_by=name)
            except TaskNotRunnable as exc:
                _not_synced_yet(settings.project, tasks, name, exc)
                raise
            if overrides and stored.spec.type.value == "python":
                registry.import_plugins(settings.project)
                checked_parameters(stored.spec, {**stored.spec.parameters, **overrides})
            run_id = new_run_id()
            parameters = json.loads(json.dumps(overrides, default=str))
            lease = await request_run(store, Trigger(run_id, name, parameters, not no_deps, time.time()))
            queued(run_id)
            if lease is None:
                click.echo("runner: no daemon is running on this store; the run starts when one does", err=True)
            else:
                log.logger.info(f"asked the daemon ({describe_holder(lease)}) to run {name}")
            return await wait_for(store, run_id) if wait else None

    try:
        runs = run_async(request)
    except KeyboardInterrupt:
        fail("stopped waiting; the run goes on in the daemon (`runner logs -f RUN_ID` follows it)", 130)
    if runs is None:
        return
    exit_with_runs(runs, as_json=as_json)


def _not_synced_yet(project: Path, tasks: dict[str, StoredTask], name: str, refused: TaskNotRunnable) -> None:
    """Raise TaskNotRunnable saying so when the store refused ``name`` (or a task it needs)
    because it does not hold it yet, though the task files declare it: trigger reads only the
    store, which the daemon syncs."""
    from runner.spec import load_tasks  # lazy, for start-up time (PyYAML)

    found = load_tasks(project)
    declared = found.specs
    if name not in declared or found.problems:  # the files' own problems: `runner validate`
        return
    wanted = upstream_order(name, {n: spec.needs for n, spec in declared.items()})
    missing = [n for n in wanted if n not in tasks or tasks[n].removed]
    if missing:
        what = ", ".join(f"{n!r} ({declared[n].source})" for n in missing)
        raise TaskNotRunnable(
            f"{what} {'is' if len(missing) == 1 else 'are'} declared in the task files but not in the "
            f"store yet: run `runner sync`, or start the daemon (it syncs when it starts and when "
            f"files change)"
        ) from refused


def print_run_output(run: Run) -> None:
    if run.stdout:
        click.echo(run.stdout, nl=False)
    if run.stderr:
        click.echo(run.stderr, nl=False, err=True)
    if run.result is not None:
        click.echo(json.dumps(run.result, indent=2))
    if run.error is not None:
        click.echo(run.error.get("traceback") or f"{run.error['type']}: {run.error['message']}", err=True, nl=False)
        click.echo("", err=True)


def exit_with_runs(runs: list[Run], *, as_json: bool, stopped_by: int | None = None) -> NoReturn:
    """Print the runs of a workflow that ran elsewhere (the target's last) as `runner run`
    does, and exit as it does."""
    target = runs[-1]
    if target.error is not None and (refused := refusal(target.error.get("type"))) is not None:
        fail(target.error["message"], refused.exit_code)
    if as_json:
        for run_ in runs:
            click.echo(json.dumps(run_.to_json()))
    else:
        print_run_output(target)
    if stopped_by is not None:
        click.echo(f"runner: stopped by signal {stopped_by}; unfinished runs recorded cancelled", err=True)
        sys.exit(128 + stopped_by)
    last = {r.task: r for r in runs}
    sys.exit(EXIT_OK if all(r.succeeded for r in last.values()) else EXIT_RUN_FAILED)


DEFAULT_CANCEL_WAIT = 10.0
"""Seconds `runner cancel` waits for the run to be recorded cancelled: the process running it
looks every half second, and a shell task's group gets its kill grace (2 s) after SIGTERM."""


@click.command()
@click.argument("run_id")
@click.option(
    "--wait", "wait_s", type=click.FloatRange(min=0), default=DEFAULT_CANCEL_WAIT, show_default=True,
    metavar="SECONDS", help="How long to wait for the run to be recorded cancelled.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the run as it is at the end as one JSON line (without its log lines), whatever the exit code.")
@click.pass_obj
def cancel(settings: Settings, run_id: str, wait_s: float, as_json: bool) -> None:
    """Stop RUN_ID wherever it runs: in the daemon, in a `runner run`, on a worker.

    The request goes through the store; the process running the run kills its task (a shell
    task's whole process group) and records it cancelled. A queued run is cancelled before it
    starts (one queued for a worker that none has taken up: its workflow's job is taken off the
    queue and its runs are recorded cancelled at once). Runs that need it are then skipped.

    Exits 0 once the run is recorded cancelled, 1 if it had already finished (or finished
    before it could be stopped, or nothing recorded it within --wait), 3 if there is no such run.
    """
    # lazy, for start-up time (SQLAlchemy)
    from runner.cancels import cancel_run
    from runner.models import RunStatus
    from runner.store import CancelOutcome, open_store

    async def request() -> tuple[CancelOutcome, Run]:
        async with open_store(settings.store_location) as store:
            return await cancel_run(store, run_id, wait=wait_s)

    outcome, found = run_async(request)
    if as_json:
        click.echo(json.dumps(found.to_json()))
    status = found.status
    if status is RunStatus.CANCELLED and outcome is not CancelOutcome.FINISHED:
        if not as_json:
            click.echo(f"run {run_id} ({found.task}) cancelled")
        sys.exit(EXIT_OK)
    if outcome is CancelOutcome.FINISHED and status is RunStatus.INTERRUPTED:
        fail(f"run {run_id} ({found.task}) was interrupted: the process running it died; there is nothing to cancel", EXIT_RUN_FAILED)
    if outcome is CancelOutcome.FINISHED:
        fail(f"run {run_id} ({found.task}) had already finished: {status.value}", EXIT_RUN_FAILED)
    if found.finished_at is not None:
        fail(f"run {run_id} ({found.task}) finished {status.value} before it could be stopped", EXIT_RUN_FAILED)
    where = f"on {found.host}" if found.host else "(no worker has taken it up)"
    fail(
        f"run {run_id} ({found.task}) is still {status.value} after {wait_s:g}s: the process running it {where} "
        f"has not recorded it cancelled. The request stands: that process stops the run when it looks "
        f"(if it is stuck, or its host is gone, it will be marked interrupted). `runner show {run_id}` tells",
        EXIT_RUN_FAILED,
    )
