"""runner: declarative tasks in git, run by an anyio engine, recorded in a store.

The public API is what ``__all__`` lists, and ``runner.testing`` for testing your own tasks;
everything else is private and may change. ``import runner`` stays light (no anyio, SQLAlchemy
or jsonschema): ``Engine``, which needs them, is imported when first asked for.
"""

import typing as _typing

from runner._version import __version__ as __version__
from runner.context import RunContext, Upstream, current_run
from runner.errors import NoUpstreamResult, RunnerError
from runner.history import History
from runner.inject import register_injectable
from runner.models import Run, RunStatus
from runner.registry import task

if _typing.TYPE_CHECKING:
    from runner.engine import Engine

__all__ = [
    "Engine",
    "History",
    "NoUpstreamResult",
    "Run",
    "RunContext",
    "RunStatus",
    "RunnerError",
    "Upstream",
    "current_run",
    "register_injectable",
    "task",
]


def __getattr__(name: str) -> _typing.Any:
    if name == "Engine":
        from runner.engine import Engine  # lazy, for start-up time (anyio, SQLAlchemy)

        globals()["Engine"] = Engine
        return Engine
    raise AttributeError(f"module 'runner' has no attribute {name!r}")
