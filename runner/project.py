"""A project as a whole: its task files, its plugins, and whether each python task can be called.

``load_project`` is what ``validate``, ``sync``, ``run`` and the daemon start from. Whether a
callable that does not resolve is an error (``validate``) or a disabled task (``sync``) is the
caller's choice; the findings are the same.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner import registry
from runner.errors import CallableNotFound, Problem, SignatureError
from runner.models import TaskSpec, TaskType
from runner.signature import check_parameters, inspect_callable
from runner.spec import Declared, load_tasks
from runner.syncplan import Wanted


@dataclass(frozen=True)
class CallableFinding:
    """Why a python task cannot be called as declared, and where to look."""

    task: str
    callable: str
    reason: str  # "orphaned: ..." or "invalid: ..."
    place: Callable[[], tuple[Problem, ...]] = field(repr=False, compare=False)

    @functools.cached_property
    def problems(self) -> tuple[Problem, ...]:
        """The problems as ``validate`` prints them, placed in the task file only when asked:
        ``sync`` and the daemon need just the reason, and placing one may read the file again."""
        return self.place()


@dataclass
class Project:
    """Everything a project declares, checked: tasks, their wanted state, and the findings."""

    root: Path
    declared: Declared
    plugin_problems: list[Problem] = field(default_factory=list)
    findings: dict[str, CallableFinding] = field(default_factory=dict)
    python: list[str] = field(default_factory=list)  # the python tasks' names

    @property
    def problems(self) -> list[Problem]:
        """File problems: any one of them means the files are invalid and nothing is synced."""
        return self.declared.problems

    def strict_problems(self) -> list[Problem]:
        """File problems plus callables that do not resolve or fit: what ``validate`` rejects."""
        found = list(self.declared.problems)
        for finding in self.findings.values():
            found.extend(finding.problems)
        return sorted(found)

    def wanted(self, names: Iterable[str] | None = None) -> dict[str, Wanted]:
        """The state each declared task (or each of ``names`` that is declared) should be
        stored in."""
        specs = self.declared.specs
        chosen = specs.items() if names is None else ((name, specs[name]) for name in names if name in specs)
        wanted = {}
        for name, spec in chosen:
            finding = self.findings.get(name)
            if finding is not None:
                wanted[name] = Wanted(spec, False, finding.reason)
            elif not spec.enabled:
                wanted[name] = Wanted(spec, False, "declared")
            else:
                wanted[name] = Wanted(spec, True, None)
        return wanted


def load_project(root: Path, declared: Declared | None = None) -> Project:
    """Read the task files (unless ``declared`` is given), import ``plugins/``, and check every
    python task's callable."""
    root = root.resolve()
    if declared is None:
        declared = load_tasks(root)
    project = Project(root, declared)
    if declared.python is not None:  # listed file by file, as they were parsed
        project.python = declared.python
    else:
        project.python = [name for name, spec in declared.specs.items() if spec.type is TaskType.PYTHON]
    python_tasks = [declared.specs[name] for name in project.python]
    if not python_tasks and not (root / "plugins").is_dir():
        return project
    registry.use_project(root)
    project.plugin_problems = registry.import_plugins(root)
    for spec in python_tasks:
        finding = check_callable(spec, declared)
        if finding is not None:
            project.findings[spec.name] = finding
    return project


def check_callable(spec: TaskSpec, declared: Declared) -> CallableFinding | None:
    """None if ``spec``'s callable resolves and its parameters fit; otherwise what is wrong."""
    reference = spec.callable or ""
    try:
        fn = registry.resolve(reference)
    except CallableNotFound as exc:
        message = f"task {spec.name!r}: callable {reference!r}: {exc}"
        return CallableFinding(
            spec.name, reference, f"orphaned: {exc}", lambda: (declared.at(spec.name, "callable", message=message),)
        )
    try:
        sig = signature_of(fn)
    except SignatureError as exc:
        message = f"task {spec.name!r}: {reference}: {exc}"
        return CallableFinding(
            spec.name, reference, f"invalid: {exc}", lambda: (declared.at(spec.name, "callable", message=message),)
        )
    _, issues = check_parameters(sig, spec.parameters)
    if not issues:
        return None

    def place() -> tuple[Problem, ...]:
        problems = []
        for issue in issues:
            where: tuple[str, ...] = ("parameters", issue.name) if issue.name in spec.parameters else ("parameters",)
            problems.append(
                declared.at(spec.name, *where, message=f"task {spec.name!r}: {issue.message}", key=len(where) == 1)
            )
        return tuple(problems)

    reason = "invalid: " + "; ".join(issue.message for issue in issues)
    return CallableFinding(spec.name, reference, reason, place)


# Weak: a daemon that reloads plugins makes new functions; the old ones must be able to go.
_signatures: weakref.WeakKeyDictionary[Callable[..., Any], Any] = weakref.WeakKeyDictionary()


def signature_of(fn: Callable[..., Any]) -> Any:
    """``inspect_callable(fn)``, once per callable."""
    try:
        sig = _signatures.get(fn)
    except TypeError:  # an object that cannot be weakly referenced: inspected every time
        return inspect_callable(fn)
    if sig is None:
        sig = _signatures[fn] = inspect_callable(fn)
    return sig
