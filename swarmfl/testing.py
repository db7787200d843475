"""A test kit for users: swarms in virtual time inside pytest-asyncio tests.

Enable it in your ``conftest.py``::

    pytest_plugins = ["swarmfl.testing"]

then mark a test to run on the virtual-time event loop, where sleeping costs no wall time::

    import pytest
    from swarmfl.testing import scenario, virtual_swarm

    @pytest.mark.asyncio(loop_factories=["virtual_time"])
    async def test_swarm_learns_despite_dropouts():
        async with virtual_swarm(scenario("quickstart", {"swarm.drones": 8})) as swarm:
            await swarm.run_for(30.0)
            swarm.drop(3, for_s=40.0)          # drone 3 goes dark for 40 virtual seconds
            await swarm.run_for(90.0)
            assert swarm.mean_accuracy() >= 0.85

Tests not marked that way keep pytest-asyncio's ordinary event loop. Outside pytest,
:func:`swarmfl.sim.vtime.run_virtual` runs any coroutine in virtual time.
"""

from __future__ import annotations

import asyncio
import importlib.resources
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from swarmfl.config.scenario_file import Scenario, load_scenario
from swarmfl.errors import ConfigError
from swarmfl.sim.swarm import Swarm
from swarmfl.sim.vtime import VirtualTimeLoop, run_virtual

__all__ = [
    "VIRTUAL_TIME",
    "Swarm",
    "pytest_asyncio_loop_factories",
    "run_virtual",
    "scenario",
    "virtual_swarm",
]

VIRTUAL_TIME = "virtual_time"
"""The loop factory name to select with ``@pytest.mark.asyncio(loop_factories=[...])``."""


def scenario(
    base: str | Path = "quickstart", overrides: Mapping[str, Any] | None = None
) -> Scenario:
    """A validated scenario: a bundled one by name (``"quickstart"``) or a TOML file path.

    ``overrides`` maps dotted keys to values, e.g. ``{"swarm.drones": 8, "radio.loss": 0.2}``.
    Raises :class:`ConfigError` for an unknown scenario, key or bad value.
    """
    path = Path(base)
    if path.suffix != ".toml":
        bundled = importlib.resources.files("swarmfl.scenarios") / f"{base}.toml"
        if not bundled.is_file():
            raise ConfigError(f"no bundled scenario {str(base)!r}", source="scenario")
        path = Path(str(bundled))
    texts = [f"{key}={_toml_literal(value)}" for key, value in (overrides or {}).items()]
    return load_scenario(path, texts)


def _toml_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_literal(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {_toml_literal(v)}" for k, v in value.items()) + "}"
    return repr(value)


def virtual_swarm(scenario: Scenario) -> Swarm:
    """A :class:`~swarmfl.sim.swarm.Swarm` to use with ``async with`` on a virtual-time loop.

    Raises :class:`ConfigError` if the running loop is not a virtual-time loop (real sleeping
    would make a swarm test take minutes).
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if not isinstance(loop, VirtualTimeLoop):
        raise ConfigError(
            "virtual_swarm() needs the virtual-time loop: mark the test with "
            "@pytest.mark.asyncio(loop_factories=['virtual_time']) and add "
            "pytest_plugins = ['swarmfl.testing'] to conftest.py"
        )
    return Swarm(scenario)


def pytest_asyncio_loop_factories(config: Any, item: Any) -> Mapping[str, Callable[[], Any]]:
    """pytest-asyncio hook: offer the virtual-time loop to tests that ask for it by name."""
    marker = item.get_closest_marker("asyncio")
    wanted = marker.kwargs.get("loop_factories") if marker is not None else None
    if wanted and VIRTUAL_TIME in wanted:
        return {VIRTUAL_TIME: VirtualTimeLoop, "asyncio": asyncio.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}
