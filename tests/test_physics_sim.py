"""Swarm physics end to end in virtual time: batteries, partitions, crashes, moving drones."""

import numpy as np
import pytest

from swarmfl.sim.metrics import read_metrics
from swarmfl.sim.runner import run_scenario
from swarmfl.testing import scenario, virtual_swarm

VIRTUAL = pytest.mark.asyncio(loop_factories=["virtual_time"])

BATTERY = {
    "swarm.drones": 6,
    "battery.enabled": True,
    "battery.capacity_j": 10_000.0,  # 100 s at 100 W: a short flight, for the test
    "battery.flight_w": 100.0,
    "battery.land_threshold": 0.2,
    "battery.initial_min": 0.9,
    "battery.recharge_s": 30.0,
}


@VIRTUAL
async def test_a_drone_that_drains_lands_stops_sending_and_returns_after_recharging() -> None:
    async with virtual_swarm(scenario("quickstart", BATTERY)) as swarm:
        trace: dict[int, list[tuple[float, str, int, bool, float]]] = {i: [] for i in range(6)}
        for step in range(200):
            await swarm.run_for(1.0)
            now = float(step + 1)
            for drone in swarm.drones:
                i = drone.drone_id
                fraction = swarm.lifecycle.battery_fraction(i, now)
                assert fraction is not None
                state = swarm.lifecycle.state(i)
                trace[i].append(
                    (now, state, drone.radio.stats.frames_sent, drone.radio.up, fraction)
                )
    for rows in trace.values():
        start = next(k for k, row in enumerate(rows) if row[1] == "landed")
        end = next(k for k in range(start, len(rows)) if rows[k][1] != "landed")
        landed = rows[start:end]  # the first time on the ground
        first, last = landed[0], landed[-1]
        # It landed at the threshold, after 70-80 s of flight from 90-100 % charge.
        assert 65.0 <= first[0] <= 85.0
        assert first[4] == pytest.approx(0.2, abs=0.01)
        # While on the ground: radio off, not one frame sent.
        assert all(not up for _, _, _, up, _ in landed)
        assert {sent for _, _, sent, _, _ in landed} == {first[2]}
        # Back in the air after recharge_s, full, sending again.
        assert last[0] - first[0] == pytest.approx(30.0, abs=1.0)
        after = [row for row in rows if row[0] > last[0] + 5.0 and row[0] < last[0] + 20.0]
        assert all(state == "up" and up for _, state, _, up, _ in after)
        assert after[-1][2] > first[2]
        assert after[0][4] > 0.9
    assert swarm.lifecycle.landings() >= 6


def half_means(swarm) -> tuple[np.ndarray, np.ndarray]:
    params = np.stack([d.agent.learner.flat_parameters().copy() for d in swarm.drones])
    half = len(params) // 2
    return params[:half].mean(axis=0), params[half:].mean(axis=0)


def divergence(swarm) -> float:
    a, b = half_means(swarm)
    return float(np.linalg.norm(a - b) / np.linalg.norm((a + b) / 2))


@VIRTUAL
async def test_partition_heal_halves_diverge_while_split_and_reconverge_after() -> None:
    s = scenario(
        "quickstart",
        {
            "swarm.drones": 16,
            "topology.kind": "complete",
            "data.alpha": 0.3,
            "faults.partitions": [{"start_s": 40.0, "end_s": 120.0, "groups": "halves"}],
        },
    )
    async with virtual_swarm(s) as swarm:
        await swarm.run_for(40.0)
        before = divergence(swarm)
        await swarm.run_for(80.0)
        split = divergence(swarm)
        # Nothing crossed: after 80 s apart, a drone holds replicas of its own half only.
        for drone in swarm.drones:
            own = set(range(8)) if drone.drone_id < 8 else set(range(8, 16))
            assert set(drone.agent.node.known_peers()) <= own
        await swarm.run_for(80.0)
        healed = divergence(swarm)
        accuracy = swarm.mean_accuracy()
    assert split > 4 * before
    assert split > 4 * healed
    assert accuracy >= 0.9


CRASH = {"swarm.drones": 8, "faults.crashes": [{"drone": 3, "at_s": 60.0, "down_s": 5.0}]}


@VIRTUAL
@pytest.mark.parametrize("checkpoint_s", [0.0, 10.0])
async def test_a_crash_loses_ram_and_the_drone_resumes_from_its_checkpoint_or_rejoins(
    checkpoint_s: float,
) -> None:
    s = scenario("quickstart", {**CRASH, "faults.checkpoint_interval_s": checkpoint_s})
    async with virtual_swarm(s) as swarm:
        await swarm.run_for(59.9)
        crashed = swarm.drones[3]
        before = swarm.accuracies()[3]
        await swarm.run_for(0.2)
        assert swarm.lifecycle.state(3) == "crashed" and not crashed.radio.up
        params = crashed.agent.learner.flat_parameters()
        assert crashed.agent.node.known_peers() == {}  # neighbours' replicas were in RAM
        after = swarm.accuracies()[3]
        if checkpoint_s:
            saved, _, saved_at = swarm.checkpoints[3]
            assert np.array_equal(params, saved)
            assert 50.0 <= saved_at < 60.0
            assert after >= before - 0.1
        else:
            assert np.array_equal(params, swarm._rejoin)
            assert after < 0.3  # back to the untrained model it rejoins with
        await swarm.run_for(60.0)
        assert swarm.lifecycle.state(3) == "up"
        assert swarm.accuracies()[3] >= 0.85
        # Its stream restarted with a keyframe that neighbours accepted (no replay refusals).
        for neighbour in (2, 4):
            node = swarm.drones[neighbour].agent.node
            assert node.known_peers()[3] > 110.0
            assert node.stats.frames_replayed == 0
    assert swarm.lifecycle.crashes[3] == 1


MOVING = {
    "swarm.drones": 24,
    "topology.kind": "positions",
    "mobility.kind": "random_waypoint",
    "mobility.bounds": [[0.0, 0.0, 50.0], [600.0, 600.0, 50.0]],
    "mobility.tick_s": 1.0,
    "radio.range_m": 250.0,
    "radio.rate_bps": 250_000.0,
    "radio.mtu_bytes": 252,
    "radio.airtime": True,
    "gossip.codec": "int8",
    "gossip.period_s": 2.0,
    "model.hidden": [32],
}


@VIRTUAL
async def test_moving_drones_over_lossy_links_still_learn() -> None:
    async with virtual_swarm(scenario("quickstart", MOVING)) as swarm:
        await swarm.run_for(240.0)
        accuracy = swarm.mean_accuracy()
        stats = [d.radio.stats for d in swarm.drones]
    attempted = sum(s.deliveries_attempted for s in stats)
    lost = sum(s.frames_lost for s in stats)
    assert 0.05 < lost / attempted < 0.9  # links lose datagrams by distance
    assert swarm.world.rebuilds >= 240  # links recomputed every tick
    assert accuracy >= 0.8


LIBRARY = ["quickstart", "formation-30", "partition-heal", "heterogeneous-fleet"]


@pytest.mark.parametrize("name", [*LIBRARY, "search-and-rescue-100"])
def test_every_bundled_scenario_runs_and_draws_its_plots(name: str, tmp_path) -> None:
    s = scenario(name, {"run.duration_s": 20.0, "run.eval_interval_s": 5.0})
    summary = run_scenario(s, tmp_path)
    assert summary["frames_sent"] > 0 and summary["accuracy"]["mean"] > 0.15
    for picture in ("accuracy.png", "topology.png", "bytes.png", "delivery.png"):
        assert (tmp_path / picture).read_bytes()[:4] == b"\x89PNG"
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert {"delivery_ratio", "state", "battery", "position"} <= set(rows[0])
    if s.topology.kind == "positions":
        assert all(len(row["position"]) == 3 for row in rows)


@pytest.mark.slow
def test_large_1000_builds_and_runs(tmp_path) -> None:
    summary = run_scenario(scenario("large-1000", {"run.duration_s": 10.0}), None)
    assert summary["drones"] == 1000
    assert summary["frames_sent"] >= 1000  # every drone published once in 10 s (period 5 s)


def test_same_seed_same_bytes_with_every_fault_on(tmp_path) -> None:
    chaos = {
        "swarm.drones": 20,
        "run.duration_s": 90.0,
        "run.eval_interval_s": 10.0,
        "mobility.bounds": [[0.0, 0.0, 80.0], [800.0, 800.0, 80.0]],
        "battery.capacity_j": 15_000.0,
        "battery.recharge_s": 20.0,
        "churn.mean_up_s": 30.0,
        "faults.crash_mean_interval_s": 60.0,
        "faults.checkpoint_interval_s": 10.0,
        "faults.partitions": [{"start_s": 30.0, "end_s": 60.0}],
    }
    runs = []
    for name, seed in (("a", 4), ("b", 4), ("c", 5)):
        summary = run_scenario(
            scenario("search-and-rescue-100", {**chaos, "run.seed": seed}), tmp_path / name
        )
        runs.append((tmp_path / name / "metrics.jsonl").read_bytes())
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    states = {row["state"] for row in read_metrics(tmp_path / "a" / "metrics.jsonl")}
    assert {"up", "landed"} <= states
    assert summary["crashes"] > 0 and summary["landings"] > 0
