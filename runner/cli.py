"""The ``runner`` command: parse, call one service function, print, map errors to exit codes.

Heavy modules (SQLAlchemy, jsonschema) are imported inside the commands that need them, so
``runner --help`` and ``runner validate`` start fast.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from runner import log
from runner.errors import Problem, ProjectError, RunNotFound, RunnerError, TaskNotRunnable

EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE, EXIT_NOT_RUNNABLE = 0, 1, 2, 3

T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    project: Path
    db: str | None
    log_format: str

    @property
    def store_location(self) -> str:
        return self.db or str(self.project / ".runner" / "runner.db")


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"runner: {message}", err=True)
    sys.exit(code)


def _run_async(fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    import anyio

    return anyio.run(fn, backend="asyncio")


def _print_problems(problems: list[Problem]) -> None:
    for problem in problems:
        click.echo(str(problem), err=True)


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


class _Group(click.Group):
    """Maps runner's errors to the documented exit codes, with no traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ProjectError as exc:
            _print_problems(exc.problems)
            _fail(f"{len(exc.problems)} problem(s) in the task files", EXIT_USAGE)
        except (TaskNotRunnable, RunNotFound) as exc:
            _fail(str(exc), EXIT_NOT_RUNNABLE)
        except RunnerError as exc:
            _fail(str(exc), EXIT_USAGE)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--project",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="RUNNER_PROJECT",
    default=".",
    show_default=True,
    help="Project directory (holds tasks.d/ and plugins/). Env: RUNNER_PROJECT.",
)
@click.option("--db", envvar="RUNNER_DB", help="Store: a SQLite path or SQLAlchemy async URL. Env: RUNNER_DB.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="runner")
@click.pass_context
def main(ctx: click.Context, project: Path, db: str | None, log_format: str, verbose: int) -> None:
    """Declarative tasks in git, run and recorded by runner."""
    log.configure(log_format, verbose)
    ctx.obj = Settings(project.resolve(), db, log_format)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@click.pass_obj
def validate(settings: Settings, as_json: bool) -> None:
    """Check every task file, the names in needs, and that python callables resolve with valid
    parameters. Needs no store. Exits 0 when valid, 2 otherwise."""
    from runner.project import load_project

    project = load_project(settings.project)
    problems = project.strict_problems()
    warnings = project.plugin_problems
    if as_json:
        _emit_json(
            {
                "valid": not problems,
                "tasks": len(project.declared.specs),
                "files": len(project.declared.files),
                "problems": [p.to_json() for p in problems],
                "warnings": [p.to_json() for p in warnings],
            }
        )
    else:
        _print_problems(sorted(problems + warnings))
        if not problems:
            click.echo(
                f"ok: {len(project.declared.specs)} tasks in {len(project.declared.files)} files"
            )
    sys.exit(EXIT_USAGE if problems else EXIT_OK)


@main.command()
def schema() -> None:
    """Print the JSON Schema of task files."""
    from runner.spec import load_schema

    _emit_json(load_schema())


@main.command()
@click.option("--dry-run", is_flag=True, help="Show what would change; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the changes as JSON.")
@click.pass_obj
def sync(settings: Settings, dry_run: bool, as_json: bool) -> None:
    """Reconcile the store with the task files (the files win)."""
    from runner.sync import sync_project

    try:
        plan = _run_async(lambda: sync_project(settings.project, settings.store_location, dry_run=dry_run))
    except ProjectError as exc:
        _print_problems(exc.problems)
        _fail(f"{len(exc.problems)} problem(s) in the task files; the store was not changed", EXIT_USAGE)
    if as_json:
        _emit_json(plan.to_json())
        return
    verb = "would be " if dry_run else ""
    lines = [
        f"{verb}{what}: {', '.join(names)}"
        for what, names in plan.to_json().items()
        if names
    ]
    click.echo("\n".join(lines) if lines else "nothing to change")


@main.command(name="list")
@click.option("--enabled", "state", flag_value="enabled", help="Only tasks that can run.")
@click.option("--disabled", "state", flag_value="disabled", help="Only tasks that cannot run.")
@click.option("--all", "include_removed", is_flag=True, help="Include removed tasks.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_obj
def list_(settings: Settings, state: str | None, include_removed: bool, as_json: bool) -> None:
    """Tasks in the store and their state."""
    from runner.store import open_store

    async def fetch() -> list[Any]:
        async with open_store(settings.store_location) as store:
            found = await store.tasks(include_removed=include_removed)
        return list(found.values())

    tasks = _run_async(fetch)
    if state is not None:
        tasks = [t for t in tasks if t.enabled == (state == "enabled")]
    if as_json:
        _emit_json([t.to_json() for t in tasks])
        return
    if not tasks:
        click.echo("no tasks" + ("" if settings.db or (settings.project / ".runner").exists() else "; run `runner sync` first"))
        return
    rows = [
        (t.name, t.spec.type.value, "enabled" if t.enabled else f"disabled ({t.disabled_reason})", str(t.spec.source))
        for t in tasks
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        click.echo("  ".join(cell.ljust(widths[i]) if i < 3 else cell for i, cell in enumerate(row)).rstrip())
