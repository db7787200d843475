"""The README's user-test example, run as a test (virtual time through pytest-asyncio)."""

import asyncio

import pytest

from swarmfl.errors import ConfigError
from swarmfl.sim.vtime import VirtualTimeLoop
from swarmfl.testing import scenario, virtual_swarm


@pytest.mark.slow
@pytest.mark.asyncio(loop_factories=["virtual_time"])
async def test_swarm_learns_despite_dropouts():
    # --- the README example, verbatim ---
    async with virtual_swarm(scenario("quickstart", {"swarm.drones": 8})) as swarm:
        await swarm.run_for(30.0)
        swarm.drop(3, for_s=40.0)  # drone 3 goes dark for 40 virtual seconds
        await swarm.run_for(90.0)
        assert swarm.mean_accuracy() >= 0.85
    # --- end of the example ---
    assert asyncio.get_running_loop().time() >= 120.0
    assert swarm.drones[3].radio.up  # it came back


@pytest.mark.asyncio(loop_factories=["virtual_time"])
async def test_virtual_loop_is_selected_and_sleeping_is_free():
    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualTimeLoop)
    start = loop.time()
    await asyncio.sleep(3600.0)
    assert loop.time() - start == pytest.approx(3600.0)


@pytest.mark.asyncio
async def test_unmarked_tests_keep_the_real_loop():
    assert not isinstance(asyncio.get_running_loop(), VirtualTimeLoop)
    with pytest.raises(ConfigError, match="virtual-time loop"):
        virtual_swarm(scenario("quickstart"))


def test_scenario_overrides_are_validated():
    assert scenario("quickstart", {"swarm.drones": 5}).swarm.drones == 5
    with pytest.raises(ConfigError, match=r"radio\.rate_bps"):
        scenario("quickstart", {"radio.rate_bps": -1})
    with pytest.raises(ConfigError, match="no bundled scenario"):
        scenario("no-such-scenario")
