"""The simulated world: where the drones are, and who hears whom over what kind of link.

A :class:`World` answers, for any virtual time, which drones are in range of a sender and how
lossy each link is. Its links come from one of two sources:

* :class:`GraphLinks`, a fixed networkx graph (the ``[topology]`` kinds ring, grid, complete,
  random_regular, random_geometric, edges): the same links at all times, with one per-datagram
  loss and one per-frame loss (``radio.loss``) on every link. Its positions are a drawing
  layout, not metres.
* :class:`PositionLinks` (``topology.kind = "positions"``): drones move by a mobility model
  (:mod:`swarmfl.sim.mobility`, positions in metres) and two drones hear each other when they
  are within ``range_m``, with a per-datagram loss from the log-distance path-loss model
  (:class:`~swarmfl.sim.pathloss.LinkModel`). The link graph is recomputed every ``tick_s``
  from the positions at the start of the tick (a k-d tree: milliseconds for 1,000 drones).

Both apply scheduled partitions (a link exists only between drones of the same group while a
partition is in force) and removals. Neighbour tables are rebuilt lazily, when a query falls in
a new tick or partition window; the world is a pure function of time, so who asks first changes
nothing. Neighbour tuples are sorted, so iteration order (and so every random draw of the medium)
is the same on every run.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import networkx as nx
import numpy as np

from swarmfl.config.scenario_file import MobilitySection, RadioSection, Scenario, TopologySection
from swarmfl.errors import ConfigError
from swarmfl.sim.medium import LinkParams
from swarmfl.sim.mobility import Formation, RandomWaypoint, Scripted, Static
from swarmfl.sim.pathloss import LinkModel, links_from_positions

__all__ = [
    "GraphLinks",
    "LinkSource",
    "MobilityModel",
    "PartitionWindow",
    "PositionLinks",
    "World",
    "build_mobility",
    "build_topology",
    "build_world",
    "link_model",
    "partition_windows",
]


class MobilityModel(Protocol):
    """Anything with ``positions(t) -> (n, 3)`` metres (see :mod:`swarmfl.sim.mobility`)."""

    def positions(self, t: float) -> np.ndarray: ...


@dataclass(frozen=True, slots=True)
class PartitionWindow:
    """Links are cut between groups from ``start_s`` until ``end_s`` (the heal).

    ``group_of[i]`` is drone ``i``'s group; only drones of the same group hear each other.
    """

    start_s: float
    end_s: float
    group_of: tuple[int, ...]

    def active(self, t: float) -> bool:
        """Whether the partition is in force at ``t``."""
        return self.start_s <= t < self.end_s


def build_topology(
    topology: TopologySection, drones: int, seed: int
) -> tuple[nx.Graph, dict[int, tuple[float, float]] | None]:
    """An undirected graph on ``range(drones)`` as the topology section describes.

    Also returns the node positions the graph was built from (random_geometric), else None.
    Raises :class:`ConfigError` if the graph cannot be built (e.g. kind 'positions', which has
    no fixed graph).
    """
    kind = topology.kind
    pos = None
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
    else:
        raise ConfigError(f"topology {kind!r} has no fixed graph", key="topology.kind")
    return graph, pos


class LinkSource(Protocol):
    """Where a world's links come from, before partitions and removals."""

    @property
    def n(self) -> int:
        """Number of drones."""
        ...

    @property
    def metric(self) -> bool:
        """True when :meth:`positions` are metres, False for a drawing layout."""
        ...

    def links(self, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(src, dst, loss)`` of every directed link at ``t``, sorted by src then dst."""
        ...

    def window(self, t: float) -> tuple[float, float]:
        """The interval ``[start, end)`` around ``t`` over which :meth:`links` does not change."""
        ...

    def positions(self, t: float) -> np.ndarray:
        """Every drone's position at ``t``, shape ``(n, 3)``."""
        ...


class GraphLinks:
    """A fixed graph: the same links at all times, one per-datagram loss on every link.

    ``layout`` gives drawing positions (else one is computed when first asked for).
    """

    metric = False

    def __init__(
        self,
        graph: nx.Graph,
        *,
        datagram_loss: float = 0.0,
        layout: dict[int, tuple[float, float]] | None = None,
        seed: int = 0,
    ) -> None:
        self.graph = graph
        self.n = graph.number_of_nodes()
        pairs = np.array(sorted(graph.edges()), dtype=np.int64).reshape(-1, 2)
        src = np.concatenate([pairs[:, 0], pairs[:, 1]])
        dst = np.concatenate([pairs[:, 1], pairs[:, 0]])
        order = np.lexsort((dst, src))
        self._src, self._dst = src[order], dst[order]
        self._loss = np.full(len(self._src), float(datagram_loss))
        self._layout = layout
        self._seed = seed
        self._layout_array: np.ndarray | None = None

    def links(self, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every directed edge of the graph, with the one datagram loss."""
        return self._src, self._dst, self._loss

    def window(self, t: float) -> tuple[float, float]:
        """All time: the graph never changes."""
        return -math.inf, math.inf

    def positions(self, t: float) -> np.ndarray:
        """A drawing layout of the graph (not metres), the same at all times."""
        if self._layout_array is None:
            layout = self._layout
            if layout is None:
                # A force layout shows structure but costs O(n^2) per iteration: small graphs only.
                if self.n <= 200:
                    layout = nx.spring_layout(self.graph, seed=self._seed)
                else:
                    layout = nx.circular_layout(self.graph)
            array = np.zeros((self.n, 3))
            for node, xy in layout.items():
                array[node, :2] = xy[:2]
            self._layout_array = array
        return self._layout_array.copy()


class PositionLinks:
    """Drones that move; links from distance through a log-distance path-loss model.

    Links are recomputed every ``tick_s`` from the positions at the tick's start.
    Raises :class:`ConfigError` for a ``tick_s`` that is not positive and finite.
    """

    metric = True

    def __init__(
        self, mobility: MobilityModel, n: int, link_model: LinkModel, *, tick_s: float
    ) -> None:
        if not (math.isfinite(tick_s) and tick_s > 0):
            raise ConfigError(f"must be > 0, got {tick_s!r}", key="mobility.tick_s")
        self.mobility = mobility
        self.n = n
        self.link_model = link_model
        self.tick_s = float(tick_s)

    def _tick_start(self, t: float) -> float:
        return math.floor(max(t, 0.0) / self.tick_s) * self.tick_s

    def links(self, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Links in range at the start of ``t``'s tick, with their per-datagram loss."""
        src, dst, _, loss = links_from_positions(
            self.mobility.positions(self._tick_start(t)), self.link_model
        )
        return src, dst, loss

    def window(self, t: float) -> tuple[float, float]:
        """The tick holding ``t``."""
        start = self._tick_start(t)
        return (start if t >= 0 else -math.inf), start + self.tick_s

    def positions(self, t: float) -> np.ndarray:
        """Every drone's position at ``t`` in metres, shape ``(n, 3)``."""
        return self.mobility.positions(t)


class World:
    """Links between drones as a function of virtual time (see the module docstring).

    ``source`` gives the links before partitions and removals (:class:`GraphLinks` or
    :class:`PositionLinks`); ``frame_loss`` is a per-frame loss on every link on top of the
    per-datagram loss, ``latency_s`` every link's one-way latency.
    """

    def __init__(
        self,
        source: LinkSource,
        *,
        latency_s: float,
        frame_loss: float = 0.0,
        partitions: Sequence[PartitionWindow] = (),
    ) -> None:
        self.source = source
        self.n = source.n
        self._latency_s = float(latency_s)
        self._frame_loss = float(frame_loss)
        self.partitions = tuple(partitions)
        self._removed = np.zeros(self.n, dtype=bool)
        self._valid_from = math.inf
        self._valid_until = -math.inf
        self._table: list[tuple[tuple[int, ...], tuple[float, ...]]] = []
        self.rebuilds = 0

    @property
    def latency_s(self) -> float:
        """One-way latency of every link, in seconds."""
        return self._latency_s

    @property
    def frame_loss(self) -> float:
        """Per-frame loss on every link, on top of the per-datagram loss."""
        return self._frame_loss

    @property
    def metric(self) -> bool:
        """True when :meth:`positions` are metres, False for a drawing layout."""
        return self.source.metric

    def positions(self, t: float) -> np.ndarray:
        """Every drone's position at ``t``, shape ``(n, 3)``."""
        return self.source.positions(t)

    def links(self, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(src, dst, loss)`` of every directed link in force at ``t`` (partitions, removals)."""
        src, dst, loss = self.source.links(t)
        keep = None
        for partition in self.partitions:
            if partition.active(t):
                group = np.asarray(partition.group_of)
                same = group[src] == group[dst]
                keep = same if keep is None else keep & same
        if self._removed.any():
            alive = ~(self._removed[src] | self._removed[dst])
            keep = alive if keep is None else keep & alive
        if keep is not None:
            src, dst, loss = src[keep], dst[keep], loss[keep]
        return src, dst, loss

    def _window(self, t: float) -> tuple[float, float]:
        start, end = self.source.window(t)
        for partition in self.partitions:
            for edge in (partition.start_s, partition.end_s):
                if edge <= t:
                    start = max(start, edge)
                else:
                    end = min(end, edge)
        return start, end

    def _rebuild(self, t: float) -> None:
        src, dst, loss = self.links(t)
        self._valid_from, self._valid_until = self._window(t)
        counts = np.bincount(src, minlength=self.n)
        ends = np.cumsum(counts).tolist()
        starts = [0, *ends[:-1]]
        receivers = dst.tolist()
        losses = loss.tolist()
        self._table = [
            (tuple(receivers[a:b]), tuple(losses[a:b])) for a, b in zip(starts, ends, strict=True)
        ]
        self.rebuilds += 1

    def out_links(self, sender: int, now: float) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """Drones in range of ``sender`` at ``now`` and each link's per-datagram loss."""
        if not self._valid_from <= now < self._valid_until:
            self._rebuild(now)
        return self._table[sender]

    def neighbours(self, drone: int, now: float = 0.0) -> tuple[int, ...]:
        """Drones that hear ``drone``'s transmissions at ``now``."""
        return self.out_links(drone, now)[0]

    def link(self, sender: int, receiver: int, now: float = 0.0) -> LinkParams | None:
        """The link from ``sender`` to ``receiver`` at ``now``, or None if out of range.

        Its ``rate_bps`` is NaN: the rate is the sending radio's, not the world's.
        """
        receivers, losses = self.out_links(sender, now)
        try:
            index = receivers.index(receiver)
        except ValueError:
            return None
        return LinkParams(losses[index], self._latency_s, math.nan)

    def edges(self, t: float) -> np.ndarray:
        """Undirected links in force at ``t`` as an ``(m, 2)`` int array with ``i < j``."""
        src, dst, _ = self.links(t)
        pairs = np.stack([src, dst], axis=1)
        return pairs[src < dst]

    def graph(self, t: float) -> nx.Graph:
        """The link graph at ``t`` as networkx, with each edge's per-datagram ``loss``."""
        src, dst, loss = self.links(t)
        graph = nx.Graph()
        graph.add_nodes_from(range(self.n))
        once = src < dst
        graph.add_weighted_edges_from(
            zip(src[once].tolist(), dst[once].tolist(), loss[once].tolist(), strict=True),
            weight="loss",
        )
        return graph

    def remove(self, drone: int) -> None:
        """Take ``drone`` out of the world for good (nobody hears it, it hears nobody)."""
        self._removed[drone] = True
        self._valid_until = -math.inf  # rebuild on the next query


def build_mobility(mobility: MobilitySection, n: int, seed: int) -> MobilityModel:
    """The mobility model the ``[mobility]`` section describes, for ``n`` drones.

    Raises :class:`ConfigError` naming the key for bad values or an unreadable CSV file.
    """
    low, high = (tuple(float(v) for v in corner) for corner in mobility.bounds)
    rng = np.random.default_rng([seed, 0x0B11])
    try:
        if mobility.kind == "static":
            if mobility.placement == "grid":
                positions = _grid_positions(n, mobility.spacing_m, low)
            else:
                positions = rng.uniform(low, high, size=(n, 3))
            return Static(positions)
        if mobility.kind == "random_waypoint":
            return RandomWaypoint(
                n,
                (low, high),  # type: ignore[arg-type]
                mobility.min_speed_mps,
                mobility.max_speed_mps,
                mobility.min_pause_s,
                mobility.max_pause_s,
                seed=rng,
            )
        if mobility.kind == "formation":
            return Formation(
                n,
                [tuple(p) for p in mobility.waypoints],  # type: ignore[misc]
                mobility.speed_mps,
                mobility.spacing_m,
                mobility.shape,
                mobility.loop,
            )
        assert mobility.csv is not None  # the schema requires it for 'scripted'
        return Scripted.from_csv(Path(mobility.csv), n)
    except ConfigError as exc:
        if exc.source is not None:
            raise
        raise ConfigError(exc.problem, key=f"mobility.{exc.key}" if exc.key else None) from None


def _grid_positions(n: int, spacing_m: float, origin: tuple[float, ...]) -> np.ndarray:
    columns = math.ceil(math.sqrt(n))
    index = np.arange(n)
    positions = np.zeros((n, 3))
    positions[:, 0] = origin[0] + (index % columns) * spacing_m
    positions[:, 1] = origin[1] + (index // columns) * spacing_m
    positions[:, 2] = origin[2]
    return positions


def link_model(radio: RadioSection) -> LinkModel:
    """The path-loss link model of the ``[radio]`` section. Raises :class:`ConfigError`.

    The reference distance defaults to a third of the range: the loss curve then runs from
    ``reference_loss`` there to ``edge_loss`` at the range, about as steep as a real radio's
    packet-error curve over its last 10 dB of margin.
    """
    return LinkModel(
        range_m=radio.range_m,
        exponent=radio.path_loss_exponent,
        reference_loss=radio.reference_loss,
        reference_distance_m=radio.reference_distance_m or radio.range_m / 3,
        edge_loss=radio.edge_loss,
        rate_bps=radio.rate_bps,
        latency_s=radio.latency_s,
        speed_of_light_latency=False,  # microseconds; one arrival time per transmission instead
    )


def partition_windows(scenario: Scenario) -> list[PartitionWindow]:
    """The scheduled partitions of ``[[faults.partitions]]`` as group assignments."""
    n = scenario.swarm.drones
    windows = []
    for partition in scenario.faults.partitions:
        if partition.groups == "halves":
            group_of = tuple(0 if i < n // 2 else 1 for i in range(n))
        else:
            # Drones listed in no group form one more group of their own.
            assignment = [len(partition.groups)] * n
            for index, members in enumerate(partition.groups):
                for drone in members:
                    assignment[drone] = index
            group_of = tuple(assignment)
        windows.append(PartitionWindow(partition.start_s, partition.end_s, group_of))
    return windows


def build_world(scenario: Scenario) -> World:
    """The world of ``scenario``: a fixed graph, or positions and a link model.

    Raises :class:`ConfigError` for a topology or mobility model that cannot be built.
    """
    n, seed = scenario.swarm.drones, scenario.run.seed
    radio = scenario.radio
    partitions = partition_windows(scenario)
    source: LinkSource
    if scenario.topology.kind == "positions":
        source = PositionLinks(
            build_mobility(scenario.mobility, n, seed),
            n,
            link_model(radio),
            tick_s=scenario.mobility.tick_s,
        )
    else:
        graph, layout = build_topology(scenario.topology, n, seed)
        source = GraphLinks(graph, datagram_loss=radio.datagram_loss, layout=layout, seed=seed)
    return World(source, latency_s=radio.latency_s, frame_loss=radio.loss, partitions=partitions)
