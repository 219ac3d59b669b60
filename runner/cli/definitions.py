"""Commands about the task definitions: validate, init, schema, sync, list."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from runner.cli.common import (
    EXIT_OK,
    EXIT_USAGE,
    Settings,
    emit_json,
    print_problems,
    print_table,
    run_async,
)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@click.pass_obj
def validate(settings: Settings, as_json: bool) -> None:
    """Check every task file, the names in needs, and that python callables resolve with valid
    parameters. Needs no store. Exits 0 when valid, 2 otherwise."""
    from runner.project import load_project  # lazy, for start-up time (PyYAML, plugins)

    project = load_project(settings.project)
    problems = project.strict_problems()
    warnings = project.plugin_problems
    if as_json:
        emit_json(
            {
                "valid": not problems,
                "tasks": len(project.declared.specs),
                "files": len(project.declared.files),
                "problems": [p.to_json() for p in problems],
                "warnings": [p.to_json() for p in warnings],
            }
        )
    else:
        print_problems(sorted(problems + warnings), settings.project)
        if not problems:
            click.echo(
                f"ok: {len(project.declared.specs)} tasks in {len(project.declared.files)} files"
            )
    sys.exit(EXIT_USAGE if problems else EXIT_OK)


@click.command()
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.pass_obj
def init(settings: Settings, directory: Path | None) -> None:
    """Write a new project into DIRECTORY (default: --project, the current directory): an
    example task file, plugins/, schemas/tasks.schema.json, .gitignore and a pre-commit config.

    Overwrites nothing: if any of these files exists, writes none and exits 2, naming them.
    """
    # lazy, for start-up time
    import shlex

    from runner.scaffold import init_project

    root = (directory or settings.project).resolve()
    written = init_project(root)
    shown = os.path.relpath(root)
    click.echo(f"wrote a new project in {shown}: {', '.join(written)}")
    prefix = "" if shown == "." else f"cd {shlex.quote(shown)} && "
    click.echo(f"next: {prefix}runner validate && runner run add")


@click.command()
def schema() -> None:
    """Print the JSON Schema of task files (the file runner carries, byte for byte)."""
    from runner.schema import schema_file  # lazy, for start-up time

    sys.stdout.buffer.write(schema_file().read_bytes())


@click.command()
@click.option("--dry-run", is_flag=True, help="Show what would change; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the changes as JSON.")
@click.pass_obj
def sync(settings: Settings, dry_run: bool, as_json: bool) -> None:
    """Reconcile the store with the task files (the files win)."""
    # lazy, for start-up time (SQLAlchemy)
    from runner.store import open_store
    from runner.sync import sync_project

    async def reconcile() -> Any:
        async with open_store(settings.store_location) as store:
            return await sync_project(settings.project, store, dry_run=dry_run)

    plan = run_async(reconcile)
    if as_json:
        emit_json(plan.to_json())
        return
    verb = "would be " if dry_run else ""
    lines = [
        f"{verb}{what}: {', '.join(names)}"
        for what, names in plan.to_json().items()
        if names
    ]
    click.echo("\n".join(lines) if lines else "nothing to change")


@click.command(name="list")
@click.option("--enabled", "state", flag_value="enabled", help="Only tasks that can run.")
@click.option("--disabled", "state", flag_value="disabled", help="Only tasks that cannot run.")
@click.option("--all", "include_removed", is_flag=True, help="Include removed tasks.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_obj
def list_(settings: Settings, state: str | None, include_removed: bool, as_json: bool) -> None:
    """Tasks in the store: their state, schedule and next fire time, and their last run."""
    # lazy, for start-up time (SQLAlchemy)
    from runner.overview import task_overviews
    from runner.store import open_store

    now = time.time()

    async def fetch() -> list[Any]:
        async with open_store(settings.store_location) as store:
            return await task_overviews(store, include_removed=include_removed, now=now)

    never_synced = settings.db is None and not Path(settings.store_location).exists()
    tasks = run_async(fetch)
    if state is not None:
        tasks = [t for t in tasks if t.task.enabled == (state == "enabled")]
    if as_json:
        emit_json([t.to_json() for t in tasks])
        return
    if not tasks:
        click.echo("no tasks" + ("; run `runner sync` first" if never_synced else ""))
        return
    rows = [("NAME", "TYPE", "STATE", "SCHEDULE", "NEXT", "LAST RUN", "SOURCE")]
    for t in tasks:
        task, last = t.task, t.last_run
        rows.append((
            task.name,
            task.spec.type.value,
            "enabled" if task.enabled else f"disabled ({task.disabled_reason})",
            t.schedule or "-",
            _relative(t.next_fire_at, now) if t.next_fire_at is not None else "-",
            f"{last.status.value} {_relative(last.at, now)}" if last else "-",
            str(task.spec.source),
        ))
    print_table(rows)


def _relative(at: float, now: float) -> str:
    """``at`` from ``now``, as a person says it: ``in 12m``, ``3h ago``."""
    seconds = abs(at - now)
    for unit, size, below in (("s", 1, 90), ("m", 60, 90 * 60), ("h", 3600, 36 * 3600)):
        if seconds < below:
            amount = f"{round(seconds / size)}{unit}"
            break
    else:
        amount = f"{round(seconds / 86400)}d"
    return f"in {amount}" if at > now else f"{amount} ago"
