"""The daemon: fires schedules, takes triggers, reloads on file changes, shuts down gently.

One daemon per store holds the ``daemon`` lease (host, pid, heartbeat; runner/lease.py). On
PostgreSQL several may run: the one that wins the election leads and holds the lease, the
others wait as standbys (runner/leader.py). Everything the leader decides is committed with the
runs it starts: a schedule's next fire time moves in the same transaction that queues the fired
runs, and a trigger is taken up in the transaction that queues its runs, so a crash or a
restart neither repeats nor drops one.

``Daemon`` (daemon.py) leads and runs the services in one task group: the scheduler
(scheduler.py, on a clock it is given), the triggers (triggers.py), the reload (reload.py) and
the housekeeping (housekeeping.py); the runs they start are kept by runs.py.
"""

from runner.daemon.daemon import Daemon
from runner.daemon.options import DaemonOptions, HttpOptions
from runner.daemon.reload import SyncState
from runner.errors import DaemonRunning

__all__ = ["Daemon", "DaemonOptions", "DaemonRunning", "HttpOptions", "SyncState"]
