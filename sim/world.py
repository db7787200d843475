"""The simulated world: who hears whom, and over what kind of link.

The graph is built with networkx from the scenario's ``[topology]`` and ``[radio]`` sections.
Neighbour lists are kept as sorted tuples so iteration order (and so every random draw) is the
same on every run.
"""

from __future__ import annotations

import random

import networkx as nx

from swarmfl.config import RadioSection, TopologySection
from swarmfl.errors import ConfigError
from swarmfl.radio.simulated import LinkParams


def build_topology(topology: TopologySection, drones: int, seed: int) -> nx.Graph:
    """An undirected graph on ``range(drones)`` as the topology section describes.

    Raises :class:`ConfigError` if the graph cannot be built (e.g. a grid of a prime count).
    """
    kind = topology.kind
    if kind == "ring":
        graph = nx.cycle_graph(drones) if drones > 2 else nx.path_graph(drones)
    elif kind == "complete":
        graph = nx.complete_graph(drones)
    elif kind == "grid":
        rows = int(drones**0.5)
        while drones % rows:
            rows -= 1
        graph = nx.convert_node_labels_to_integers(nx.grid_2d_graph(rows, drones // rows))
    elif kind == "random_regular":
        graph = nx.random_regular_graph(topology.degree, drones, seed=seed)
    elif kind == "random_geometric":
        rng = random.Random(seed)
        pos = {
            i: (rng.uniform(0, topology.area_m), rng.uniform(0, topology.area_m))
            for i in range(drones)
        }
        graph = nx.random_geometric_graph(drones, topology.range_m, pos=pos)
    elif kind == "edges":
        graph = nx.Graph()
        graph.add_nodes_from(range(drones))
        graph.add_edges_from(topology.edges)
    else:  # pragma: no cover - the config schema admits only the kinds above
        raise ConfigError(f"unknown topology {kind!r}", key="topology.kind")
    return graph


class StaticWorld:
    """A fixed graph with one link model for every link."""

    def __init__(self, graph: nx.Graph, radio: RadioSection) -> None:
        self.graph = graph
        self._neighbours = {
            node: tuple(sorted(graph.neighbors(node))) for node in sorted(graph.nodes)
        }
        self._link = LinkParams(radio.loss, radio.latency_s, radio.rate_bps)

    def neighbours(self, drone: int) -> tuple[int, ...]:
        """Drones that hear ``drone``'s transmissions."""
        return self._neighbours[drone]

    def link(self, sender: int, receiver: int) -> LinkParams:
        """The link from ``sender`` to ``receiver``."""
        return self._link

    def remove(self, drone: int) -> None:
        """Take ``drone`` out of the world for good (nobody hears it, it hears nobody)."""
        self._neighbours = {
            node: tuple(n for n in neighbours if n != drone)
            for node, neighbours in self._neighbours.items()
        }
        self._neighbours[drone] = ()
