"""runner: declarative tasks in git, run by an anyio engine, recorded in a store.

The public API is what ``__all__`` lists, and ``runner.testing`` for testing your own tasks;
everything else is private and may change. ``import runner`` stays light, as plugins import
it and ``runner validate`` imports every plugin: ``Engine`` (anyio, SQLAlchemy) and the other
names in ``_LAZY`` are imported when first asked for.
"""

import importlib as _importlib
import typing as _typing

from runner._version import __version__ as __version__
from runner.context import RunContext, Upstream, current_run
from runner.errors import NoUpstreamResult, RunnerError
from runner.registry import task

if _typing.TYPE_CHECKING:
    from runner.engine import Engine
    from runner.history import History
    from runner.inject import register_injectable
    from runner.models import Run, RunStatus

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


_LAZY = {
    "Engine": "runner.engine",
    "History": "runner.history",
    "Run": "runner.models",
    "RunStatus": "runner.models",
    "register_injectable": "runner.inject",
}


def __getattr__(name: str) -> _typing.Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'runner' has no attribute {name!r}")
    value = getattr(_importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
