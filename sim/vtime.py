"""Virtual time: an asyncio event loop whose clock jumps to the next timer.

When every task is waiting, a normal event loop blocks in ``select(timeout)`` until the earliest
timer is due. :class:`VirtualTimeLoop` instead advances its clock by that timeout at once and
returns, so ``asyncio.sleep(3600)`` costs no wall time and the whole swarm runs as fast as the
host can compute. Nothing private is patched: the loop overrides the public ``time()`` and is
handed a selector that never blocks.

The simulator runs no real I/O on this loop; a task that waits on something no timer will ever
wake (every task blocked, no timer pending) raises :class:`VirtualDeadlockError` instead of
hanging. Do not use threads (``to_thread``) on this loop: their completion is real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import selectors
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

from swarmfl.errors import SwarmError

T = TypeVar("T")


class VirtualDeadlockError(SwarmError):
    """Every task waits and no timer is pending: the simulation can never make progress."""


class _JumpingSelector(selectors.DefaultSelector):
    """A selector that polls without blocking and moves virtual time forward instead."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        # Only asyncio's own self-pipe is registered in a simulation (no threads, no sockets):
        # then skip the syscall; otherwise poll real file descriptors without blocking.
        ready = super().select(0) if len(self.get_map()) > 1 else []
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise VirtualDeadlockError(
                "every task is waiting and no timer is pending (a deadlock in virtual time)"
            )
        assert self.loop is not None
        self.loop.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop with a virtual clock starting at ``start_s`` seconds."""

    def __init__(self, start_s: float = 0.0) -> None:
        selector = _JumpingSelector()
        super().__init__(selector)
        selector.loop = self
        self._virtual_now = float(start_s)

    def time(self) -> float:
        """The virtual time in seconds."""
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (never backwards)."""
        if seconds > 0:
            self._virtual_now += seconds


def run_virtual(
    main: Callable[[], Coroutine[Any, Any, T]] | Awaitable[T], *, start_s: float = 0.0
) -> T:
    """Run ``main`` (a coroutine or a coroutine function) to completion in virtual time.

    Raises :class:`VirtualDeadlockError` if the simulation can never make progress.
    """
    loop = VirtualTimeLoop(start_s)
    try:
        with frozen_heap():
            coro = main() if callable(main) else main
            return loop.run_until_complete(coro)
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Keep the cyclic garbage collector off the objects that existed before the block.

    torch, scikit-learn and friends leave a few hundred thousand long-lived objects on the heap;
    a simulation that builds a hundred models allocates enough to trigger a full collection,
    which walks all of them (about 0.15 s, a tenth of a 100-drone benchmark run). Freezing them
    for the block leaves the collector only the simulation's own objects; on exit they are
    unfrozen, so anything the block dropped is still collected later. If someone else already
    froze the heap, this leaves it as it is.
    """
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
