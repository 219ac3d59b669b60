"""What a running python task can know about its own run."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any


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
