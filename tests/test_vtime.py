"""Virtual time: the clock jumps to the next timer; a stuck simulation fails instead of hanging."""

import asyncio

import pytest

from swarmfl.clock import ChargedCompute, LoopClock
from swarmfl.errors import ConfigError
from swarmfl.learning.learner import StepResult
from swarmfl.sim.vtime import VirtualDeadlockError, run_virtual


def test_timers_fire_in_order_at_their_virtual_times():
    fired = []

    async def main():
        loop = asyncio.get_running_loop()

        async def at(delay, name):
            await asyncio.sleep(delay)
            fired.append((name, loop.time()))

        await asyncio.gather(at(3600.0, "hour"), at(5.0, "five"), at(0.25, "quarter"))
        return loop.time()

    assert run_virtual(main) == 3600.0
    assert fired == [("quarter", 0.25), ("five", 5.0), ("hour", 3600.0)]


def test_deadlock_raises_instead_of_hanging():
    async def stuck():
        await asyncio.Event().wait()

    with pytest.raises(VirtualDeadlockError):
        run_virtual(stuck)


def test_charged_compute_spends_flops_on_the_clock():
    async def main():
        clock = LoopClock()
        compute = ChargedCompute(flops_per_s=2e9)
        start = clock.now()
        result = await compute.run(lambda: StepResult(samples=10, flops=5e9, loss=0.0))
        await clock.sleep_until(start + 10.0)
        return result, clock.now() - start

    result, elapsed = run_virtual(main)
    assert result.samples == 10
    assert elapsed == pytest.approx(10.0)

    async def charged_only():
        start = asyncio.get_running_loop().time()
        await ChargedCompute(2e9).run(lambda: StepResult(10, 5e9, 0.0))
        return asyncio.get_running_loop().time() - start

    assert run_virtual(charged_only) == pytest.approx(2.5)
    with pytest.raises(ConfigError, match="flops_per_s"):
        ChargedCompute(0)


def test_a_simulation_leaves_the_garbage_collector_as_it_found_it():
    import gc
    import weakref

    class Cycle:
        def __init__(self):
            self.me = self

    async def main():
        # The heap that existed before the run is frozen while it runs: collections during
        # the run do not walk it (nor collect it)...
        gc.collect()
        return gc.get_freeze_count(), ref() is not None

    gc.disable()
    try:
        cycle = Cycle()
        ref = weakref.ref(cycle)
        del cycle  # garbage now, but only the cyclic collector can free it
        frozen, survived = run_virtual(main)
    finally:
        gc.enable()
    assert frozen > 0 and survived
    # ... and unfrozen afterwards: garbage from before the run is still collected.
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert ref() is None
