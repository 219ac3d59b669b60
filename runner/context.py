"""What a running python task can know about its own run."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from runner.errors import NoUpstreamResult


@dataclass(frozen=True)
class RunContext:
    """Injected into a callable that asks for it by type: the run's identity and its logger.

    Lines written to ``logger`` are stored with the run and shown by ``runner show``. ``env``
    holds the task's ``env`` with secret references read (python tasks do not change
    ``os.environ``, which all tasks share).
    """

    run_id: str
    task: str
    attempt: int
    parameters: Mapping[str, Any]
    logger: logging.Logger
    env: Mapping[str, str] = field(default_factory=dict)


current_run: ContextVar[RunContext] = ContextVar("runner_current_run")
"""The run being executed, for code deeper down that was not handed a RunContext."""


class Upstream(Mapping[str, Any]):
    """Injected into a callable that asks for it by type: the results of the tasks it needs.

    ``upstream["add"]`` is what the python task ``add`` returned (the object itself), or the
    stdout of a shell task; ``upstream.runs["add"]`` is that run's record. With ``--no-deps``
    the needs' latest succeeded runs stand in.
    """

    def __init__(
        self,
        results: Mapping[str, Any],
        runs: Mapping[str, Any],
        unloadable: Mapping[str, str] | None = None,
    ) -> None:
        self._results = dict(results)
        self.runs: Mapping[str, Any] = dict(runs)
        self._unloadable = dict(unloadable or {})  # need -> why its stored result did not load

    def __getitem__(self, name: str) -> Any:
        try:
            return self._results[name]
        except KeyError:
            if name in self._unloadable:
                why = self._unloadable[name]
                raise NoUpstreamResult(f"the result of {name!r} cannot be loaded: {why}") from None
            known = ", ".join(sorted(self._results)) or "none"
            raise NoUpstreamResult(f"no result of {name!r} upstream (results: {known})") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._results)

    def __len__(self) -> int:
        return len(self._results)

    def __repr__(self) -> str:
        return f"Upstream({sorted(self._results)})"
