"""A fake clock for the daemon's scheduler (``runner.daemon.scheduler.Clock``), so that its
logic is tested in process without waiting for time to pass."""

from __future__ import annotations

import anyio
import anyio.lowlevel


class FakeClock:
    """Wall time that moves only when the test moves it.

    It counts the scheduler's naps (a wait that blocks), so that a test can wait for the
    scheduler to have gone round: fired what was due, committed it, and gone back to sleep."""

    def __init__(self, now: float) -> None:
        self._now = now
        self._sleepers: list[tuple[float, anyio.Event]] = []
        self._naps = 0
        self._napped = anyio.Event()

    def now(self) -> float:
        return self._now

    async def wait(self, event: anyio.Event, seconds: float) -> None:
        if event.is_set() or seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        alarm = anyio.Event()
        sleeper = (self._now + seconds, alarm)
        self._sleepers.append(sleeper)
        self._naps += 1
        self._napped.set()
        try:
            async with anyio.create_task_group() as group:

                async def ring(bell: anyio.Event) -> None:
                    await bell.wait()
                    group.cancel_scope.cancel()

                group.start_soon(ring, event)
                group.start_soon(ring, alarm)
        finally:
            self._sleepers.remove(sleeper)

    async def naps(self, more: int = 1) -> None:
        """Wait for ``more`` naps after those so far (one per scheduler woken)."""
        target = self._naps + more
        with anyio.fail_after(5):
            while self._naps < target:
                self._napped = anyio.Event()
                await self._napped.wait()

    async def advance_to(self, when: float) -> None:
        """Move the time to ``when``; wake the sleepers whose time came and wait until they
        sleep again."""
        assert when >= self._now, "the fake clock never goes back"
        self._now = when
        woken = [alarm for deadline, alarm in self._sleepers if deadline <= when and not alarm.is_set()]
        for alarm in woken:
            alarm.set()
        if woken:
            await self.naps(len(woken))

    async def advance(self, seconds: float) -> None:
        await self.advance_to(self._now + seconds)
