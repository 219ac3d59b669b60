"""Concurrency slots: how many runs (of the engine, or of one task) may run at once.

A lighter ``anyio.CapacityLimiter``: a slot that is free is taken without going round the event
loop. anyio's limiter yields to the loop on every acquire, free slot or not (a cancel-shielded
checkpoint); with its cancel scope that cost 19 us per run of a no-op task, about a tenth of
what the engine spends on one. Waiting for a slot is first come, first served, and like anyio's
limiter a slot is held by a task: ``release`` by a task that holds none raises RuntimeError.
"""

from __future__ import annotations

import asyncio
import collections
from types import TracebackType


class Slots:
    """``total`` slots (settable: a change lets waiting tasks in, or lets the excess run out)."""

    __slots__ = ("_holders", "_total", "_waiting")

    def __init__(self, total: int) -> None:
        self._total = total
        self._holders: set[asyncio.Task[object]] = set()
        self._waiting: collections.deque[tuple[asyncio.Task[object], asyncio.Future[None]]] = collections.deque()

    @property
    def total(self) -> int:
        return self._total

    @total.setter
    def total(self, value: int) -> None:
        self._total = value
        self._hand_on()

    @property
    def taken(self) -> int:
        return len(self._holders)

    async def acquire(self) -> None:
        task = _current_task()
        if task in self._holders:
            raise RuntimeError("this task holds one of these slots already")
        if not self._waiting and len(self._holders) < self._total:
            self._holders.add(task)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((task, waiter))
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():  # handed a slot as it was cancelled
                self._holders.discard(task)
                self._hand_on()
            raise

    def release(self) -> None:
        try:
            self._holders.remove(_current_task())
        except KeyError:
            raise RuntimeError("this task holds none of these slots") from None
        self._hand_on()

    def _hand_on(self) -> None:
        while self._waiting and len(self._holders) < self._total:
            task, waiter = self._waiting.popleft()
            if waiter.done():  # cancelled while it waited
                continue
            self._holders.add(task)
            waiter.set_result(None)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _current_task() -> asyncio.Task[object]:
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("slots are taken by tasks on an asyncio event loop")
    return task
