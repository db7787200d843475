"""The simulated world (swarmfl.sim.world): links from graphs or positions, ticks, partitions."""

import numpy as np
import pytest

from swarmfl.config.scenario_file import validate_scenario
from swarmfl.errors import ConfigError
from swarmfl.sim.mobility import RandomWaypoint
from swarmfl.sim.pathloss import links_from_positions
from swarmfl.sim.world import build_world, link_model
from swarmfl.testing import scenario

MOVING = {
    "swarm.drones": 40,
    "topology.kind": "positions",
    "mobility.kind": "random_waypoint",
    "mobility.bounds": [[0.0, 0.0, 20.0], [800.0, 600.0, 120.0]],
    "mobility.min_speed_mps": 3.0,
    "mobility.max_speed_mps": 12.0,
    "mobility.max_pause_s": 5.0,
    "mobility.tick_s": 2.0,
    "radio.range_m": 200.0,
}


def test_static_topology_world_keeps_the_graph_and_loss() -> None:
    world = build_world(scenario("quickstart", {"radio.datagram_loss": 0.1, "radio.loss": 0.2}))
    assert not world.metric
    assert world.neighbours(0) == (1, 15)
    assert world.out_links(3, 100.0) == ((2, 4), (0.1, 0.1))
    assert world.frame_loss == 0.2 and world.latency_s == 0.005
    assert world.rebuilds == 1  # a fixed graph is tabled once
    world.remove(4)
    assert world.neighbours(3, 200.0) == (2,) and world.neighbours(4, 200.0) == ()
    assert world.positions(0.0).shape == (16, 3)  # a drawing layout


def test_position_world_recomputes_links_every_tick_from_positions() -> None:
    s = scenario("quickstart", MOVING)
    world = build_world(s)
    assert world.metric
    model = link_model(s.radio)
    changed = 0
    previous = None
    for tick in range(30):
        t = tick * 2.0
        for offset in (0.0, 0.7, 1.99):  # anywhere in a tick: the links at its start
            src, dst, _, loss = links_from_positions(world.positions(t), model)
            for sender in (0, 7, 39):
                receivers, losses = world.out_links(sender, t + offset)
                mine = src == sender
                assert receivers == tuple(dst[mine].tolist())
                assert losses == pytest.approx(tuple(loss[mine].tolist()))
        table = [world.neighbours(i, t) for i in range(40)]
        changed += table != previous
        previous = table
    assert world.rebuilds == 30
    assert changed > 10  # the drones move: links come and go
    assert all(0 < p < 1 for i in range(40) for p in world.out_links(i, 60.0)[1])


def test_mobility_is_deterministic_per_seed_and_stays_in_bounds_at_its_speeds() -> None:
    a = build_world(scenario("quickstart", MOVING))
    b = build_world(scenario("quickstart", MOVING))
    c = build_world(scenario("quickstart", {**MOVING, "run.seed": 8}))
    times = np.arange(0.0, 600.0, 0.5)
    track = np.stack([a.positions(t) for t in times])
    assert np.array_equal(track, np.stack([b.positions(t) for t in times]))
    assert not np.array_equal(track[10], c.positions(times[10]))
    assert (track >= [0.0, 0.0, 20.0]).all() and (track <= [800.0, 600.0, 120.0]).all()
    speeds = np.linalg.norm(np.diff(track, axis=0), axis=2) / 0.5
    assert speeds.max() <= 12.0 + 1e-9
    moving = speeds[speeds > 1e-6]
    # A half-second sample that straddles a turn or pause is slower; most are at leg speed.
    assert np.percentile(moving, 10) >= 3.0 - 1e-9
    assert isinstance(a.source.mobility, RandomWaypoint)  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", ["static", "formation"])
def test_other_mobility_models_build_from_the_scenario(kind: str) -> None:
    s = scenario(
        "quickstart",
        {
            "topology.kind": "positions",
            "mobility.kind": kind,
            "mobility.placement": "grid",
            "mobility.spacing_m": 40.0,
            "radio.range_m": 50.0,
        },
    )
    world = build_world(s)
    if kind == "static":
        assert np.array_equal(world.positions(0.0), world.positions(99.0))
        assert world.neighbours(5) == (1, 4, 6, 9)  # a 4x4 grid, 40 m apart, 50 m range
    else:
        first, later = world.positions(0.0), world.positions(30.0)
        assert np.allclose(later - first, (later - first)[0])  # everyone keeps station
        assert not np.allclose(later, first)


def test_scripted_tracks_come_from_a_csv(tmp_path) -> None:
    path = tmp_path / "tracks.csv"
    rows = ["time,drone,x,y,z"]
    for drone in range(4):
        rows += [f"0,{drone},{drone * 100},0,50", f"10,{drone},{drone * 100},500,50"]
    path.write_text("\n".join(rows) + "\n")
    overrides = {
        "swarm.drones": 4,
        "topology.kind": "positions",
        "mobility.kind": "scripted",
        "mobility.csv": str(path),
        "radio.range_m": 150.0,
    }
    world = build_world(scenario("quickstart", overrides))
    assert world.positions(5.0)[2].tolist() == [200.0, 250.0, 50.0]
    assert world.neighbours(1) == (0, 2)
    (tmp_path / "bad.csv").write_text("time,drone,x,y,z\n0,9,0,0,0\n")
    with pytest.raises(ConfigError, match=r"bad\.csv.*line 2.*unknown drone 9"):
        build_world(
            scenario("quickstart", {**overrides, "mobility.csv": str(tmp_path / "bad.csv")})
        )


def test_partitions_cut_links_between_groups_until_the_heal() -> None:
    s = scenario(
        "quickstart",
        {
            "swarm.drones": 8,
            "topology.kind": "complete",
            "faults.partitions": [
                {"start_s": 10.0, "end_s": 20.0},
                {"start_s": 30.0, "end_s": 40.0, "groups": [[0, 1], [2, 3, 4]]},
            ],
        },
    )
    world = build_world(s)
    everyone = tuple(range(1, 8))
    assert world.neighbours(0, 9.99) == everyone
    assert world.neighbours(0, 10.0) == (1, 2, 3)  # halves
    assert world.neighbours(5, 19.0) == (4, 6, 7)
    assert world.neighbours(0, 20.0) == everyone  # healed
    assert world.neighbours(0, 35.0) == (1,)
    assert world.neighbours(6, 35.0) == (5, 7)  # unlisted drones form their own group
    assert world.neighbours(0, 40.0) == everyone
    assert world.graph(15.0).number_of_edges() == 2 * 6
    assert len(world.edges(25.0)) == 28


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"mobility.kind": "random_waypoint"}, "topology.kind"),
        ({"radio.mtu_bytes": 100, "radio.burst_bytes": 50}, "radio.burst_bytes"),
        ({"radio.edge_loss": 0.001}, "radio.edge_loss"),
        ({"radio.reference_distance_m": 500.0}, "radio.reference_distance_m"),
        (
            {"topology.kind": "positions", "mobility.min_speed_mps": 20.0},
            "mobility.min_speed_mps",
        ),
        ({"topology.kind": "positions", "mobility.kind": "scripted"}, "mobility.csv"),
        ({"faults.partitions": [{"start_s": 5.0, "end_s": 4.0}]}, "faults.partitions.0"),
        (
            {"faults.partitions": [{"start_s": 1.0, "end_s": 4.0, "groups": [[0, 99]]}]},
            "faults.partitions.0.groups.0",
        ),
        ({"faults.crashes": [{"drone": 16, "at_s": 1.0}]}, "faults.crashes.0.drone"),
        ({"battery.land_threshold": 0.6, "battery.initial_min": 0.5}, "battery.initial_min"),
    ],
)
def test_bad_world_keys_name_the_key(overrides: dict, key: str) -> None:
    raw = scenario("quickstart").model_dump(mode="json")
    for dotted, value in overrides.items():
        node = raw
        *path, last = dotted.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    with pytest.raises(ConfigError) as caught:
        validate_scenario(raw, source="s.toml")
    assert caught.value.key == key
