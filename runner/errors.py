"""One error tree for everything runner raises on purpose.

    RunnerError
     ├── ProjectError            task files that do not validate (carries every Problem)
     ├── CallableNotFound        a python task's callable does not import or resolve (ImportError)
     ├── ParameterError          parameters that cannot reach a task, or do not fit its callable (ValueError)
     ├── TaskNotRunnable         unknown, disabled, orphaned, invalid or removed task (LookupError)
     ├── RunNotFound             no run with that id (LookupError)
     ├── DaemonRunning           another live daemon holds the store's lease
     ├── LeadershipLost          a daemon's lock session ended: another daemon may lead now
     └── StoreError              the store cannot be opened or used
          ├── StoreVersionError  the store was written by a newer runner
          ├── RecordRefused      the store would not take one run's records (the others' went in)
          ├── StoreFileChanged   the store's file was deleted or replaced under this process
          └── LeaseHeld          another live process holds the lease (the daemon's)

Third-party errors are translated where they enter (the store, the loader) and kept as
``__cause__``. Every message says what to do next.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from runner.records import Lease


class RunnerError(Exception):
    """Root of every error runner raises on purpose."""


@dataclass(frozen=True, order=True)
class Problem:
    """One finding in a task file, printed as ``path:line:col: message``."""

    path: str
    line: int
    col: int
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        prefix = "" if self.severity == "error" else f"{self.severity}: "
        return f"{self.path}:{self.line}:{self.col}: {prefix}{self.message}"

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "line": self.line,
            "col": self.col,
            "severity": self.severity,
            "message": self.message,
        }


class ProjectError(RunnerError):
    """The task files do not validate; ``problems`` holds every error found."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class CallableNotFound(RunnerError, ImportError):
    """A python task's callable does not import or does not resolve."""


class ParameterError(RunnerError, ValueError):
    """Parameters that cannot reach a task (see ``inputs.py``) or do not fit a callable's
    signature; ``problems`` lists each misfit."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class TaskNotRunnable(RunnerError, LookupError):
    """The named task is unknown, disabled, orphaned, invalid or removed."""


class RunNotFound(RunnerError, LookupError):
    """No run has that id."""


class DaemonRunning(RunnerError):
    """Another live daemon holds the store."""


class LeadershipLost(RunnerError):
    """The daemon's lock session ended or stopped answering: another daemon may lead now."""


class StoreError(RunnerError):
    """The store cannot be opened or used."""


class StoreVersionError(StoreError):
    """The store's schema is newer than this runner understands."""


class RecordRefused(StoreError):
    """The store would not take one run's records (the others' were written), or they could
    not be made."""


class StoreFileChanged(StoreError):
    """The SQLite file this process opened as its store was deleted or replaced (a new inode
    at its path): what it would write now goes to a file nobody reads, so it must stop."""

    def __init__(self, path: str, what: str) -> None:
        self.path = path
        self.what = what  # "deleted", "replaced", ...
        super().__init__(
            f"the store file {path} was {what} while runner was running; stopping: "
            "restart runner to use the file now at that path"
        )


class LeaseHeld(StoreError):
    """Another live process holds the lease."""

    def __init__(self, holder: Lease) -> None:
        super().__init__(f"lease {holder.name!r} is held by pid {holder.pid} on {holder.host}")
        self.holder = holder
