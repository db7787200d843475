"""What a run is about shows in its outputs: consensus distance, per-class and per-group
accuracy, why drones were down, and a disconnected graph at start."""

from __future__ import annotations

import json
import logging
from collections import defaultdict

import networkx as nx
import numpy as np
import pytest

from swarmfl.sim.metrics import read_metrics
from swarmfl.sim.runner import run_scenario
from swarmfl.sim.timeline import distances_to_mean, graph_components
from swarmfl.testing import scenario


def test_distances_to_mean():
    vectors = [np.array([0.0, 0.0]), np.array([2.0, 0.0]), np.array([1.0, 3.0])]
    mean = np.array([1.0, 1.0])
    assert distances_to_mean(vectors) == pytest.approx(
        [float(np.linalg.norm(v - mean)) for v in vectors]
    )
    assert distances_to_mean([np.ones(3)] * 4) == [0.0] * 4
    assert distances_to_mean([]) is None
    assert distances_to_mean([np.ones(3), np.ones(2)]) is None


def test_graph_components_counts_isolated_drones():
    graph = nx.path_graph(4)
    graph.add_nodes_from([4, 5])
    assert graph_components(graph, range(6)) == [4, 1, 1]
    assert graph_components(graph, [0, 1]) == [2]


@pytest.mark.slow
def test_partition_classes_and_crashes_show_in_the_run_folder(tmp_path):
    run = scenario(
        "partition-heal",
        {
            "swarm.drones": 8,
            "run.duration_s": 150.0,
            "faults.partitions": [{"start_s": 20.0, "end_s": 90.0, "groups": "halves"}],
            "faults.crashes": [{"drone": 2, "at_s": 100.0, "down_s": 20.0}],
            "swarm.devices": [
                {"name": "jetson", "count": 4},
                {"name": "micro", "count": 4, "flops_per_s": 2e8},
            ],
        },
    )
    summary = run_scenario(run, tmp_path)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert {r["class"] for r in rows} == {"jetson", "micro"}
    assert {r["group"] for r in rows if r["drone"] < 4} == {0}
    assert {r["group"] for r in rows if r["drone"] >= 4} == {1}
    assert set(summary["accuracy_by_class"]) == {"jetson", "micro"}
    assert set(summary["accuracy_by_group"]) == {"0", "1"}
    assert any(r["state"] == "crashed" and r["drone"] == 2 for r in rows)
    # the halves drift apart while cut off and are pulled back together after the heal
    distance: dict[float, list[float]] = defaultdict(list)
    for row in rows:
        distance[row["t"]].append(row["distance"])
    consensus = {t: float(np.mean(v)) for t, v in distance.items()}
    assert consensus[90.0] > 2 * consensus[150.0]
    assert summary["consensus_distance"] == pytest.approx(consensus[150.0], abs=1e-5)
    assert summary["connected_at_start"] is True
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["accuracy_by_group"] == summary["accuracy_by_group"]
    for name in ("groups.png", "down.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_a_disconnected_graph_at_start_is_warned_about(caplog):
    run = scenario(
        "quickstart",
        {
            "swarm.drones": 6,
            "run.duration_s": 5.0,
            "topology.kind": "random_geometric",
            "topology.range_m": 1.0,  # nobody hears anybody
        },
    )
    with caplog.at_level(logging.WARNING, logger="swarmfl.sim.runner"):
        summary = run_scenario(run, None)
    assert summary["connected_at_start"] is False
    assert summary["components_at_start"] == 6
    assert "disconnected at start: 6 components" in caplog.text
