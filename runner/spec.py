"""Read ``tasks.d`` into task specs: every file read (``taskfile.py``), checked against the
schema (``schema.py``), each task built into a ``TaskSpec``, and the checks that span files
(names declared twice, ``needs`` that name nothing, cycles).

Every problem is collected, never raised one at a time, and each points at the key or value it
is about (``path:line:col``). Nothing here imports a task's callable; see ``project.py``.
"""

from __future__ import annotations

import contextlib
import difflib
import gc
import hashlib
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner import schema
from runner.errors import Problem
from runner.files import TASKS_DIR, list_task_files, read_regular
from runner.graph import find_cycles
from runner.models import Retries, Schedule, SecretRef, Source, TaskSpec, TaskType
from runner.precheck import plainly_valid
from runner.schedule import check_timezone, normalize_cron
from runner.schema import Path_, expects_string, label
from runner.taskfile import TaskFile, read_task_file

_DURATION_PART = re.compile(r"\s*((?:\d+(?:\.\d+)?|\.\d+))\s*(ms|d|h|m|s)\s*")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: float | int | str) -> float:
    """Seconds in a DURATION (``90s``, ``5m``, ``1h30m``, ``2d``, ``0.5s`` or a number)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip()
        if not text:
            raise ValueError(f"{value!r} is not a duration (use 90s, 5m, 1h30m, 2d, 0.5s or seconds)")
        try:
            seconds = float(text)
        except ValueError:
            pos, seconds = 0, 0.0
            while pos < len(text):
                match = _DURATION_PART.match(text, pos)
                if not match or match.end() == pos:
                    raise ValueError(
                        f"{value!r} is not a duration (use 90s, 5m, 1h30m, 2d, 0.5s or seconds)"
                    ) from None
                seconds += float(match.group(1)) * _UNITS[match.group(2)]
                pos = match.end()
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{value!r} is not a duration")
    return seconds


def check_file(file: TaskFile) -> dict[str, TaskSpec]:
    """Validate a parsed file against the schema and build its tasks; problems go to the file."""
    if not isinstance(file.data, dict):
        return {}
    trapped = {w for w in file.traps if expects_string(w)}
    for where in sorted(trapped, key=lambda w: file.values.get(w, (0, 0))):
        word = file.traps[where]
        file.add(
            where,
            f'{label(where)}: plain {word!r} is a boolean in YAML 1.1; quote it ("{word}") if you mean the string',
        )

    broken: set[str] = set()
    errors = () if plainly_valid(file.data) else schema.validator().iter_errors(file.data)
    for error in errors:
        where = tuple(error.absolute_path)
        if any(where[: len(t)] == t for t in trapped):
            broken.update(str(t[1]) for t in trapped)
            continue
        file.problems.extend(file.at(at, message, key=key) for at, message, key in schema.problems(error))
        if len(where) >= 2 and where[0] == "tasks":
            broken.add(str(where[1]))
        elif where == ("tasks",) and "propertyNames" in error.relative_schema_path:
            broken.add(str(error.instance))
    broken.update(str(t[1]) for t in trapped)
    tasks = file.data.get("tasks")
    if not isinstance(tasks, dict):
        return {}
    specs = {}
    for name, body in tasks.items():
        if name in broken:
            continue
        spec = _build_spec(file, name, body)
        if spec is not None:
            specs[name] = spec
    return specs


def _build_spec(file: TaskFile, name: str, body: dict[str, Any]) -> TaskSpec | None:
    where: Path_ = ("tasks", name)
    ok = True

    def duration(key: Path_, value: Any, *, positive: bool) -> float | None:
        nonlocal ok
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            file.add((*where, *key), f"{label((*where, *key))}: {exc}")
            ok = False
            return None
        if positive and seconds <= 0:
            file.add((*where, *key), f"{label((*where, *key))}: must be more than 0")
            ok = False
        return seconds

    schedule = None
    raw_schedule = body.get("schedule")
    if raw_schedule is not None:
        policy = {k: raw_schedule[k] for k in ("misfire", "overlap") if isinstance(raw_schedule, dict) and k in raw_schedule}
        if isinstance(raw_schedule, dict) and "every" in raw_schedule:
            every = duration(("schedule", "every"), raw_schedule["every"], positive=True)
            schedule = Schedule(every=every, **policy)
        else:
            cron = raw_schedule if isinstance(raw_schedule, str) else raw_schedule["cron"]
            tz = raw_schedule.get("timezone", "UTC") if isinstance(raw_schedule, dict) else "UTC"
            at: Path_ = ("schedule",) if isinstance(raw_schedule, str) else ("schedule", "cron")
            try:
                cron = normalize_cron(cron)
            except ValueError as exc:
                file.add((*where, *at), f"{label(where)}: {exc}")
                ok = False
            try:
                check_timezone(tz)
            except ValueError as exc:
                file.add((*where, "schedule", "timezone"), f"{label(where)}: {exc}")
                ok = False
            schedule = Schedule(cron=cron, timezone=tz, **policy)

    timeout = None
    if body.get("timeout") is not None:
        timeout = duration(("timeout",), body["timeout"], positive=True)
    raw_retries = body.get("retries", 0)
    if isinstance(raw_retries, dict):
        backoff = duration(("retries", "backoff"), raw_retries.get("backoff", 0), positive=False)
        retries = Retries(raw_retries["count"], backoff or 0.0)
    else:
        retries = Retries(raw_retries)
    if not ok:
        return None
    command = body.get("command")
    key_line, key_col = file.keys.get(where, (1, 1))
    return TaskSpec(
        name=name,
        type=TaskType(body.get("type", "shell")),
        source=Source(file.path, key_line, key_col),
        command=tuple(command) if isinstance(command, list) else command,
        callable=body.get("callable"),
        parameters=body.get("parameters") or {},
        enabled=body.get("enabled", True),
        description=body.get("description"),
        needs=tuple(body.get("needs") or ()),
        schedule=schedule,
        timeout=timeout,
        retries=retries,
        env={k: SecretRef(**v) if isinstance(v, dict) else v for k, v in (body.get("env") or {}).items()},
        cwd=body.get("cwd"),
        tags=tuple(body.get("tags") or ()),
        concurrency=body.get("concurrency"),
        queue=body.get("queue"),
    )


@dataclass
class Declared:
    """Every task the files declare, and every problem with them."""

    specs: dict[str, TaskSpec]
    files: dict[str, TaskFile]
    owner: dict[str, TaskFile]
    problems: list[Problem]
    python: list[str] | None = None  # the python tasks' names, in order; None: not listed yet

    def at(self, task: str, *where: str | int, message: str, key: bool = False) -> Problem:
        """A problem about ``task`` positioned at one of its keys or values.

        Tasks taken from the store rather than parsed have only their source line to point at.
        """
        owner = self.owner.get(task)
        if owner is None:
            source = self.specs[task].source
            return Problem(source.path, source.line, source.col, message)
        return owner.at(("tasks", task, *where), message, key=key)

    def declared_in(self, paths: set[str]) -> set[str]:
        """The names of the tasks built from the files at ``paths``."""
        names: set[str] = set()
        for path in paths & self.files.keys():
            names.update(name for name in _tasks_of(self.files[path]) if name in self.specs)
        return names

    @property
    def digests(self) -> dict[str, str]:
        """Each file's digest, when every file was read whole (else empty: nothing to reuse)."""
        found = {path: file.digest for path, file in self.files.items() if file.digest}
        return found if len(found) == len(self.files) else {}


def fingerprint(project: Path) -> dict[str, str] | None:
    """Each task file's SHA-256, by path; None if one cannot be read, or there is no tasks.d
    (so the caller parses the files and reports the problem)."""
    if not (project / TASKS_DIR).is_dir():
        return None
    found = {}
    for path in list_task_files(project):
        try:
            found[path.relative_to(project).as_posix()] = hashlib.sha256(read_regular(path)).hexdigest()
        except OSError:
            return None
    return found


@dataclass
class _Checked:
    """One file as ``check_file`` left it, with its own problems (before cross-file checks)."""

    file: TaskFile
    specs: dict[str, TaskSpec]
    problems: list[Problem]
    names: tuple[str, ...]  # every task the file declares, valid or not
    needs: dict[str, list[str]]  # of those, each that needs something, and what (as written)
    python: list[str]  # the python tasks built from it


ParseCache = dict[str, _Checked]
"""Checked files by path, for ``load_tasks`` to reuse while their bytes stay the same."""


def load_tasks(project: Path, cache: ParseCache | None = None) -> Declared:
    """Read and check every task file of ``project``; the result lists all problems at once.

    With a ``cache`` (kept by the caller between calls, as the daemon does), a file whose bytes
    have not changed since the last call is not parsed or checked again.
    """
    root = project / TASKS_DIR
    if not root.is_dir():
        problem = Problem(
            TASKS_DIR, 1, 1,
            f"no {TASKS_DIR}/ directory in {project}; run from your project directory or pass --project DIR",
        )
        return Declared({}, {}, {}, [problem])
    with gc_paused():
        return _load_tasks(project, cache)


def _checked_file(project: Path, path: Path, cache: ParseCache | None) -> _Checked | None:
    if cache is not None:
        rel = path.relative_to(project).as_posix()
        cached = cache.get(rel)
        if cached is not None and cached.file.digest is not None:
            try:
                same = hashlib.sha256(read_regular(path)).hexdigest() == cached.file.digest
            except OSError:
                same = False
            if same:
                cached.file.problems = list(cached.problems)
                if not cached.problems:
                    cached.file.shed(path, cached.specs)
                return cached
    file = read_task_file(project, path)
    if file is None:
        return None
    tasks = _tasks_of(file)
    specs = check_file(file)
    python = [name for name, spec in specs.items() if spec.type is TaskType.PYTHON]
    checked = _Checked(file, specs, list(file.problems), tuple(tasks), _raw_needs(tasks), python)
    if cache is not None:
        cache[file.path] = checked
        if not checked.problems:
            file.shed(path, checked.specs)
    return checked


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while task files are loaded and synced.

    Node trees, position maps and task records are many small objects that all live until the
    end; the collector would walk them again and again for nothing (10-15% of a cold sync).
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def _load_tasks(project: Path, cache: ParseCache | None) -> Declared:
    specs: dict[str, TaskSpec] = {}
    files: dict[str, TaskFile] = {}
    owner: dict[str, TaskFile] = {}
    problems: list[Problem] = []
    needs: dict[str, list[str]] = {}
    python: list[str] | None = []  # None once a name is declared twice: listed from specs then
    for path in list_task_files(project):
        checked = _checked_file(project, path, cache)
        if checked is None:
            continue
        file, file_specs = checked.file, checked.specs
        files[file.path] = file
        if not owner.keys() & checked.names:
            # No name declared twice (what a valid project is): the file's tasks at once.
            owner.update(dict.fromkeys(checked.names, file))
            specs.update(file_specs)
            needs.update(checked.needs)
            if python is not None:
                python.extend(checked.python)
            continue
        python = None
        for name in checked.names:
            first = owner.get(name)
            if first is not None:
                here = file.position(("tasks", name), key=True)
                there = first.position(("tasks", name), key=True)
                first.add(("tasks", name), f"task {name!r} is also declared at {file.path}:{here[0]}", key=True)
                file.add(("tasks", name), f"task {name!r} is already declared at {first.path}:{there[0]}", key=True)
                specs.pop(name, None)
                continue
            owner[name] = file
            if name in checked.needs:
                needs[name] = checked.needs[name]
            if name in file_specs:
                specs[name] = file_specs[name]
    declared = Declared(specs, files, owner, problems, python)
    # Only the tasks that need something (a fifth, in projects like the benchmark's): a task
    # that needs nothing has no unknown need and is on no cycle.
    for name, wanted in needs.items():
        for i, need in enumerate(wanted):
            if need not in owner:
                close = difflib.get_close_matches(need, list(owner), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(
                    declared.at(name, "needs", i, message=f"task {name!r} needs {need!r}, which is not declared{hint}")
                )
    problems.extend(
        declared.at(cycle[0], "needs", message=f"cycle in needs: {' -> '.join(cycle)}", key=True)
        for cycle in find_cycles(needs)
    )
    for file in files.values():
        problems.extend(file.problems)
    problems.sort()
    if cache is not None:
        for gone in set(cache) - set(files):
            del cache[gone]
    return declared


def _tasks_of(file: TaskFile) -> dict[Any, Any]:
    """The ``tasks`` mapping of a task file as written, valid or not (empty if it has none)."""
    tasks = file.data.get("tasks") if isinstance(file.data, dict) else None
    return tasks if isinstance(tasks, dict) else {}


def _raw_needs(tasks: dict[Any, Any]) -> dict[str, list[str]]:
    """Each of a file's ``tasks`` whose ``needs`` lists a name, and the names, read even from a
    task with other errors."""
    found: dict[str, list[str]] = {}
    for name, body in tasks.items():
        wanted = body.get("needs") if isinstance(body, dict) else None
        if isinstance(wanted, list) and wanted:
            found[name] = [w if isinstance(w, str) else str(w) for w in wanted]
    return found
