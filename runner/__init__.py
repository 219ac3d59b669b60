"""runner: declarative tasks in git, run by an anyio engine, recorded in a store.

The public API is what ``__all__`` lists; everything else is private and may change.
"""

from runner.context import RunContext, Upstream, current_run
from runner.registry import task

__all__ = ["RunContext", "Upstream", "current_run", "task"]
__version__ = "0.1.0.dev0"
