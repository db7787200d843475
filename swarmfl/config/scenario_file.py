"""Scenario files (``swarmfl sim``): TOML validated into a frozen :class:`Scenario`.

A scenario describes a whole simulated swarm. The sections a drone has in the field too
(``[run]`` seed and evaluation, ``[data]``, ``[model]``, ``[training]``, ``[gossip]``,
``[merge]``, ``[swarm]``, and the link part of ``[radio]``) are the shared ones of
:mod:`swarmfl.config.sections`; this module adds what only a simulation has: its length and
name, the number of drones and their device classes, the topology, the radio's physics
(latency, loss, path loss, airtime), mobility, batteries, churn and faults.

Every key is declared with its type, range and default; an unknown key, a wrong type or an
out-of-range value becomes a :class:`~swarmfl.errors.ConfigError` whose one line names the file,
the dotted key and the problem. ``--set key.path=value`` overrides are applied before validation;
relative paths written in the file are taken from the file's folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import ConfigDict, Field, model_validator

from swarmfl.config.loader import (
    KeyedValueError,
    apply_overrides,
    read_toml,
    resolve_paths,
    validate,
)
from swarmfl.config.sections import (
    ByteSize,
    DataSection,
    GossipSection,
    LinkSection,
    MergeSection,
    ModelSection,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    Probability,
    RunSection,
    Section,
    SwarmSection,
    TrainingSection,
)

__all__ = [
    "ATTACK_KIND_NAMES",
    "MAX_DRONES",
    "SIM_MTU_BYTES",
    "AttackSection",
    "DeviceClass",
    "GroundStationSection",
    "LearningSection",
    "RadioSection",
    "Scenario",
    "ScenarioRunSection",
    "ScenarioSwarmSection",
    "Strategy",
    "load_scenario",
    "scenario_to_toml",
    "toml_value",
    "validate_scenario",
]

MAX_DRONES = 100_000
"""The largest swarm a scenario may declare."""

SIM_MTU_BYTES = 1472
"""The simulated radio's datagram when ``radio.mtu_bytes`` is unset (as UDP's)."""

_MAX_EVALUATIONS = 1_000_000  # evaluation instants in one run
_MAX_PERIODS = 10_000_000  # gossip periods in one run


class ScenarioRunSection(RunSection):
    """The run: its name and virtual length, plus the shared seed and evaluation settings."""

    name: Annotated[str, Field(min_length=1, max_length=200)] = "scenario"
    duration_s: Annotated[float, Field(gt=0, le=1e8, allow_inf_nan=False)] = 120.0


class DeviceClass(Section):
    """A kind of drone in a heterogeneous fleet, and how many of them fly.

    Every drone plans for itself what it trains within ``budget_bytes`` (default: the training
    section's); without any budget it trains the whole model. ``backend`` is its learner
    (default: ``training.backend``), so one fleet can mix torch and lean drones. Unset compute
    and radio figures are the swarm's and the radio section's.
    """

    name: Annotated[str, Field(min_length=1, max_length=64)]
    count: PositiveInt
    backend: Literal["torch", "lean"] | None = None  # default: training.backend
    budget_bytes: ByteSize | None = None  # default: training.budget_bytes
    flops_per_s: Annotated[float, Field(gt=0, le=1e18)] | None = None  # default: swarm's
    rate_bps: Annotated[float, Field(gt=0, le=1e12)] | None = None  # default: radio.rate_bps
    neighbour_replicas: Annotated[int, Field(ge=0, le=4096)] | None = None  # default: training's


class ScenarioSwarmSection(SwarmSection):
    """The drones: how many, how fast they compute, their swarm id and secret.

    The secret is written in the scenario (a simulation has nothing to protect); the swarm key
    is derived from it.
    """

    drones: Annotated[int, Field(gt=0, le=MAX_DRONES)] = 16
    flops_per_s: Annotated[float, Field(gt=0, le=1e18)] = 1e9  # effective training FLOP/s
    secret: Annotated[str, Field(min_length=16, max_length=4096)] = "swarmfl-simulation"
    # heterogeneous fleet ([[swarm.devices]]); empty: every drone is of one class
    devices: list[DeviceClass] = Field(default_factory=list)

    @model_validator(mode="after")
    def _device_counts(self) -> ScenarioSwarmSection:
        if not self.devices:
            return self
        names = [device.name for device in self.devices]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise KeyedValueError(
                    ("swarm", "devices", index, "name"), f"device class {name!r} appears twice"
                )
        total = sum(device.count for device in self.devices)
        if total != self.drones:
            raise KeyedValueError(
                ("swarm", "devices"),
                f"device counts sum to {total} but swarm.drones is {self.drones}",
            )
        return self


class RadioSection(LinkSection):
    """Each drone's radio: the shared link settings plus the simulated physics.

    ``loss`` and ``datagram_loss`` apply on every link (a static topology's whole loss model);
    with ``topology.kind = "positions"`` each link also loses datagrams by distance (log-distance
    path loss: ``reference_loss`` at ``reference_distance_m``, default a third of the range,
    ``edge_loss`` at ``range_m``, no link beyond).
    """

    latency_s: Annotated[float, Field(ge=0, le=60, allow_inf_nan=False)] = 0.005
    loss: Probability = 0.0  # probability a frame is lost on a link
    datagram_loss: Probability = 0.0  # probability each datagram is lost on a link
    airtime: bool = False  # shared medium: a transmission silences the sender's neighbours
    fragments: Literal["sampled", "exact"] = "sampled"  # simulate datagrams, or price frames
    range_m: PositiveFloat = 300.0  # positions: no link beyond
    path_loss_exponent: PositiveFloat = 2.2  # positions: 2.0-2.6 for UAVs in open field
    reference_loss: Annotated[float, Field(gt=0, lt=1)] = 0.02  # positions: datagram loss at d0
    reference_distance_m: PositiveFloat | None = None  # positions: d0 (default: range_m / 3)
    edge_loss: Annotated[float, Field(gt=0, lt=1)] = 0.5  # positions: datagram loss at range_m

    @model_validator(mode="after")
    def _link_model(self) -> RadioSection:
        mtu = self.mtu_bytes if self.mtu_bytes is not None else SIM_MTU_BYTES
        if self.burst_bytes is not None and self.burst_bytes < mtu:
            raise KeyedValueError(("radio", "burst_bytes"), f"must be at least mtu_bytes ({mtu})")
        if self.reference_distance_m is not None and self.reference_distance_m >= self.range_m:
            raise KeyedValueError(
                ("radio", "reference_distance_m"), f"must be below range_m ({self.range_m})"
            )
        if self.edge_loss <= self.reference_loss:
            raise KeyedValueError(
                ("radio", "edge_loss"), f"must be above reference_loss ({self.reference_loss})"
            )
        return self


class TopologySection(Section):
    """Who hears whom: a static graph built with networkx, or ``positions`` (see [mobility])."""

    kind: Literal[
        "ring", "grid", "complete", "random_regular", "random_geometric", "edges", "positions"
    ] = "ring"
    degree: PositiveInt = 4  # random_regular
    range_m: PositiveFloat = 120.0  # random_geometric
    area_m: PositiveFloat = 400.0  # random_geometric: side of the square
    edges: list[tuple[int, int]] = Field(default_factory=list)  # explicit undirected edges


Point3 = tuple[
    Annotated[float, Field(allow_inf_nan=False)],
    Annotated[float, Field(allow_inf_nan=False)],
    Annotated[float, Field(allow_inf_nan=False)],
]


class MobilitySection(Section):
    """How the drones move (``topology.kind = "positions"``); metres, seconds (swarmfl.sim)."""

    kind: Literal["static", "random_waypoint", "formation", "scripted"] = "static"
    tick_s: PositiveFloat = 1.0  # links are recomputed from positions this often
    bounds: tuple[Point3, Point3] = ((0.0, 0.0, 50.0), (1000.0, 1000.0, 50.0))  # min, max corner
    placement: Literal["random", "grid"] = "random"  # static: uniform in bounds, or a grid
    spacing_m: PositiveFloat = 50.0  # static grid and formation spacing
    min_speed_mps: PositiveFloat = 2.0  # random_waypoint (as ns-3's RandomWaypoint)
    max_speed_mps: PositiveFloat = 10.0
    min_pause_s: NonNegativeFloat = 0.0
    max_pause_s: NonNegativeFloat = 10.0
    waypoints: list[Point3] = Field(  # formation leader's path
        default_factory=lambda: [(0.0, 0.0, 50.0), (1000.0, 0.0, 50.0)]
    )
    speed_mps: PositiveFloat = 8.0  # formation leader's speed
    shape: Literal["line", "grid", "v"] = "v"  # formation shape
    loop: bool = True  # formation: fly the path round and round
    csv: str | None = None  # scripted: a CSV file with the columns time,drone,x,y,z

    @model_validator(mode="after")
    def _ranges(self) -> MobilitySection:
        low, high = self.bounds
        if any(a > b for a, b in zip(low, high, strict=True)):
            raise KeyedValueError(("mobility", "bounds"), "min corner above max corner")
        if self.min_speed_mps > self.max_speed_mps:
            raise KeyedValueError(("mobility", "min_speed_mps"), "must be <= max_speed_mps")
        if self.min_pause_s > self.max_pause_s:
            raise KeyedValueError(("mobility", "min_pause_s"), "must be <= max_pause_s")
        if self.kind == "formation" and not self.waypoints:
            raise KeyedValueError(("mobility", "waypoints"), "a formation needs waypoints")
        if self.kind == "scripted" and not self.csv:
            raise KeyedValueError(("mobility", "csv"), "mobility 'scripted' needs a csv file")
        return self


class BatterySection(Section):
    """Energy: flight, training and radio drain; land at a threshold, recharge, fly again."""

    enabled: bool = False
    capacity_j: PositiveFloat = 250_000.0  # usable energy (a 4S 5 Ah pack is about 266 kJ)
    flight_w: NonNegativeFloat = 200.0  # average power to stay airborne
    train_j_per_gflop: NonNegativeFloat = 0.1  # companion computer's energy per GFLOP trained
    radio_j_per_byte: NonNegativeFloat = 1e-5  # energy per byte sent (headers included)
    land_threshold: Annotated[float, Field(ge=0, lt=1)] = 0.2  # fraction of capacity
    return_level: Annotated[float, Field(gt=0, le=1)] = 1.0  # charge at take-off after landing
    recharge_s: NonNegativeFloat = 600.0  # time on the ground
    initial_min: Annotated[float, Field(gt=0, le=1)] = 0.5  # initial charge: uniform in [.., 1]

    @model_validator(mode="after")
    def _levels(self) -> BatterySection:
        if self.return_level <= self.land_threshold:
            raise KeyedValueError(("battery", "return_level"), "must be above land_threshold")
        if self.initial_min <= self.land_threshold:
            raise KeyedValueError(("battery", "initial_min"), "must be above land_threshold")
        return self


class ChurnSection(Section):
    """Drones alternate up and down with exponential durations."""

    enabled: bool = False
    mean_up_s: PositiveFloat = 60.0
    mean_down_s: PositiveFloat = 15.0


Strategy = Literal["gossip", "dpsgd", "fedavg", "local"]
"""How drones learn together (``[learning] strategy``)."""


class LearningSection(Section):
    """How drones learn together; every strategy flies the same world, radio, codec and drones.

    * ``gossip`` -- asynchronous gossip learning (each drone on its own clock, no barrier).
    * ``dpsgd`` -- synchronous decentralised SGD: each round a drone trains, broadcasts, then
      waits until every neighbour in range has sent its model of this round (or
      ``round_timeout_periods`` gossip periods have passed) and averages them uniformly.
    * ``fedavg`` -- federated averaging through a ground station (``[ground_station]``): the
      station broadcasts the global model, drones that hear it adopt it, train a round and send
      their model back; the station averages what it heard (weighted by sample count) until
      every drone in its range replied or the timeout. A drone that does not hear the station
      keeps training its own model.
    * ``local`` -- local training only: no frames are sent, no models merged.
    """

    strategy: Strategy = "gossip"
    round_timeout_periods: Annotated[float, Field(gt=0, le=1000)] = 2.0


class GroundStationSection(Section):
    """The FedAvg server: a node with its own position and radio (the ``[radio]`` settings).

    Range, path loss, frame loss and churn apply to it as to a drone. With a fixed topology
    (``topology.kind`` other than ``positions``) it is linked to every drone.
    """

    position: tuple[float, float, float] = (0.0, 0.0, 0.0)


class Removal(Section):
    """A drone that leaves the swarm for good at ``at_s``."""

    drone: Annotated[int, Field(ge=0)]
    at_s: NonNegativeFloat


class Partition(Section):
    """Links between groups are cut from ``start_s`` until ``end_s`` (the heal).

    ``groups``: lists of drone ids (drones in no list form one more group), or ``"halves"``
    (drones ``0 .. n/2 - 1`` and the rest).
    """

    start_s: NonNegativeFloat
    end_s: PositiveFloat
    groups: list[list[Annotated[int, Field(ge=0)]]] | Literal["halves"] = "halves"

    @model_validator(mode="after")
    def _order(self) -> Partition:
        if self.end_s <= self.start_s:
            raise ValueError(f"end_s ({self.end_s}) must be after start_s ({self.start_s})")
        return self


class Crash(Section):
    """Drone ``drone`` crashes at ``at_s`` (losing its RAM) and reboots ``down_s`` later."""

    drone: Annotated[int, Field(ge=0)]
    at_s: NonNegativeFloat
    down_s: NonNegativeFloat = 30.0


class FaultsSection(Section):
    """Scheduled faults, random crashes and checkpoints."""

    removals: list[Removal] = Field(default_factory=list)
    partitions: list[Partition] = Field(default_factory=list)
    crashes: list[Crash] = Field(default_factory=list)
    crash_mean_interval_s: PositiveFloat | None = None  # random crashes: exponential gaps
    crash_down_s: NonNegativeFloat = 30.0  # reboot time after a random crash
    # each drone checkpoints (in memory) this often; 0: never, a crashed drone rejoins with the
    # swarm's initial model
    checkpoint_interval_s: NonNegativeFloat = 0.0


AttackKindName = Literal[
    "sign_flip", "scaling", "gaussian", "alie", "ipm", "dissensus", "label_flip", "free_riding"
]
ATTACK_KIND_NAMES: tuple[str, ...] = get_args(AttackKindName)
"""The attack kinds of :mod:`swarmfl.sim.attacks` (a test keeps both lists equal)."""


class AttackSection(Section):
    """Insiders (``[[attack]]``): which drones attack, how, and from when.

    ``drones`` lists their ids, or ``fraction`` picks that share of the swarm (rounded, at least
    one), drawn with the run's seed from drones no other ``[[attack]]`` names. From ``start_s``
    on, they publish what ``kind`` makes of their model (or train on flipped labels); any other
    key is a parameter of the kind (e.g. ``factor = 1e6`` for ``scaling``), checked against
    :func:`swarmfl.sim.attacks.make_attack` when the swarm is built.
    """

    model_config = ConfigDict(extra="allow", frozen=True, strict=False)

    kind: AttackKindName
    drones: Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=MAX_DRONES)] | None = None
    fraction: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)] | None = None
    start_s: NonNegativeFloat = 0.0

    @model_validator(mode="after")
    def _who(self) -> AttackSection:
        if (self.drones is None) == (self.fraction is None):
            raise ValueError("give drones = [ids] or fraction = share, not both or neither")
        for name, value in (self.model_extra or {}).items():
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise ValueError(f"parameter {name!r} must be a number or a string")
        return self

    @property
    def parameters(self) -> dict[str, int | float | str]:
        """The kind's parameters: every key of the table that is not a section field."""
        return dict(self.model_extra or {})


class Scenario(Section):
    """A whole simulation scenario, as read from a TOML file."""

    run: ScenarioRunSection = ScenarioRunSection()
    data: DataSection = DataSection()
    model: ModelSection = ModelSection()
    training: TrainingSection = TrainingSection()
    gossip: GossipSection = GossipSection()
    merge: MergeSection = MergeSection()
    swarm: ScenarioSwarmSection = ScenarioSwarmSection()
    topology: TopologySection = TopologySection()
    radio: RadioSection = RadioSection()
    mobility: MobilitySection = MobilitySection()
    battery: BatterySection = BatterySection()
    churn: ChurnSection = ChurnSection()
    faults: FaultsSection = FaultsSection()
    attack: Annotated[list[AttackSection], Field(max_length=64)] = Field(default_factory=list)
    learning: LearningSection = LearningSection()
    ground_station: GroundStationSection = GroundStationSection()

    @model_validator(mode="after")
    def _world_checks(self) -> Scenario:
        n = self.swarm.drones
        if self.topology.kind != "positions" and self.mobility != MobilitySection():
            raise KeyedValueError(
                ("topology", "kind"),
                "a [mobility] model needs topology.kind = 'positions' (links from positions)",
            )
        for index, partition in enumerate(self.faults.partitions):
            if partition.groups == "halves":
                continue
            seen: set[int] = set()
            for group, members in enumerate(partition.groups):
                for drone in members:
                    if drone >= n or drone in seen:
                        problem = f"no drone {drone} in {n}" if drone >= n else "drone listed twice"
                        raise KeyedValueError(
                            ("faults", "partitions", index, "groups", group), problem
                        )
                    seen.add(drone)
        for index, crash in enumerate(self.faults.crashes):
            if crash.drone >= n:
                raise KeyedValueError(
                    ("faults", "crashes", index, "drone"), f"no drone {crash.drone} in {n}"
                )
        return self

    @model_validator(mode="after")
    def _run_length(self) -> Scenario:
        # A run that would take forever is refused before it starts (a typo such as
        # eval_interval_s = 1e-9 or duration_s = 1e12 would otherwise hang the simulator).
        duration = self.run.duration_s
        if duration / self.run.eval_interval_s > _MAX_EVALUATIONS:
            raise KeyedValueError(
                ("run", "eval_interval_s"),
                f"{duration / self.run.eval_interval_s:.3g} evaluations in {duration} s; "
                f"at most {_MAX_EVALUATIONS}",
            )
        if duration / self.gossip.period_s > _MAX_PERIODS:
            raise KeyedValueError(
                ("run", "duration_s"),
                f"{duration / self.gossip.period_s:.3g} gossip periods; at most {_MAX_PERIODS}",
            )
        if self.topology.kind == "positions" and duration / self.mobility.tick_s > _MAX_PERIODS:
            raise KeyedValueError(
                ("mobility", "tick_s"),
                f"{duration / self.mobility.tick_s:.3g} mobility ticks; at most {_MAX_PERIODS}",
            )
        return self

    @model_validator(mode="after")
    def _cross_checks(self) -> Scenario:
        n = self.swarm.drones
        for index, (a, b) in enumerate(self.topology.edges):
            if not (0 <= a < n and 0 <= b < n) or a == b:
                raise KeyedValueError(
                    ("topology", "edges", index), f"edge ({a}, {b}) is not between 2 of {n} drones"
                )
        for index, removal in enumerate(self.faults.removals):
            if removal.drone >= n:
                raise KeyedValueError(
                    ("faults", "removals", index, "drone"), f"no drone {removal.drone} in {n}"
                )
        named: set[int] = set()
        for index, attack in enumerate(self.attack):
            for drone in attack.drones or []:
                if drone >= n or drone in named:
                    problem = f"no drone {drone} in {n}" if drone >= n else "drone listed twice"
                    raise KeyedValueError(("attack", index, "drones"), problem)
                named.add(drone)
        if self.topology.kind == "random_regular" and (
            self.topology.degree >= n or (self.topology.degree * n) % 2
        ):
            raise KeyedValueError(
                ("topology", "degree"),
                f"a {self.topology.degree}-regular graph on {n} drones does not exist",
            )
        return self


def validate_scenario(raw: dict[str, Any], *, source: str) -> Scenario:
    """Validate a scenario dict; raises :class:`ConfigError` naming ``source`` and the key."""
    return validate(Scenario, raw, source=source)


SCENARIO_PATH_KEYS: list[tuple[str, ...]] = [
    ("data", "path"),
    ("data", "images"),
    ("data", "labels"),
    ("model", "checkpoint"),
    ("mobility", "csv"),
]
"""Keys holding paths: relative ones written in a scenario file are taken from its folder."""


def load_scenario(path: str | Path, overrides: list[str] | None = None) -> Scenario:
    """Read, override and validate a scenario file (its ``[sweep]`` table, if any, is ignored).

    Raises :class:`ConfigError` (one line: file, key, problem) for a missing, unreadable,
    oversized or non-UTF-8 file, invalid TOML, or any invalid key.
    """
    path = Path(path)
    raw = read_toml(path)
    raw.pop("sweep", None)  # a sweep's table (swarmfl.sim.sweep); one run ignores it
    # before the overrides: a path written in the file is relative to the file's folder, one
    # given with --set to the current directory
    resolve_paths(raw, SCENARIO_PATH_KEYS, path.parent)
    return validate_scenario(apply_overrides(raw, overrides or []), source=str(path))


def scenario_to_toml(scenario: Scenario) -> str:
    """The resolved scenario as TOML text (written into every run folder)."""
    return _dict_to_toml(scenario.model_dump(mode="json"))


def _dict_to_toml(data: dict[str, Any], prefix: str = "") -> str:
    scalars: list[str] = []
    tables: list[str] = []
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            tables.append(_dict_to_toml(value, name))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                body = "".join(f"{k} = {toml_value(v)}\n" for k, v in item.items() if v is not None)
                tables.append(f"[[{name}]]\n{body}")
        elif value is not None:
            scalars.append(f"{key} = {toml_value(value)}\n")
    head = f"[{prefix}]\n" if prefix and scalars else ""
    return head + "".join(scalars) + ("\n" if scalars else "") + "".join(tables)


def toml_value(value: Any, *, separator: str = ", ") -> str:
    """A bool, number, string or list of them as TOML text; list items joined by ``separator``.

    Strings are written as JSON writes them (their escapes are TOML's too), non-ASCII kept.
    Raises :class:`TypeError` for any other value.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + separator.join(toml_value(v, separator=separator) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")
