"""The ``runner`` command: parse, call one service function, print, map errors to exit codes.

Heavy modules (SQLAlchemy, jsonschema) are imported inside the commands that need them, so
``runner --help`` and ``runner validate`` start fast.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from runner import log
from runner.errors import (
    ParameterError,
    Problem,
    ProjectError,
    RunnerError,
    RunNotFound,
    TaskNotRunnable,
)
from runner.models import RunStatus

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


def _require_postgres(settings: Settings, what: str) -> None:
    """Exit 2 before anything is opened when ``what`` (workers, --remote) meets a SQLite store."""
    from runner.store import database_url

    if not database_url(settings.store_location).startswith("postgresql"):
        _fail(
            f"{what} needs a PostgreSQL store (--db postgresql://... or RUNNER_DB); "
            f"{settings.store_location} is SQLite. See docs/distributed.md",
            EXIT_USAGE,
        )


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"runner: {message}", err=True)
    sys.exit(code)


def _run_async(fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    import anyio

    results: list[T] = []

    async def main() -> None:
        results.append(await fn())

    # The main task returns None on purpose: on the way out, asyncio (3.11) formats the repr of
    # its SIGINT handler, which holds the main task and so the repr of its result; for a sync
    # plan of 10,000 tasks that costs a third of a second.
    anyio.run(main, backend="asyncio")
    return results[0]


def _print_problems(problems: list[Problem], project: Path) -> None:
    """Each problem as ``path:line:col: message``, the path one that opens from the current
    directory (where editors, CI annotations and pre-commit look for it): relative to it when
    the project lies inside it, else absolute."""
    import dataclasses
    import os

    base = os.path.relpath(project)
    if base.split(os.sep, 1)[0] == os.pardir:
        base = str(project)
    for problem in problems:
        if base != ".":
            problem = dataclasses.replace(problem, path=os.path.join(base, problem.path))
        click.echo(str(problem), err=True)


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _print_table(rows: Sequence[Sequence[str]]) -> None:
    """Rows (the header first) in columns two spaces apart, with no trailing spaces."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _complete_task(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[str]:
    """Task names from the project's files, for shell completion (no store needed)."""
    from runner.spec import load_tasks

    project = Path(ctx.find_root().params.get("project") or ".")
    try:
        names = load_tasks(project.resolve()).specs
    except Exception:  # a completion must never print a traceback into the shell
        return []
    return [name for name in sorted(names) if name.startswith(incomplete)]


class _Group(click.Group):
    """Maps runner's errors to the documented exit codes, with no traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            try:
                return super().invoke(ctx)
            except BaseExceptionGroup as group:
                raise _sole_error(group) from group
        except ProjectError as exc:
            _print_problems(exc.problems, ctx.obj.project if isinstance(ctx.obj, Settings) else Path.cwd())
            _fail(f"{len(exc.problems)} problem(s) in the task files; nothing was changed", EXIT_USAGE)
        except ParameterError as exc:
            _fail(str(exc), EXIT_USAGE)
        except (TaskNotRunnable, RunNotFound) as exc:
            _fail(str(exc), EXIT_NOT_RUNNABLE)
        except RunnerError as exc:
            _fail(str(exc), EXIT_USAGE)


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
        _print_problems(sorted(problems + warnings), settings.project)
        if not problems:
            click.echo(
                f"ok: {len(project.declared.specs)} tasks in {len(project.declared.files)} files"
            )
    sys.exit(EXIT_USAGE if problems else EXIT_OK)


@main.command()
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.pass_obj
def init(settings: Settings, directory: Path | None) -> None:
    """Write a new project into DIRECTORY (default: --project, the current directory): an
    example task file, plugins/, schemas/tasks.schema.json, .gitignore and a pre-commit config.

    Overwrites nothing: if any of these files exists, writes none and exits 2, naming them.
    """
    import os
    import shlex

    from runner.scaffold import init_project

    root = (directory or settings.project).resolve()
    written = init_project(root)
    shown = os.path.relpath(root)
    click.echo(f"wrote a new project in {shown}: {', '.join(written)}")
    prefix = "" if shown == "." else f"cd {shlex.quote(shown)} && "
    click.echo(f"next: {prefix}runner validate && runner run add")


@main.command()
def schema() -> None:
    """Print the JSON Schema of task files (the file runner carries, byte for byte)."""
    from runner.spec import schema_file

    sys.stdout.buffer.write(schema_file().read_bytes())


@main.command()
@click.option("--dry-run", is_flag=True, help="Show what would change; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the changes as JSON.")
@click.pass_obj
def sync(settings: Settings, dry_run: bool, as_json: bool) -> None:
    """Reconcile the store with the task files (the files win)."""
    from runner.store import open_store
    from runner.sync import sync_project

    async def reconcile() -> Any:
        async with open_store(settings.store_location) as store:
            return await sync_project(settings.project, store, dry_run=dry_run)

    plan = _run_async(reconcile)
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
    """Tasks in the store: their state, schedule and next fire time, and their last run."""
    import time

    from runner.overview import task_overviews
    from runner.store import open_store

    now = time.time()

    async def fetch() -> list[Any]:
        async with open_store(settings.store_location) as store:
            return await task_overviews(store, include_removed=include_removed, now=now)

    never_synced = settings.db is None and not Path(settings.store_location).exists()
    tasks = _run_async(fetch)
    if state is not None:
        tasks = [t for t in tasks if t.task.enabled == (state == "enabled")]
    if as_json:
        _emit_json([t.to_json() for t in tasks])
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
    _print_table(rows)


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


def _parse_parameter(text: str) -> tuple[str, Any]:
    from runner.inputs import parse_override

    try:
        return parse_override(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="-p") from None


@main.command()
@click.argument("name", shell_complete=_complete_task)
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
    overrides = dict(_parse_parameter(p) for p in params)  # refused before the heavy imports
    from runner.oneshot import run_once
    from runner.progress import Reporter
    from runner.store import open_store

    if remote:
        _require_postgres(settings, "runner run --remote")
        _run_remote(settings, name, overrides, with_needs=not no_deps, as_json=as_json)
    options: dict[str, Any] = {"max_concurrency": concurrency} if concurrency else {}
    reporter = Reporter(as_json=as_json)

    async def go() -> Any:
        async with open_store(settings.store_location) as store:
            return await run_once(
                settings.project, store, name, parameters=overrides, with_needs=not no_deps,
                reporter=reporter, **options,
            )

    outcome = _run_async(go)
    if outcome.stopped_by is not None:
        click.echo(f"runner: stopped by signal {outcome.stopped_by}; unfinished runs recorded cancelled", err=True)
        sys.exit(128 + outcome.stopped_by)
    target = outcome.target
    assert target is not None
    if not as_json:
        _print_run_output(target)
    last = {r.task: r for r in outcome.runs}  # each task's final attempt
    sys.exit(EXIT_OK if all(r.succeeded for r in last.values()) else EXIT_RUN_FAILED)


def _run_remote(settings: Settings, name: str, overrides: dict[str, Any], *, with_needs: bool, as_json: bool) -> NoReturn:
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

    runs, stopped_by = _run_async(go)
    _exit_with_runs(runs, as_json=as_json, stopped_by=stopped_by)


def _exit_with_runs(runs: list[Any], *, as_json: bool, stopped_by: int | None = None) -> NoReturn:
    """Print the runs of a workflow that ran elsewhere (the target's last) as `runner run`
    does, and exit as it does."""
    target = runs[-1]
    if target.error and target.error.get("type") in ("TaskNotRunnable", "ParameterError"):
        _fail(target.error["message"], EXIT_NOT_RUNNABLE if target.error["type"] == "TaskNotRunnable" else EXIT_USAGE)
    if as_json:
        for run_ in runs:
            click.echo(json.dumps(run_.to_json()))
    else:
        _print_run_output(target)
    if stopped_by is not None:
        click.echo(f"runner: stopped by signal {stopped_by}; unfinished runs recorded cancelled", err=True)
        sys.exit(128 + stopped_by)
    last = {r.task: r for r in runs}
    sys.exit(EXIT_OK if all(r.succeeded for r in last.values()) else EXIT_RUN_FAILED)


def _duration_option(text: str, option: str) -> float | None:
    """A DURATION option's seconds; None for 0 (off)."""
    from runner.spec import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from exc
    return seconds or None


def _http_options(
    listen: str | None, allow_trigger: bool, auth_read: bool, timeout: str | None = None,
    max_connections: int | None = None,
) -> Any:
    """The daemon's HttpOptions for --http and its flags (None without --http); exit 2 on a
    bad address, a flag without --http or the token, or without the runner-tasks[http] extra."""
    import importlib.util
    import os

    from runner.daemon import HttpOptions

    if listen is None:
        if allow_trigger or auth_read:
            _fail("--http-allow-trigger and --http-auth-read need --http [HOST:]PORT", EXIT_USAGE)
        if timeout is not None or max_connections is not None:
            _fail("--http-timeout and --http-max-connections need --http [HOST:]PORT", EXIT_USAGE)
        return None
    if any(importlib.util.find_spec(module) is None for module in ("starlette", "uvicorn")):
        _fail("--http needs the HTTP extra: pip install 'runner-tasks[http]'", EXIT_USAGE)
    host, _, port = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]") or "127.0.0.1"
    if not port.isascii() or not port.isdigit() or not 0 <= int(port) <= 65535 or any(c.isspace() for c in host):
        _fail(f"--http: {listen!r} is not [HOST:]PORT (a port from 0 to 65535, e.g. 127.0.0.1:8080)", EXIT_USAGE)
    token = os.environ.get("RUNNER_HTTP_TOKEN") or None
    if (allow_trigger or auth_read) and token is None:
        flag = "--http-allow-trigger" if allow_trigger else "--http-auth-read"
        _fail(f"{flag} needs a bearer token: set RUNNER_HTTP_TOKEN (e.g. to `openssl rand -hex 32`)", EXIT_USAGE)
    limits: dict[str, Any] = {"max_connections": max_connections}
    if timeout is not None:
        limits["timeout"] = _duration_option(timeout, "--http-timeout")
        if limits["timeout"] is None:
            _fail(f"--http-timeout: give a duration above 0 (default {HttpOptions.timeout:g}s)", EXIT_USAGE)
    return HttpOptions(
        host=host, port=int(port), allow_trigger=allow_trigger, auth_read=auth_read, token=token, **limits
    )


@main.command()
@click.option("--no-watch", is_flag=True, help="Do not reload when files in tasks.d/ or plugins/ change.")
@click.option(
    "--grace", default="30s", show_default=True, metavar="DURATION",
    help="On SIGTERM/SIGINT, how long running runs may go on before they are cancelled.",
)
@click.option("--concurrency", type=click.IntRange(min=1), default=None, metavar="N", help="Runs at once, at most (default 16).")
@click.option(
    "--retain", default="30d", show_default=True, metavar="DURATION",
    help="Prune finished runs older than this (0: keep them).",
)
@click.option(
    "--retain-runs", type=click.IntRange(min=0), default=1000, show_default=True, metavar="N",
    help="Keep at most N finished runs per task (0: no limit).",
)
@click.option(
    "--http", "http", default=None, metavar="[HOST:]PORT",
    help="Serve the HTTP API here (host 127.0.0.1 unless given); needs runner-tasks[http].",
)
@click.option("--http-allow-trigger", is_flag=True, help="Let POST /api/v1/tasks/NAME/runs start runs (needs RUNNER_HTTP_TOKEN).")
@click.option("--http-auth-read", is_flag=True, help="Ask for the token on the read endpoints too (needs RUNNER_HTTP_TOKEN).")
@click.option(
    "--http-timeout", default=None, metavar="DURATION",
    help="How long an HTTP client may take to send a request's head, and then its body (default 10s).",
)
@click.option(
    "--http-max-connections", type=click.IntRange(min=1), default=None, metavar="N",
    help="HTTP connections open at once, at most; more get a 503 (default 200, fewer under a low `ulimit -n`).",
)
@click.option("--remote", is_flag=True, help="Send runs to workers (`runner worker`; PostgreSQL store) instead of running them here.")
@click.pass_obj
def daemon(
    settings: Settings, no_watch: bool, grace: str, concurrency: int | None, retain: str, retain_runs: int,
    http: str | None, http_allow_trigger: bool, http_auth_read: bool, http_timeout: str | None,
    http_max_connections: int | None, remote: bool,
) -> None:
    """Sync, fire schedules, take triggers and reload on file changes, until SIGTERM/SIGINT.

    On the first signal it stops firing and lets running runs finish within --grace, then
    cancels the rest (process groups killed, runs recorded cancelled) and exits 0. A second
    daemon on the same SQLite store exits 2 at once, naming the first; on PostgreSQL it waits
    as a standby and leads when the leader goes.
    """
    import logging

    from runner.daemon import Daemon, DaemonOptions
    from runner.shutdown import end_leftover_tasks
    from runner.store import open_store

    http_options = _http_options(http, http_allow_trigger, http_auth_read, http_timeout, http_max_connections)
    if remote:
        _require_postgres(settings, "runner daemon --remote")
    if log.logger.level > logging.INFO:
        log.logger.setLevel(logging.INFO)
    options = DaemonOptions(
        watch=not no_watch,
        grace=_duration_option(grace, "--grace") or 0.0,
        max_concurrency=concurrency,
        retain=_duration_option(retain, "--retain"),
        retain_runs=retain_runs or None,
        http=http_options,
        remote=remote,
    )

    async def serve() -> None:
        async with open_store(settings.store_location, sweep=False) as store:
            await Daemon(settings.project, store, options).run()
        await end_leftover_tasks()

    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID`: where it is stuck
    _run_async(serve)
    log.logger.info("daemon stopped", extra={"event": "daemon_stopped"})


@main.command()
@click.option("--concurrency", type=click.IntRange(min=1), default=4, show_default=True, metavar="N", help="Runs at once, at most.")
@click.option(
    "--queue", "queues", multiple=True, metavar="NAME",
    help="Take runs of this queue only (repeat for several; default: every queue).",
)
@click.option(
    "--grace", default="30s", show_default=True, metavar="DURATION",
    help="On SIGTERM/SIGINT, how long running runs may go on before they are cancelled.",
)
@click.pass_obj
def worker(settings: Settings, concurrency: int, queues: tuple[str, ...], grace: str) -> None:
    """Take runs off the queue of a PostgreSQL store and run them, until SIGTERM/SIGINT.

    Runs come from `runner daemon --remote`, `runner run --remote` and `runner trigger
    --remote`, as the store's definitions say (the daemon syncs the files); python callables
    are imported from this machine's plugins/. On the first signal it takes no more runs and
    lets running ones finish within --grace, then cancels them and exits 0.
    """
    import logging

    from runner.remote import Worker
    from runner.shutdown import end_leftover_tasks
    from runner.store import open_store

    _require_postgres(settings, "runner worker")
    if log.logger.level > logging.INFO:
        log.logger.setLevel(logging.INFO)
    seconds = _duration_option(grace, "--grace") or 0.0

    async def serve() -> None:
        async with open_store(settings.store_location) as store:
            await Worker(settings.project, store, queues=list(queues) or None, concurrency=concurrency, grace=seconds).run()
        await end_leftover_tasks()

    _run_async(serve)
    log.logger.info("worker stopped", extra={"event": "worker_stopped"})


@main.command()
@click.argument("name", shell_complete=_complete_task)
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
    import time

    overrides = dict(_parse_parameter(p) for p in params)  # refused before the heavy imports
    from runner.engine import checked_parameters, runnable
    from runner.follow import wait_for
    from runner.graph import upstream_order
    from runner.lease import describe_holder, request_run
    from runner.models import new_run_id
    from runner.store import Trigger, open_store

    if remote:
        _require_postgres(settings, "runner trigger --remote")

    def queued(run_id: str) -> None:
        if not as_json:
            click.echo(run_id)
        elif not wait:  # with --wait, only the runs' JSON lines, as `runner run --json`
            click.echo(json.dumps({"id": run_id, "task": name, "status": "queued"}))

    async def request() -> Any:
        async with open_store(settings.store_location) as store:
            if remote:
                from runner.remote import send

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
                from runner import registry

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
        runs = _run_async(request)
    except KeyboardInterrupt:
        _fail("stopped waiting; the run goes on in the daemon (`runner logs -f RUN_ID` follows it)", 130)
    if runs is None:
        return
    _exit_with_runs(runs, as_json=as_json)


def _not_synced_yet(project: Path, tasks: dict[str, Any], name: str, refused: TaskNotRunnable) -> None:
    """Raise TaskNotRunnable saying so when the store refused ``name`` (or a task it needs)
    because it does not hold it yet, though the task files declare it: trigger reads only the
    store, which the daemon syncs."""
    from runner.graph import upstream_order
    from runner.spec import load_tasks

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


def _print_run_output(run: Any) -> None:
    if run.stdout:
        click.echo(run.stdout, nl=False)
    if run.stderr:
        click.echo(run.stderr, nl=False, err=True)
    if run.result is not None:
        click.echo(json.dumps(run.result, indent=2))
    if run.error is not None:
        click.echo(run.error.get("traceback") or f"{run.error['type']}: {run.error['message']}", err=True, nl=False)
        click.echo("", err=True)


@main.command()
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
    from runner.store import open_store

    async def fetch() -> Any:
        async with open_store(settings.store_location) as store:
            return await store.runs(task=task, status=status, invocation=invocation, limit=limit)

    found = _run_async(fetch)
    if as_json:
        _emit_json([r.to_json() for r in found])
        return
    if not found:
        click.echo("no runs")
        return
    _print_table([
        ("ID", "TASK", "STATUS", "TRY", "STARTED", "TOOK", "INVOCATION"),
        *(
            (r.id, r.task, r.status.value, str(r.attempt), r.to_json()["started_at"] or "-",
             f"{r.duration_s:.3f}s" if r.duration_s is not None else "-", r.invocation or "-")
            for r in found
        ),
    ])


@main.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON, with its log lines.")
@click.pass_obj
def show(settings: Settings, run_id: str, as_json: bool) -> None:
    """One run, with its output, result or error, and log lines. Exits 3 if there is none."""
    from runner.store import open_store

    async def fetch() -> Any:
        async with open_store(settings.store_location) as store:
            return await store.run(run_id)

    found = _run_async(fetch)
    body = found.to_json(with_logs=True)
    if as_json:
        _emit_json(body)
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


@main.command()
@click.argument("run_id", required=False)
@click.option("--task", "task_name", metavar="NAME", shell_complete=_complete_task, help="The latest run of NAME instead; with -f, its later runs too.")
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

    outcome = _run_async(go)
    if outcome.stopped_by is not None:
        sys.exit(EXIT_OK if task_name is not None else 128 + outcome.stopped_by)
    if follow and run_id is not None:
        sys.exit(EXIT_OK if outcome.status is RunStatus.SUCCEEDED else EXIT_RUN_FAILED)


def _log_entry_json(entry: Any) -> dict[str, Any]:
    from runner.models import iso

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


@main.command()
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
    from runner.store import open_store

    age = _duration_option(older_than, "--older-than")

    async def go() -> int:
        async with open_store(settings.store_location) as store:
            return await store.prune_runs(older_than=age, keep_per_task=keep or None, dry_run=dry_run)

    count = _run_async(go)
    if as_json:
        _emit_json({"pruned": count, "dry_run": dry_run})
        return
    click.echo(f"{'would prune' if dry_run else 'pruned'} {count} run{'' if count == 1 else 's'}")
