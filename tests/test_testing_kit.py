"""The README's user-test example, run as a test (virtual time through pytest-asyncio)."""

import asyncio
from pathlib import Path

import pytest

from swarmfl.errors import ConfigError
from swarmfl.sim.vtime import VirtualTimeLoop, run_virtual
from swarmfl.testing import scenario, virtual_swarm


def readme_example() -> str:
    """The Python block of the README's section on testing your own swarm ideas."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = text.split("## Testing your own swarm ideas", 1)[1]
    return section.split("```python\n", 2)[2].split("```", 1)[0]


@pytest.mark.slow
def test_the_readme_example_runs_as_written() -> None:
    namespace: dict[str, object] = {}
    exec(compile(readme_example(), "README.md", "exec"), namespace)
    example = namespace["test_swarm_learns_despite_dropouts"]
    assert callable(example)
    run_virtual(example)  # the marked test, on the virtual-time loop pytest would give it


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
