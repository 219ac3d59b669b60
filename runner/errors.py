"""One error tree for everything runner raises on purpose.

    RunnerError                      exit 2 (see ``exit_code``)
     ├── ProjectError                task files that do not validate (carries every Problem)
     ├── CallableNotFound            a python task's callable does not import or resolve (ImportError)
     ├── SignatureError              a callable runner cannot call with keyword parameters (TypeError)
     ├── ParameterError              parameters that cannot reach a task, or do not fit its callable (ValueError)
     ├── TaskNotRunnable             unknown, disabled, orphaned, invalid or removed task (LookupError); exit 3
     ├── RunNotFound                 no run with that id (LookupError); exit 3
     ├── NoUpstreamResult            a task asked ``Upstream`` for a result it does not hold (KeyError)
     ├── SecretUnavailable           a secret reference names a variable or file that is not there
     ├── ShellStartError             a shell task's command could not be started
     ├── TaskTimeout                 a python task ran past its timeout (TimeoutError)
     ├── ProjectExists               ``runner init`` would overwrite files that exist
     ├── DaemonRunning               another live daemon holds the store
     ├── LeadershipLost              the daemon's lock session ended: another daemon may lead
     ├── HttpError                   the HTTP API cannot listen where it was told to
     └── StoreError                  the store cannot be opened or used
          ├── StoreVersionError      the store was written by a newer runner
          ├── RecordRefused          the store would not take one run's records (the others' went in)
          ├── StoreFileChanged       the store's file was deleted or replaced under this process
          └── LeaseHeld              another live process holds the lease

Third-party errors are translated where they enter (the store, the loader) and kept as
``__cause__``. Every message says what to do next. The command line exits with the
``exit_code`` of the error that stopped it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:  # only for a hint: importing records at run time would cost every command its imports
    from runner.records import Lease


class RunnerError(Exception):
    """Root of every error runner raises on purpose."""

    exit_code: ClassVar[int] = 2
    """What ``runner`` exits with when this error stops a command: 2 for what the user can
    fix (input, files, a store it cannot use), 3 when there is nothing to run."""


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

    exit_code = 3


class RunNotFound(RunnerError, LookupError):
    """No run has that id."""

    exit_code = 3


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


REFUSALS: tuple[type[RunnerError], ...] = (TaskNotRunnable, ParameterError)
"""The errors that refuse a run before it starts, as a run that ran elsewhere records them."""


def refusal(type_name: str | None) -> type[RunnerError] | None:
    """The refusal a recorded run's error ``type`` names, or None: a run queued for a worker
    or the daemon keeps only its error's type name."""
    return next((kind for kind in REFUSALS if kind.__name__ == type_name), None)


# -- raised while a task runs, or by one command ----------------------------------------------


class SignatureError(RunnerError, TypeError):
    """A callable runner cannot call with keyword parameters, or whose hints do not resolve."""

    def __init__(self, message: str, *, parameter: str | None = None) -> None:
        self.parameter = parameter
        super().__init__(message)


class NoUpstreamResult(RunnerError, KeyError):
    """A result asked of ``Upstream`` that it does not have; reads as its message."""

    def __str__(self) -> str:
        return str(self.args[0])


class SecretUnavailable(RunnerError):
    """A secret reference names an environment variable or file that is not there."""


class ShellStartError(RunnerError):
    """The command could not be started (missing program, bad cwd, no permission)."""


class TaskTimeout(RunnerError, TimeoutError):
    """A python task ran past its timeout."""


class ProjectExists(RunnerError):
    """``runner init`` would overwrite files that exist."""


class HttpError(RunnerError):
    """The HTTP API cannot listen where it was told to."""
