"""The daemon's housekeeping: its lease kept, the runs of dead processes swept up, old runs
pruned, the jobs of dead workers recovered, its store file watched.

Each is a loop of its own in the daemon's task group, so a slow one (a pruning backlog) never
holds up another (the lease's renewal). A store that fails a read or write is waited out
(``store_trouble``); the loop that met it tries again, and the daemon keeps running.
"""

from __future__ import annotations

import math
import time

import anyio

from runner import log
from runner.daemon.options import DaemonOptions
from runner.errors import DaemonRunning, StoreError, StoreFileChanged
from runner.lease import HEARTBEAT, LEASE
from runner.processes import HOST, kill_orphaned_groups, process_is_alive, this_process
from runner.remote import RECOVER_EVERY, recover_stalled
from runner.store import FILE_CHECK_EVERY, Store

SWEEP_EVERY = 1.0
"""Seconds between looks for runs of dead processes on this host (marked interrupted)."""

PRUNE_EVERY = 3600.0
"""Seconds between prunings of old runs (the first is at start)."""

STORE_RETRY = 1.0
"""Seconds to wait after the store failed a read or write before the daemon tries again."""


async def sweep(store: Store) -> None:
    """Mark the runs of dead processes on this host interrupted, kill what they left running,
    and log one ``run_interrupted`` per run, at start as in the sweep, so a log shipper sees
    every interrupted run (a restarted daemon's own predecessor's too)."""
    interrupted = await store.mark_interrupted(HOST, process_is_alive)
    kill_orphaned_groups(interrupted.groups)
    for run_id in interrupted.run_ids:
        log.logger.warning(
            f"run {run_id} interrupted: the process running it died",
            extra={"event": "run_interrupted", "run_id": run_id},
        )


async def store_trouble(exc: StoreError) -> None:
    """Log a store that cannot be read or written (a full disk, a lock held too long) and give
    it a moment; the loop that met it tries again, and the daemon keeps running. A store file
    deleted or replaced is no trouble to wait out: that stops the daemon (``watch_store_file``,
    within ``FILE_CHECK_EVERY``), so it is not logged here."""
    if not isinstance(exc, StoreFileChanged):
        log.logger.error(f"{exc}; trying again in {STORE_RETRY:g}s", extra={"event": "store_error"})
    await anyio.sleep(STORE_RETRY)


class Housekeeping:
    """The daemon's housekeeping loops on ``store``; ``stopping`` is the daemon's stop event."""

    def __init__(self, store: Store, options: DaemonOptions, stopping: anyio.Event) -> None:
        self.store = store
        self.options = options
        self.stopping = stopping

    async def keep_lease(self) -> None:
        """Renew the daemon's lease every ``HEARTBEAT`` seconds, and sweep every ``SWEEP_EVERY``."""
        last_renewal = -math.inf
        while True:
            try:
                if time.monotonic() - last_renewal >= HEARTBEAT:
                    me = this_process()
                    if not await self.store.renew_lease(LEASE, host=me.host, pid=me.pid):
                        raise DaemonRunning("another daemon took over this store's lease; stopping")
                    last_renewal = time.monotonic()
                await sweep(self.store)
            except StoreError as exc:
                await store_trouble(exc)
            await anyio.sleep(SWEEP_EVERY)

    async def watch_store_file(self) -> None:
        """Stop the daemon when its SQLite file is deleted or replaced (``Store.check_file``).

        Its records would go on into a file nobody reads, and a daemon started on the new file
        would hold a lease of its own there: so this one stops at once (StoreFileChanged, exit
        2, for a supervisor to start it again on the new file). Its running runs are cancelled
        without the grace period, their process groups killed: their records cannot be written
        anywhere that counts. It fires nothing from the moment the file changed, since every
        store write looks first, and exits within about a second (the kill grace of a task that
        ignores SIGTERM aside)."""
        while True:
            try:
                self.store.check_file()
            except StoreFileChanged as exc:
                log.logger.error(
                    f"{exc}; running runs are cancelled, and their records cannot be stored",
                    extra={"event": "store_file_changed", "path": exc.path, "what": exc.what},
                )
                self.stopping.set()  # the file watcher's thread ends only on this event
                raise
            await anyio.sleep(FILE_CHECK_EVERY)

    async def recover_stalled(self) -> None:
        """Settle the jobs of dead workers (``--remote``); this host's dead runs are swept by
        ``keep_lease``."""
        while True:
            await recover_stalled(self.store)
            await anyio.sleep(RECOVER_EVERY)

    async def prune(self) -> None:
        """Prune old runs at start and every hour; in a loop of its own, since a backlog can
        take many seconds (in short transactions) and the lease must be renewed meanwhile."""
        if self.options.retain is None and self.options.retain_runs is None:
            return
        while True:
            try:
                pruned = await self.store.prune_runs(
                    older_than=self.options.retain, keep_per_task=self.options.retain_runs
                )
            except StoreError as exc:
                await store_trouble(exc)
                continue
            if pruned:
                log.logger.info(f"pruned {pruned} old runs", extra={"event": "pruned", "count": pruned})
            await anyio.sleep(PRUNE_EVERY)
