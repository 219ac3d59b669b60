"""The ``runner`` command: parse, call one service function, print, map errors to exit codes.

One module per group of commands: ``definitions`` (validate, init, schema, sync, list),
``running`` (run, trigger), ``history`` (runs, show, logs, prune) and ``serve`` (daemon,
worker). Heavy modules (SQLAlchemy, PyYAML, jsonschema, anyio) are imported inside the commands
that need them, each marked "lazy, for start-up time", so ``runner --help`` and ``runner
validate`` start fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from runner import log
from runner.cli import definitions, history, running, serve
from runner.cli.common import Settings, fail, print_problems
from runner.errors import ProjectError, RunnerError


class _Group(click.Group):
    """Maps runner's errors to the documented exit codes, with no traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            try:
                return super().invoke(ctx)
            except BaseExceptionGroup as group:
                raise _sole_error(group) from group
        except ProjectError as exc:
            print_problems(exc.problems, ctx.obj.project if isinstance(ctx.obj, Settings) else Path.cwd())
            fail(f"{len(exc.problems)} problem(s) in the task files; nothing was changed", exc.exit_code)
        except RunnerError as exc:
            fail(str(exc), exc.exit_code)


def _sole_error(group: BaseExceptionGroup[Any]) -> BaseException:
    """The runner error inside task groups' exception groups, or the group itself."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        else:
            leaves.append(exc)
    errors = [e for e in leaves if isinstance(e, RunnerError)]
    return errors[0] if errors else group


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
@click.version_option(package_name="runner-tasks")
@click.pass_context
def main(ctx: click.Context, project: Path, db: str | None, log_format: str, verbose: int) -> None:
    """Declarative tasks in git, run and recorded by runner."""
    log.configure(log_format, verbose)
    ctx.obj = Settings(project.resolve(), db, log_format)



for _command in (
    definitions.validate, definitions.init, definitions.schema, definitions.sync, definitions.list_,
    running.run, running.trigger, running.cancel,
    history.runs, history.show, history.logs, history.prune,
    serve.daemon, serve.worker,
):
    main.add_command(_command)
