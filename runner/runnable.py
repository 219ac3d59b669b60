"""Whether a task can run, and with which parameters: the checks made before anything is
recorded, by the engine and by the commands and endpoints that queue runs for a daemon."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from runner import registry
from runner.errors import ParameterError, TaskNotRunnable
from runner.inputs import parameter_problems
from runner.models import StoredTask, TaskSpec, TaskType
from runner.project import signature_of
from runner.signature import CallableSignature, check_parameters


def runnable(tasks: Mapping[str, StoredTask], name: str, needed_by: str | None = None) -> StoredTask:
    """The stored task ``name`` if it can run; TaskNotRunnable saying why not (and where to look)."""
    stored = tasks.get(name)
    if stored is not None and stored.enabled and not stored.removed:
        return stored  # as every task of a workflow of 2,000 is: no message made for it
    subject = f"task {needed_by!r} needs {name!r}, which" if needed_by else f"task {name!r}"
    if stored is None:
        live = [n for n, t in tasks.items() if not t.removed]
        close = difflib.get_close_matches(name, live, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else "; `runner list` shows the tasks"
        raise TaskNotRunnable(f"{subject} is not declared in tasks.d{hint}")
    if stored.removed:
        raise TaskNotRunnable(
            f"{subject} was removed from the task files; its history stays in `runner runs`"
        )
    # Disabled, then.
    reason = stored.disabled_reason or "declared"
    where = stored.spec.source
    if reason == "declared":
        raise TaskNotRunnable(
            f"{subject} is disabled in {where} (enabled: false); enable it there"
        )
    kind, _, detail = reason.partition(": ")
    raise TaskNotRunnable(
        f"{subject} is {kind} ({where}): {detail}; fix it, then check with `runner validate`"
    )


def checked_parameters(
    spec: TaskSpec, params: dict[str, Any], sig: CallableSignature | None = None
) -> dict[str, Any]:
    """``params`` converted to what the callable's hints ask for (``sig``, when the caller
    has it already); ParameterError if unfit, or if a name or value could not reach the task
    (see ``inputs.py``)."""
    problems = parameter_problems(params)
    if problems:
        raise ParameterError([f"task {spec.name!r}: {problem}" for problem in problems])
    if spec.type is not TaskType.PYTHON:
        return params
    if sig is None:
        sig = signature_of(registry.resolve(spec.callable or ""))
    converted, issues = check_parameters(sig, params)
    if issues:
        raise ParameterError([f"task {spec.name!r}: {issue.message}" for issue in issues])
    return converted
