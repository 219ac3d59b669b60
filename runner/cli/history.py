"""Commands that read what ran: runs, show, logs (and follow them), and prune old runs."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from runner.cli.common import (
    EXIT_OK,
    EXIT_RUN_FAILED,
    Settings,
    complete_task,
    duration_option,
    emit_json,
    print_table,
    run_async,
)
from runner.models import RunStatus, iso


@click.command()
@click.option("--task", help="Only runs of this task.")
@click.option("--status", type=click.Choice([s.value for s in RunStatus]), help="Only runs in this status.")
@click.option("--invocation", metavar="ID", help="Only the runs of one invocation (one `runner run`).")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_obj
def runs(
    settings: Settings, task: str | None, status: str | None, invocation: str | None, limit: int, as_json: bool
) -> None:
    """Run history, newest first."""
    from runner.store import open_store  # lazy, for start-up time (SQLAlchemy)

    async def fetch() -> Any:
        async with open_store(settings.store_location) as store:
            return await store.runs(task=task, status=status, invocation=invocation, limit=limit)

    found = run_async(fetch)
    if as_json:
        emit_json([r.to_json() for r in found])
        return
    if not found:
        click.echo("no runs")
        return
    print_table([
        ("ID", "TASK", "STATUS", "TRY", "STARTED", "TOOK", "INVOCATION"),
        *(
            (r.id, r.task, r.status.value, str(r.attempt), r.to_json()["started_at"] or "-",
             f"{r.duration_s:.3f}s" if r.duration_s is not None else "-", r.invocation or "-")
            for r in found
        ),
    ])


@click.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON, with its log lines.")
@click.pass_obj
def show(settings: Settings, run_id: str, as_json: bool) -> None:
    """One run, with its output, result or error, and log lines. Exits 3 if there is none."""
    from runner.store import open_store  # lazy, for start-up time (SQLAlchemy)

    async def fetch() -> Any:
        async with open_store(settings.store_location) as store:
            return await store.run(run_id)

    found = run_async(fetch)
    body = found.to_json(with_logs=True)
    if as_json:
        emit_json(body)
        return
    for key in ("id", "task", "type", "status", "attempt", "trigger", "parent_id", "invocation", "scheduled_for", "queued_at", "started_at", "finished_at", "duration_s", "exit_code", "host", "queue", "revision", "git_commit"):
        if body[key] is not None:
            click.echo(f"{key + ':':<13}{body[key]}")
    click.echo(f"{'parameters:':<13}{json.dumps(body['parameters'])}")
    for key in ("stdout", "stderr"):
        if body[key]:
            click.echo(f"--- {key} ---\n{body[key].rstrip()}")
    if body["result"] is not None:
        click.echo(f"--- result ---\n{json.dumps(body['result'], indent=2)}")
    if body["error"] is not None:
        error = body["error"]
        click.echo(f"--- error ---\n{(error.get('traceback') or error['type'] + ': ' + error['message']).rstrip()}")
    if body["logs"]:
        click.echo("--- logs ---")
        for line in body["logs"]:
            click.echo(f"{line['at']} {line['level'].upper():<8} {line['message']}")


@click.command()
@click.argument("run_id", required=False)
@click.option("--task", "task_name", metavar="NAME", shell_complete=complete_task, help="The latest run of NAME instead; with -f, its later runs too.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output and log lines as they are written.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per line.")
@click.pass_obj
def logs(settings: Settings, run_id: str | None, task_name: str | None, follow: bool, as_json: bool) -> None:
    """A run's output and log lines as they were written: RUN_ID's, or those of the latest run
    of --task NAME. Output goes to stdout (the run's stderr to stderr), log lines as "LEVEL
    message".

    With -f, keeps printing as the run writes more, until it ends: then exits 0 if it
    succeeded, 1 otherwise (130/143 if stopped by SIGINT/SIGTERM). With --task NAME -f, goes on
    with NAME's later runs, until SIGINT/SIGTERM (then exits 0). Exits 3 if there is no such
    run, or NAME has none.
    """
    # lazy, for start-up time (SQLAlchemy)
    from runner.follow import follow_logs
    from runner.store import open_store

    if (run_id is None) == (task_name is None):
        raise click.UsageError("give either RUN_ID or --task NAME")
    heading: list[str] = []  # with --task: the run whose rows were printed last

    def emit(entry: Any) -> None:
        if as_json:
            click.echo(json.dumps(_log_entry_json(entry)))
            return
        if task_name is not None and heading != [entry.run_id]:
            heading[:] = [entry.run_id]
            click.echo(f"==> run {entry.run_id} of {entry.task} <==", err=True)
        text, to_stderr = _log_entry_text(entry)
        click.echo(text, nl=False, err=to_stderr)

    async def go() -> Any:
        async with open_store(settings.store_location) as store:
            return await follow_logs(store, emit, run_id=run_id, task=task_name, follow=follow)

    outcome = run_async(go)
    if outcome.stopped_by is not None:
        sys.exit(EXIT_OK if task_name is not None else 128 + outcome.stopped_by)
    if follow and run_id is not None:
        sys.exit(EXIT_OK if outcome.status is RunStatus.SUCCEEDED else EXIT_RUN_FAILED)


def _log_entry_json(entry: Any) -> dict[str, Any]:
    return {
        "run_id": entry.run_id, "task": entry.task, "at": iso(entry.at),
        "stream": entry.stream, "level": entry.level, "message": entry.message,
    }


def _log_entry_text(entry: Any) -> tuple[str, bool]:
    """A log row as ``runner logs`` prints it, and whether it goes to stderr: output as it
    was, a log line as "LEVEL message", runner's own note on a line of its own on stderr."""
    if entry.stream == "log":
        return f"{(entry.level or '').upper()} {entry.message}\n", False
    if entry.level is not None:
        return entry.message if entry.message.endswith("\n") else entry.message + "\n", True
    return entry.message, entry.stream == "stderr"


@click.command()
@click.option(
    "--older-than", default="30d", show_default=True, metavar="DURATION",
    help="Prune finished runs that ended longer ago than this (0: no age limit).",
)
@click.option(
    "--keep", type=click.IntRange(min=0), default=1000, show_default=True, metavar="N",
    help="Prune finished runs beyond the newest N of each task (0: no limit).",
)
@click.option("--dry-run", is_flag=True, help="Count what would be pruned; delete nothing.")
@click.option("--json", "as_json", is_flag=True, help='Print {"pruned": N, "dry_run": bool}.')
@click.pass_obj
def prune(settings: Settings, older_than: str, keep: int, dry_run: bool, as_json: bool) -> None:
    """Delete old finished runs and their log lines, so the store does not grow without bound.

    A finished run goes when it ended longer ago than --older-than or is not among the newest
    --keep runs of its task. Queued and running runs stay, and so does each task's latest
    succeeded run. `runner daemon` does the same by itself (--retain, --retain-runs).
    """
    from runner.store import open_store  # lazy, for start-up time (SQLAlchemy)

    age = duration_option(older_than, "--older-than")

    async def go() -> int:
        async with open_store(settings.store_location) as store:
            return await store.prune_runs(older_than=age, keep_per_task=keep or None, dry_run=dry_run)

    count = run_async(go)
    if as_json:
        emit_json({"pruned": count, "dry_run": dry_run})
        return
    click.echo(f"{'would prune' if dry_run else 'pruned'} {count} run{'' if count == 1 else 's'}")
