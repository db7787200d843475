"""Scenario files: TOML validated into frozen pydantic models.

Every key is declared here with its type, range and default; an unknown key, a wrong type or an
out-of-range value becomes a :class:`~swarmfl.errors.ConfigError` whose one line names the file,
the dotted key and the problem. ``--set key.path=value`` overrides are applied before validation.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from swarmfl.errors import ConfigError
from swarmfl.sizes import parse_bytes

PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Probability = Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]
PositiveInt = Annotated[int, Field(gt=0)]


class Section(BaseModel):
    """Base of every scenario section: frozen, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class RunSection(Section):
    """How long to simulate and how often to measure."""

    name: str = "scenario"
    seed: int = 0
    duration_s: PositiveFloat = 120.0
    eval_interval_s: PositiveFloat = 5.0
    eval_samples: PositiveInt | None = None  # evaluate on a fixed subset of the test set


class DataSection(Section):
    """Which data each drone holds and how it is split among drones."""

    dataset: Literal["digits", "mnist1d", "npz", "idx"] = "digits"
    path: str | None = None  # npz file or folder
    images: str | None = None  # idx images file
    labels: str | None = None  # idx labels file
    num_samples: PositiveInt | None = None  # mnist1d: samples to generate
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    partition: Literal["iid", "dirichlet"] = "dirichlet"
    alpha: PositiveFloat = 0.5  # Dirichlet concentration over labels

    @model_validator(mode="after")
    def _paths_for_files(self) -> DataSection:
        if self.dataset == "npz" and not self.path:
            raise ValueError("dataset 'npz' needs data.path")
        if self.dataset == "idx" and not (self.images and self.labels):
            raise ValueError("dataset 'idx' needs data.images and data.labels")
        return self


class ModelSection(Section):
    """The shared model architecture, and the weights it starts from."""

    kind: Literal["mlp", "cnn"] = "mlp"
    hidden: list[PositiveInt] = [128]
    channels: list[PositiveInt] = [16, 32]
    # pretrained start: a saved state dict / checkpoint (swarmfl.learning.pretrained); a relative
    # path in a scenario file is taken from the file's folder
    checkpoint: str | None = None


class TrainingSection(Section):
    """Local SGD on each drone."""

    lr: PositiveFloat = 0.05
    batch_size: PositiveInt = 16
    local_epochs: PositiveInt = 1
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.0
    weight_decay: NonNegativeFloat = 0.0


class GossipSection(Section):
    """How often and how compactly drones talk."""

    period_s: PositiveFloat = 1.0
    codec: Literal["fp32", "int8", "int4"] = "fp32"
    block_size: Annotated[int, Field(ge=64, le=256)] = 128
    keyframe_interval: PositiveInt = 10
    # int8/int4 deltas carry only this fraction of blocks (the strongest); the rest waits in the
    # error-feedback residual for a later frame
    delta_density: Annotated[float, Field(gt=0, le=1)] = 0.5


class MergeSection(Section):
    """Staleness-weighted merging: weight ``alpha * (1 + s) ** -exponent``, 0 past ``cutoff``."""

    alpha: NonNegativeFloat = 1.0
    exponent: NonNegativeFloat = 0.5
    cutoff: PositiveFloat = 10.0  # in gossip periods


def _byte_size(value: object) -> object:
    """``"64MiB"``-style strings and ints to bytes; anything else is left for the type check."""
    if isinstance(value, str | int) and not isinstance(value, bool):
        try:
            return parse_bytes(value)
        except ConfigError as exc:
            raise ValueError(exc.problem) from None
    return value


ByteSize = Annotated[int, BeforeValidator(_byte_size), Field(gt=0)]


class DeviceClass(Section):
    """A kind of drone in a heterogeneous fleet, and how many of them fly.

    Every drone plans for itself what it trains within ``budget_bytes`` (swarmfl.learning.memory);
    without a budget it trains the whole model. Unset compute and radio figures are the swarm's
    and the radio section's.
    """

    name: Annotated[str, Field(min_length=1)]
    count: PositiveInt
    budget_bytes: ByteSize | None = None  # training memory budget, e.g. "64MiB"
    flops_per_s: PositiveFloat | None = None  # default: swarm.flops_per_s
    rate_bps: PositiveFloat | None = None  # default: radio.rate_bps
    neighbour_replicas: Annotated[int, Field(ge=0)] = 4  # peers' replicas budgeted for


class SwarmSection(Section):
    """The drones: how many, how fast they compute, which swarm they form."""

    drones: PositiveInt = 16
    flops_per_s: PositiveFloat = 1e9  # effective training FLOP/s of the companion computer
    swarm_id: Annotated[int, Field(ge=0, lt=2**32)] = 1
    secret: str = "swarmfl-simulation"  # the swarm key is derived from it
    # heterogeneous fleet ([[swarm.devices]]); empty: every drone trains the whole model
    devices: list[DeviceClass] = []

    @model_validator(mode="after")
    def _device_counts(self) -> SwarmSection:
        if not self.devices:
            return self
        names = [device.name for device in self.devices]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise _KeyedValueError(
                    ("swarm", "devices", index, "name"), f"device class {name!r} appears twice"
                )
        total = sum(device.count for device in self.devices)
        if total != self.drones:
            raise _KeyedValueError(
                ("swarm", "devices"),
                f"device counts sum to {total} but swarm.drones is {self.drones}",
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
    edges: list[tuple[int, int]] = []  # edges: explicit undirected edge list


class RadioSection(Section):
    """Each drone's radio and the links between drones (swarmfl.radio.link, swarmfl.sim.world).

    ``loss`` and ``datagram_loss`` apply on every link (a static topology's whole loss model);
    with ``topology.kind = "positions"`` each link also loses datagrams by distance (log-distance
    path loss: ``reference_loss`` at ``reference_distance_m``, default a third of the range,
    ``edge_loss`` at ``range_m``, no link beyond).
    """

    rate_bps: PositiveFloat = 1_000_000.0  # bit rate: token bucket refill and air time
    latency_s: NonNegativeFloat = 0.005
    loss: Probability = 0.0  # probability a frame is lost on a link
    datagram_loss: Probability = 0.0  # probability each datagram is lost on a link
    mtu_bytes: Annotated[int, Field(ge=20)] = 1472  # datagram size, 19-byte header included
    burst_bytes: PositiveInt | None = None  # token bucket depth (default: one MTU)
    queue_frames: PositiveInt = 16  # send queue bounds
    queue_bytes: PositiveInt = 4 * 1024 * 1024
    airtime: bool = False  # shared medium: a transmission silences the sender's neighbours
    fragments: Literal["sampled", "exact"] = "sampled"  # simulate datagrams, or price frames
    range_m: PositiveFloat = 300.0  # positions: no link beyond
    path_loss_exponent: PositiveFloat = 2.2  # positions: 2.0-2.6 for UAVs in open field
    reference_loss: Annotated[float, Field(gt=0, lt=1)] = 0.02  # positions: datagram loss at d0
    reference_distance_m: PositiveFloat | None = None  # positions: d0 (default: range_m / 3)
    edge_loss: Annotated[float, Field(gt=0, lt=1)] = 0.5  # positions: datagram loss at range_m

    @model_validator(mode="after")
    def _link_model(self) -> RadioSection:
        if self.burst_bytes is not None and self.burst_bytes < self.mtu_bytes:
            raise _KeyedValueError(
                ("radio", "burst_bytes"), f"must be at least mtu_bytes ({self.mtu_bytes})"
            )
        if self.reference_distance_m is not None and self.reference_distance_m >= self.range_m:
            raise _KeyedValueError(
                ("radio", "reference_distance_m"), f"must be below range_m ({self.range_m})"
            )
        if self.edge_loss <= self.reference_loss:
            raise _KeyedValueError(
                ("radio", "edge_loss"), f"must be above reference_loss ({self.reference_loss})"
            )
        return self


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
    waypoints: list[Point3] = [(0.0, 0.0, 50.0), (1000.0, 0.0, 50.0)]  # formation leader's path
    speed_mps: PositiveFloat = 8.0  # formation leader's speed
    shape: Literal["line", "grid", "v"] = "v"  # formation shape
    loop: bool = True  # formation: fly the path round and round
    csv: str | None = None  # scripted: a CSV file with the columns time,drone,x,y,z

    @model_validator(mode="after")
    def _ranges(self) -> MobilitySection:
        low, high = self.bounds
        if any(a > b for a, b in zip(low, high, strict=True)):
            raise _KeyedValueError(("mobility", "bounds"), "min corner above max corner")
        if self.min_speed_mps > self.max_speed_mps:
            raise _KeyedValueError(("mobility", "min_speed_mps"), "must be <= max_speed_mps")
        if self.min_pause_s > self.max_pause_s:
            raise _KeyedValueError(("mobility", "min_pause_s"), "must be <= max_pause_s")
        if self.kind == "formation" and not self.waypoints:
            raise _KeyedValueError(("mobility", "waypoints"), "a formation needs waypoints")
        if self.kind == "scripted" and not self.csv:
            raise _KeyedValueError(("mobility", "csv"), "mobility 'scripted' needs a csv file")
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
            raise _KeyedValueError(("battery", "return_level"), "must be above land_threshold")
        if self.initial_min <= self.land_threshold:
            raise _KeyedValueError(("battery", "initial_min"), "must be above land_threshold")
        return self


class ChurnSection(Section):
    """Drones alternate up and down with exponential durations."""

    enabled: bool = False
    mean_up_s: PositiveFloat = 60.0
    mean_down_s: PositiveFloat = 15.0


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

    removals: list[Removal] = []
    partitions: list[Partition] = []
    crashes: list[Crash] = []
    crash_mean_interval_s: PositiveFloat | None = None  # random crashes: exponential gaps
    crash_down_s: NonNegativeFloat = 30.0  # reboot time after a random crash
    # each drone checkpoints (in memory) this often; 0: never, a crashed drone rejoins with the
    # swarm's initial model
    checkpoint_interval_s: NonNegativeFloat = 0.0


class Scenario(Section):
    """A whole simulation scenario, as read from a TOML file."""

    run: RunSection = RunSection()
    data: DataSection = DataSection()
    model: ModelSection = ModelSection()
    training: TrainingSection = TrainingSection()
    gossip: GossipSection = GossipSection()
    merge: MergeSection = MergeSection()
    swarm: SwarmSection = SwarmSection()
    topology: TopologySection = TopologySection()
    radio: RadioSection = RadioSection()
    mobility: MobilitySection = MobilitySection()
    battery: BatterySection = BatterySection()
    churn: ChurnSection = ChurnSection()
    faults: FaultsSection = FaultsSection()

    @model_validator(mode="after")
    def _world_checks(self) -> Scenario:
        n = self.swarm.drones
        if self.topology.kind != "positions" and self.mobility != MobilitySection():
            raise _KeyedValueError(
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
                        raise _KeyedValueError(
                            ("faults", "partitions", index, "groups", group), problem
                        )
                    seen.add(drone)
        for index, crash in enumerate(self.faults.crashes):
            if crash.drone >= n:
                raise _KeyedValueError(
                    ("faults", "crashes", index, "drone"), f"no drone {crash.drone} in {n}"
                )
        return self

    @model_validator(mode="after")
    def _cross_checks(self) -> Scenario:
        n = self.swarm.drones
        for index, (a, b) in enumerate(self.topology.edges):
            if not (0 <= a < n and 0 <= b < n) or a == b:
                raise _KeyedValueError(
                    ("topology", "edges", index), f"edge ({a}, {b}) is not between 2 of {n} drones"
                )
        for index, removal in enumerate(self.faults.removals):
            if removal.drone >= n:
                raise _KeyedValueError(
                    ("faults", "removals", index, "drone"), f"no drone {removal.drone} in {n}"
                )
        if self.topology.kind == "random_regular" and (
            self.topology.degree >= n or (self.topology.degree * n) % 2
        ):
            raise _KeyedValueError(
                ("topology", "degree"),
                f"a {self.topology.degree}-regular graph on {n} drones does not exist",
            )
        return self


class _KeyedValueError(ValueError):
    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``key.path=value``; the value is read as TOML, else taken as a string.

    Raises :class:`ConfigError` when there is no ``=`` or no key.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"expected key.path=value, got {text!r}", source="--set")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``key.path=value`` override applied."""
    result = _deep_copy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = result
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"'{part}' is not a table", source="--set", key=".".join(path))
            node = child
        node[path[-1]] = value
    return result


def _deep_copy(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in raw.items()}


def validate_scenario(raw: dict[str, Any], *, source: str) -> Scenario:
    """Validate a scenario dict; raises :class:`ConfigError` naming ``source`` and the key."""
    try:
        return Scenario.model_validate(raw)
    except ValidationError as exc:
        raise _config_error(exc, source) from None


def _config_error(exc: ValidationError, source: str) -> ConfigError:
    error = exc.errors()[0]
    loc = tuple(error.get("loc", ()))
    context = error.get("ctx") or {}
    inner = context.get("error")
    if isinstance(inner, _KeyedValueError):
        loc, problem = inner.loc, str(inner)
    elif error["type"] == "extra_forbidden":
        problem = "unknown key"
    elif error["type"] == "value_error" and inner is not None:
        problem = str(inner)
    else:
        value = error.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        problem = f"{error['msg'][0].lower()}{error['msg'][1:]}{shown}"
    key = ".".join(str(part) for part in loc) or None
    extra = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return ConfigError(problem + extra, source=source, key=key)


def load_scenario(path: str | Path, overrides: list[str] | None = None) -> Scenario:
    """Read, override and validate a scenario file.

    Raises :class:`ConfigError` (one line: file, key, problem) for a missing or unreadable file,
    invalid TOML, or any invalid key.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", source=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", source=str(path)) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", source=str(path)) from None
    # before the overrides: a path written in the file is relative to the file's folder, one
    # given with --set to the current directory
    _resolve_model_checkpoint(raw, path.parent)
    return validate_scenario(apply_overrides(raw, overrides or []), source=str(path))


def _resolve_model_checkpoint(raw: dict[str, Any], folder: Path) -> None:
    """Make a relative ``model.checkpoint`` absolute against ``folder`` (the scenario's)."""
    model = raw.get("model")
    if not isinstance(model, dict):
        return  # missing, or a wrong type that validation reports
    checkpoint = model.get("checkpoint")
    if isinstance(checkpoint, str) and checkpoint and not Path(checkpoint).is_absolute():
        model["checkpoint"] = str((folder / checkpoint).absolute())


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
                body = "".join(
                    f"{k} = {_toml_value(v)}\n" for k, v in item.items() if v is not None
                )
                tables.append(f"[[{name}]]\n{body}")
        elif value is not None:
            scalars.append(f"{key} = {_toml_value(value)}\n")
    head = f"[{prefix}]\n" if prefix and scalars else ""
    return head + "".join(scalars) + ("\n" if scalars else "") + "".join(tables)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")
