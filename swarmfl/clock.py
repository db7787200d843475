"""The clock and compute seams: what time it is, and how training time is spent.

The agent never reads the wall clock itself. It asks a :class:`Clock`, and runs training through
a :class:`Compute`:

* in the simulator the event loop is a :class:`~swarmfl.sim.vtime.VirtualTimeLoop`, so
  :class:`LoopClock` reads virtual time, and :class:`ChargedCompute` runs a training step inline
  and then charges its FLOPs to the virtual clock from the device profile, so results do not
  depend on the host's speed;
* in the field the loop is a normal one, and :class:`ThreadedCompute` runs the step in a worker
  thread so the radio and discovery stay responsive.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from swarmfl.errors import ConfigError

T = TypeVar("T")


class Clock(Protocol):
    """Monotonic seconds and sleeping until a deadline."""

    def now(self) -> float:
        """Current time in seconds (virtual in the simulator)."""
        ...

    async def sleep_until(self, deadline_s: float) -> None:
        """Return at ``deadline_s`` (at once if it has passed)."""
        ...


class LoopClock:
    """The running asyncio loop's clock: virtual on a VirtualTimeLoop, monotonic otherwise."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    def now(self) -> float:
        """Current loop time in seconds."""
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        return loop.time()

    async def sleep_until(self, deadline_s: float) -> None:
        """Sleep until the loop time reaches ``deadline_s``."""
        delay = deadline_s - self.now()
        if delay > 0:
            await asyncio.sleep(delay)


class Costed(Protocol):
    """The result of a unit of compute that knows how many FLOPs it took."""

    @property
    def flops(self) -> float: ...


C = TypeVar("C", bound=Costed)


class Compute(Protocol):
    """Runs a training step and spends its time."""

    async def run(self, step: Callable[[], C]) -> C:
        """Run ``step`` and return its result once its time has been spent."""
        ...


class ChargedCompute:
    """Runs the step inline, then sleeps ``flops / flops_per_s`` on the (virtual) clock.

    Raises :class:`ConfigError` if ``flops_per_s`` is not positive.
    """

    def __init__(self, flops_per_s: float) -> None:
        if not flops_per_s > 0:
            raise ConfigError(f"must be > 0, got {flops_per_s!r}", key="flops_per_s")
        self.flops_per_s = float(flops_per_s)

    async def run(self, step: Callable[[], C]) -> C:
        """Run ``step`` and charge its FLOPs to the clock."""
        result = step()
        await asyncio.sleep(result.flops / self.flops_per_s)
        return result


class ThreadedCompute:
    """Runs the step in a worker thread, in real time (the field agent).

    The event loop keeps serving the radio and discovery meanwhile. Cancelling the caller does
    not stop a thread mid-step: :meth:`drain` waits for the step in flight, so a checkpoint
    taken afterwards is never half an SGD step.
    """

    def __init__(self) -> None:
        self._inflight: asyncio.Future[Any] | None = None

    async def run(self, step: Callable[[], C]) -> C:
        """Run ``step`` in a thread and return its result."""
        future = asyncio.ensure_future(asyncio.to_thread(step))
        self._inflight = future
        return await asyncio.shield(future)

    async def drain(self) -> None:
        """Wait for the step in flight, if any, to finish (its result or error is dropped)."""
        future, self._inflight = self._inflight, None
        if future is not None and not future.done():
            with contextlib.suppress(Exception):
                await future
