"""What the commands share: settings, printing, exiting, running a coroutine, option parsing."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from runner.errors import Problem

EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE = 0, 1, 2
"""Exit codes of a command that ends on its own; one that a RunnerError stops exits with the
error's ``exit_code`` (2, or 3 when there is nothing to run)."""

T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    project: Path
    db: str | None
    log_format: str

    @property
    def store_location(self) -> str:
        return self.db or str(self.project / ".runner" / "runner.db")


def require_postgres(settings: Settings, what: str) -> None:
    """Exit 2 before anything is opened when ``what`` (workers, --remote) meets a SQLite store."""
    from runner.store import database_url  # lazy, for start-up time (SQLAlchemy)

    if not database_url(settings.store_location).startswith("postgresql"):
        fail(
            f"{what} needs a PostgreSQL store (--db postgresql://... or RUNNER_DB); "
            f"{settings.store_location} is SQLite. See docs/distributed.md",
            EXIT_USAGE,
        )


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"runner: {message}", err=True)
    sys.exit(code)


def run_async(fn: Callable[[], Coroutine[Any, Any, T]], *, runs_tasks: bool = False) -> T:
    """``fn()`` on an asyncio event loop; ``runs_tasks`` for a command that runs tasks from
    start to end (``run``, ``worker``: its garbage collector tuned for that)."""
    import anyio  # lazy, for start-up time

    if runs_tasks:
        from runner.processes import tune_gc

        tune_gc()

    results: list[T] = []

    async def main() -> None:
        results.append(await fn())

    # The main task returns None on purpose: on the way out, asyncio (3.11) formats the repr of
    # its SIGINT handler, which holds the main task and so the repr of its result; for a sync
    # plan of 10,000 tasks that costs a third of a second.
    anyio.run(main, backend="asyncio")
    return results[0]


def print_problems(problems: list[Problem], project: Path) -> None:
    """Each problem as ``path:line:col: message``, the path one that opens from the current
    directory (where editors, CI annotations and pre-commit look for it): relative to it when
    the project lies inside it, else absolute."""
    base = os.path.relpath(project)
    if base.split(os.sep, 1)[0] == os.pardir:
        base = str(project)
    for problem in problems:
        if base != ".":
            problem = dataclasses.replace(problem, path=os.path.join(base, problem.path))
        click.echo(str(problem), err=True)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def print_table(rows: Sequence[Sequence[str]]) -> None:
    """Rows (the header first) in columns two spaces apart, with no trailing spaces."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def complete_task(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[str]:
    """Task names from the project's files, for shell completion (no store needed)."""
    from runner.spec import load_tasks  # lazy, for start-up time (PyYAML)

    project = Path(ctx.find_root().params.get("project") or ".")
    try:
        names = load_tasks(project.resolve()).specs
    except Exception:  # a completion must never print a traceback into the shell
        return []
    return [name for name in sorted(names) if name.startswith(incomplete)]


def parse_parameter(text: str) -> tuple[str, Any]:
    from runner.taskfile import parse_override  # lazy, for start-up time (PyYAML)

    try:
        return parse_override(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="-p") from None


def duration_option(text: str, option: str) -> float | None:
    """A DURATION option's seconds; None for 0 (off)."""
    from runner.spec import parse_duration  # lazy, for start-up time (PyYAML)

    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from exc
    return seconds or None
