"""Baseline strategies (``[learning] strategy``) in virtual time: local-only, D-PSGD, FedAvg."""

from __future__ import annotations

import pytest

from swarmfl.errors import ConfigError
from swarmfl.sim.runner import run_scenario
from swarmfl.sim.strategies import DpsgdAgent, FedAvgClient, LocalAgent
from swarmfl.sim.swarm import Swarm
from swarmfl.sim.vtime import run_virtual
from swarmfl.testing import scenario

NON_IID = {
    "swarm.drones": 8,
    "run.duration_s": 40.0,
    "run.eval_interval_s": 10.0,
    "data.partition": "dirichlet",
    "data.alpha": 0.1,
}


def summary_of(overrides: dict[str, object]) -> dict[str, object]:
    summary = run_scenario(scenario("quickstart", overrides), None)
    summary.pop("wall_seconds")
    return summary


def run_swarm(overrides: dict[str, object], seconds: float) -> Swarm:
    async def main() -> Swarm:
        async with Swarm(scenario("quickstart", overrides)) as swarm:
            await swarm.run_for(seconds)
        return swarm

    return run_virtual(main())


def test_strategy_key_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"learning\.strategy"):
        scenario("quickstart", {"learning.strategy": "allreduce"})
    with pytest.raises(ConfigError, match="round_timeout_periods"):
        scenario("quickstart", {"learning.round_timeout_periods": 0})


def test_local_only_drones_never_merge_and_learn_less_than_gossip_on_non_iid_data() -> None:
    local = summary_of({**NON_IID, "learning.strategy": "local"})
    gossip = summary_of(NON_IID)
    assert local["bytes_sent"] == 0 and local["frames_received"] == 0
    assert gossip["bytes_sent"] > 0
    local_accuracy = local["accuracy"]["mean"]  # type: ignore[index]
    gossip_accuracy = gossip["accuracy"]["mean"]  # type: ignore[index]
    assert local_accuracy < gossip_accuracy - 0.1


def test_local_only_agents_are_what_the_swarm_flies() -> None:
    swarm = run_swarm({"swarm.drones": 4, "learning.strategy": "local"}, 5.0)
    assert all(isinstance(d.agent, LocalAgent) for d in swarm.drones)
    assert all(d.agent.rounds >= 4 and not d.agent.node.known_peers() for d in swarm.drones)


def test_dpsgd_barrier_waits_for_every_neighbour_without_loss_and_times_out_under_loss() -> None:
    ring = {"swarm.drones": 6, "learning.strategy": "dpsgd"}
    clean = run_swarm(ring, 20.0)
    lossy = run_swarm({**ring, "radio.loss": 0.3}, 20.0)
    for swarm in (clean, lossy):
        assert all(isinstance(d.agent, DpsgdAgent) for d in swarm.drones)
    clean_timeouts = [d.agent.barrier_timeouts for d in clean.drones]  # type: ignore[attr-defined]
    lossy_timeouts = [d.agent.barrier_timeouts for d in lossy.drones]  # type: ignore[attr-defined]
    assert clean_timeouts == [0] * 6
    assert sum(lossy_timeouts) > 0
    # A timed-out barrier still ends the round: every drone keeps going.
    assert min(d.agent.rounds for d in lossy.drones) >= 5
    # ... but rounds that wait for a timeout are longer.
    assert sum(d.agent.rounds for d in lossy.drones) < sum(d.agent.rounds for d in clean.drones)


def test_fedavg_drone_out_of_the_stations_range_never_gets_the_global_model() -> None:
    grid = {
        "swarm.drones": 9,
        "learning.strategy": "fedavg",
        "topology.kind": "positions",
        "mobility.placement": "grid",
        "mobility.spacing_m": 50.0,
        "mobility.bounds": [[0.0, 0.0, 50.0], [100.0, 100.0, 50.0]],
        "radio.range_m": 120.0,
        # the station sits on drone 0; drone 8 is 141 m away, out of range
        "ground_station.position": [0.0, 0.0, 50.0],
    }
    swarm = run_swarm(grid, 20.0)
    clients = [d.agent for d in swarm.drones]
    assert all(isinstance(a, FedAvgClient) for a in clients)
    station = swarm.station
    assert station is not None and station.rounds >= 5 and station.replies > 0
    assert clients[8].globals_adopted == 0  # type: ignore[attr-defined]
    assert 8 not in station.node.known_peers()
    assert clients[0].globals_adopted >= 5  # type: ignore[attr-defined]
    # The station is a radio of the run: its bytes count.
    assert station.radio.stats.bytes_sent > 0 and station.radio in swarm.radios


def test_fedavg_station_far_away_leaves_every_drone_on_its_own() -> None:
    far = {
        "swarm.drones": 4,
        "learning.strategy": "fedavg",
        "topology.kind": "positions",
        "radio.range_m": 100.0,
        "mobility.bounds": [[0.0, 0.0, 50.0], [50.0, 50.0, 50.0]],
        "ground_station.position": [5000.0, 5000.0, 0.0],
    }
    swarm = run_swarm(far, 10.0)
    assert all(d.agent.globals_adopted == 0 for d in swarm.drones)  # type: ignore[attr-defined]
    assert swarm.station is not None and swarm.station.replies == 0


@pytest.mark.parametrize("strategy", ["dpsgd", "fedavg"])
def test_strategies_are_reproducible_by_seed_under_loss_and_churn(strategy: str) -> None:
    overrides = {
        "swarm.drones": 6,
        "run.duration_s": 30.0,
        "learning.strategy": strategy,
        "radio.loss": 0.3,
        "churn.enabled": True,
        "churn.mean_up_s": 10.0,
        "churn.mean_down_s": 3.0,
    }
    first, second = summary_of(overrides), summary_of(overrides)
    assert first == second
    assert first["strategy"] == strategy
    other = summary_of({**overrides, "run.seed": 8})
    assert other["accuracy"] != first["accuracy"]
