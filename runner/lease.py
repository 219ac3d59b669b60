"""The daemon's lease as every runner process sees it: who holds the store, and whether the
holder is gone.

One daemon per store holds the ``daemon`` lease (host, pid, process start time, heartbeat). The
daemon takes and renews it (runner/daemon); ``runner trigger`` reads it to say whether a daemon
will take its run up; a standby names the leader from it (runner/leader.py).
"""

from __future__ import annotations

import time

from runner.models import iso
from runner.processes import HOST, process_is_alive
from runner.store import Lease, Store, Trigger

LEASE = "daemon"
"""The name of the daemon's lease in the store."""

HEARTBEAT = 5.0
"""Seconds between renewals of the daemon's lease."""

STALE_AFTER = 30.0
"""A lease held on another host and not renewed for this long is taken over."""


def describe_holder(lease: Lease) -> str:
    return f"pid {lease.pid} on {lease.host}, since {iso(lease.acquired_at)}"


def lease_is_stale(lease: Lease) -> bool:
    """Whether the lease's holder is gone: a dead process on this host, or silent elsewhere."""
    if lease.host == HOST:
        return not process_is_alive(lease.pid, lease.pid_started)
    return time.time() - lease.heartbeat_at > STALE_AFTER


async def request_run(store: Store, trigger: Trigger) -> Lease | None:
    """Ask the daemon to run a task (``runner trigger``); the daemon's lease, None if no live
    daemon holds the store (the run starts when one does)."""
    await store.add_trigger(trigger)
    lease = await store.lease(LEASE)
    return None if lease is None or lease_is_stale(lease) else lease
