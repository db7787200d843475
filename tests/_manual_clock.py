"""A clock for tests that moves only when the test says so (no waiting for wall time)."""

from __future__ import annotations

import asyncio


class ManualClock:
    """A clock the test moves: ``sleep_until`` returns once :meth:`advance` passes the deadline."""

    def __init__(self, start_s: float = 1000.0) -> None:
        self.t = start_s
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []
        self._slept = asyncio.Event()

    def now(self) -> float:
        return self.t

    async def sleep_until(self, deadline_s: float) -> None:
        if deadline_s <= self.t:
            return
        waiter = asyncio.get_running_loop().create_future()
        entry = (deadline_s, waiter)
        self._sleepers.append(entry)
        self._slept.set()
        try:
            await waiter
        finally:
            if entry in self._sleepers:
                self._sleepers.remove(entry)

    async def sleeper(self) -> None:
        """Wait until some task sleeps on this clock (at once if one already does)."""
        while not self._sleepers:
            self._slept.clear()
            await self._slept.wait()

    def advance(self, seconds: float) -> None:
        self.t += seconds
        for entry in list(self._sleepers):
            deadline, waiter = entry
            if deadline <= self.t:
                self._sleepers.remove(entry)  # no longer asleep, even before it runs again
                if not waiter.done():
                    waiter.set_result(None)
