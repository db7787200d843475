"""Scenario files: TOML validated into frozen pydantic models.

Every key is declared here with its type, range and default; an unknown key, a wrong type or an
out-of-range value becomes a :class:`~swarmfl.errors.ConfigError` whose one line names the file,
the dotted key and the problem. ``--set key.path=value`` overrides are applied before validation.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from swarmfl.errors import ConfigError

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
    """The shared model architecture."""

    kind: Literal["mlp", "cnn"] = "mlp"
    hidden: list[PositiveInt] = [128]
    channels: list[PositiveInt] = [16, 32]


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


class SwarmSection(Section):
    """The drones: how many, how fast they compute, which swarm they form."""

    drones: PositiveInt = 16
    flops_per_s: PositiveFloat = 1e9  # effective training FLOP/s of the companion computer
    swarm_id: Annotated[int, Field(ge=0, lt=2**32)] = 1
    secret: str = "swarmfl-simulation"  # the swarm key is derived from it


class TopologySection(Section):
    """Who hears whom (a static graph built with networkx)."""

    kind: Literal["ring", "grid", "complete", "random_regular", "random_geometric", "edges"] = (
        "ring"
    )
    degree: PositiveInt = 4  # random_regular
    range_m: PositiveFloat = 120.0  # random_geometric
    area_m: PositiveFloat = 400.0  # random_geometric: side of the square
    edges: list[tuple[int, int]] = []  # edges: explicit undirected edge list


class RadioSection(Section):
    """The simulated link: one rate, latency and frame loss for every link."""

    rate_bps: PositiveFloat = 1_000_000.0
    latency_s: NonNegativeFloat = 0.005
    loss: Probability = 0.0  # probability a frame is lost on a link


class ChurnSection(Section):
    """Drones alternate up and down with exponential durations."""

    enabled: bool = False
    mean_up_s: PositiveFloat = 60.0
    mean_down_s: PositiveFloat = 15.0


class Removal(Section):
    """A drone that leaves the swarm for good at ``at_s``."""

    drone: Annotated[int, Field(ge=0)]
    at_s: NonNegativeFloat


class FaultsSection(Section):
    """Scheduled faults."""

    removals: list[Removal] = []


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
    churn: ChurnSection = ChurnSection()
    faults: FaultsSection = FaultsSection()

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
                body = "".join(f"{k} = {_toml_value(v)}\n" for k, v in item.items())
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
