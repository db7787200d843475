"""The config sections both file formats share, with one set of names, defaults and bounds.

A scenario (``swarmfl sim``) and a ``drone.toml`` (``swarmfl agent``) describe the same drone:
what it learns from (``[data]``), what it trains (``[model]``, ``[training]``), how it gossips
and merges (``[gossip]``, ``[merge]``), its seed and evaluation (``[run]``), which swarm it
belongs to (``[swarm]``) and its radio's link (``[radio]``). Those sections are defined once,
here; each file format adds what only it has (see :mod:`swarmfl.config.scenario_file` and
:mod:`swarmfl.config.drone_file`).

Every number is bounded to what a run can do: a period of a microsecond, a billion local
epochs or a million-wide layer is a typo, and refusing it with one line beats a run that hangs
or eats the machine's memory.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from swarmfl.config.loader import KeyedValueError
from swarmfl.core.codecs import DEFAULT_CODEC, CodecName
from swarmfl.core.merge import MergeRule, MergeRuleName
from swarmfl.core.quant import MAX_BLOCK_SIZE, MIN_BLOCK_SIZE
from swarmfl.errors import ConfigError
from swarmfl.learning.seam import lr_schedule_problem
from swarmfl.radio.link import LinkConfig
from swarmfl.sizes import parse_bytes

__all__ = [
    "ByteSize",
    "DPSection",
    "DataSection",
    "GossipSection",
    "LinkSection",
    "MergeSection",
    "ModelSection",
    "NonNegativeFloat",
    "PositiveFloat",
    "PositiveInt",
    "Probability",
    "RunSection",
    "Section",
    "SwarmSection",
    "TrainingSection",
]

PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Probability = Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]
PositiveInt = Annotated[int, Field(gt=0)]
Seed = Annotated[int, Field(ge=0, lt=2**63)]
U32 = Annotated[int, Field(ge=0, lt=2**32)]

_LINK = LinkConfig()  # the link layer's defaults: one source for both file formats


class Section(BaseModel):
    """Base of every config section: frozen, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


def _byte_size(value: object) -> object:
    """``"64MiB"``-style strings and ints to bytes; anything else is left for the type check."""
    if isinstance(value, str | int) and not isinstance(value, bool):
        try:
            return parse_bytes(value)
        except ConfigError as exc:
            raise ValueError(exc.problem) from None
    return value


ByteSize = Annotated[int, BeforeValidator(_byte_size), Field(gt=0, le=1 << 40)]
"""A size in bytes, written as an int or as ``"64MiB"``; at most 1 TiB."""


class RunSection(Section):
    """The seed every drone of the swarm shares, and how each drone evaluates itself.

    ``seed`` fixes the data split and the initial weights (and, in the simulator, everything
    else that is random): drones of one swarm must use the same seed. Every
    ``eval_interval_s`` a drone measures its accuracy on the held-out set (or on a fixed subset
    of ``eval_samples`` of it).
    """

    seed: Seed = 0
    eval_interval_s: Annotated[float, Field(ge=1e-3, le=1e6, allow_inf_nan=False)] = 5.0
    eval_samples: Annotated[int, Field(gt=0, le=10_000_000)] | None = None


class DataSection(Section):
    """Which data the drones hold and how it is split among them.

    A dataset is split into shards, one per drone (``partition``, ``alpha``), with the run's
    seed: the same seed and number of shards give every drone the same shard, in the simulator
    and in the field. ``path``, ``images`` and ``labels`` are relative to the config file.
    """

    dataset: Literal["digits", "mnist1d", "npz", "idx"] = "digits"
    path: str | None = None  # npz file or folder
    images: str | None = None  # idx images file
    labels: str | None = None  # idx labels file
    num_samples: Annotated[int, Field(gt=0, le=10_000_000)] | None = None  # mnist1d: to generate
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    partition: Literal["iid", "dirichlet"] = "dirichlet"
    alpha: Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False)] = 0.5  # Dirichlet

    @model_validator(mode="after")
    def _paths_for_files(self) -> DataSection:
        if self.dataset == "npz" and not self.path:
            raise ValueError("dataset 'npz' needs data.path")
        if self.dataset == "idx" and not (self.images and self.labels):
            raise ValueError("dataset 'idx' needs data.images and data.labels")
        return self


Width = Annotated[int, Field(gt=0, le=1 << 16)]
#: The most weights a model section may describe (400 MB as float32): far above what a drone
#: trains, far below what hangs a machine allocating it.
MAX_MODEL_WEIGHTS = 100_000_000


class ModelSection(Section):
    """The shared model architecture, and the weights it starts from.

    ``checkpoint``: a pretrained start (a saved state dict or checkpoint, see
    :mod:`swarmfl.learning.pretrained`), relative to the config file.
    """

    kind: Literal["mlp", "cnn"] = "mlp"
    hidden: Annotated[list[Width], Field(max_length=32)] = [128]
    channels: Annotated[list[Annotated[int, Field(gt=0, le=4096)]], Field(max_length=16)] = [16, 32]
    checkpoint: str | None = None

    @model_validator(mode="after")
    def _bounded_size(self) -> ModelSection:
        # Each width is bounded, but two 65536-wide layers are 4.3 G weights (17 GB): refuse
        # what no drone can hold before anything is allocated. The input layer depends on the
        # data, and is checked when the model is built.
        weights = sum(a * b for a, b in pairwise(self.hidden))
        if self.kind == "mlp" and weights > MAX_MODEL_WEIGHTS:
            raise KeyedValueError(
                ("model", "hidden"),
                f"{weights:,} weights between hidden layers, over the limit of "
                f"{MAX_MODEL_WEIGHTS:,}",
            )
        weights = sum(9 * a * b for a, b in pairwise(self.channels))
        if self.kind == "cnn" and weights > MAX_MODEL_WEIGHTS:
            raise KeyedValueError(
                ("model", "channels"),
                f"{weights:,} convolution weights, over the limit of {MAX_MODEL_WEIGHTS:,}",
            )
        return self


class DPSection(Section):
    """Differential privacy (``[training.dp]``): DP-SGD on the drone's own shard.

    Each sample's gradient (over the trained layers) is clipped to ``clip_norm``, Gaussian noise
    of ``noise_multiplier * clip_norm`` is added to their sum, and the privacy spent is reported
    as epsilon at ``delta`` (Opacus's RDP accountant, at the sampling rate batch / shard).
    """

    enabled: bool = False
    clip_norm: Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False)] = 1.0
    noise_multiplier: Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False)] = 1.0
    delta: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)] = 1e-5


class TrainingSection(Section):
    """Local SGD on each drone, the learner that runs it, and the memory it may use for training.

    ``backend`` is the learner: ``"torch"`` (the default) or ``"lean"`` (numpy only, for
    companion computers too small for torch; see :mod:`swarmfl.learning.backends`). Both train
    the same flat parameter vector from the same initial weights, so drones of either backend
    gossip in one swarm. With ``budget_bytes`` a drone plans what it trains within that budget
    (the whole model, a suffix of blocks or biases only; :mod:`swarmfl.learning.plan`; torch
    backend only), holding ``neighbour_replicas`` peers' replicas. Unset: it trains the whole
    model.

    ``lr_schedule`` sets the learning rate by local round (rounds this drone trained):
    ``"constant"`` (the default: ``lr`` throughout), ``"cosine"`` (half a cosine from ``lr``
    down to ``lr_final`` over ``lr_rounds`` rounds) or ``"exponential"`` (``lr`` times the same
    factor each round, reaching ``lr_final`` after ``lr_rounds`` rounds); past ``lr_rounds`` the
    rate stays at ``lr_final``. See :func:`~swarmfl.learning.sgd.scheduled_lr`.
    """

    backend: Literal["torch", "lean"] = "torch"

    lr: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 0.05
    lr_schedule: Literal["constant", "cosine", "exponential"] = "constant"
    lr_final: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    lr_rounds: Annotated[int, Field(ge=0, le=100_000_000)] = 0
    batch_size: Annotated[int, Field(gt=0, le=65_536)] = 16
    local_epochs: Annotated[int, Field(gt=0, le=1000)] = 1
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.0
    weight_decay: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = 0.0
    budget_bytes: ByteSize | None = None  # training memory budget, e.g. "64MiB"
    neighbour_replicas: Annotated[int, Field(ge=0, le=4096)] = 4  # peers' replicas budgeted for
    dp: DPSection = DPSection()

    @model_validator(mode="after")
    def _schedule_complete(self) -> TrainingSection:
        problem = lr_schedule_problem(self.lr_schedule, self.lr, self.lr_final, self.lr_rounds)
        if problem is not None:
            key, message = problem
            raise KeyedValueError(("training", key), message)
        return self


class GossipSection(Section):
    """How often and how compactly drones talk.

    ``codec``: fp32 frames are exact snapshots (the default: the reference the compressed
    codecs are measured against); int8 and int4 send error-feedback deltas at a fraction of the
    bytes (see the README's "Model streams").
    """

    period_s: Annotated[float, Field(ge=1e-3, le=3600, allow_inf_nan=False)] = 1.0
    codec: CodecName = DEFAULT_CODEC
    block_size: Annotated[int, Field(ge=MIN_BLOCK_SIZE, le=MAX_BLOCK_SIZE)] = 128
    keyframe_interval: Annotated[int, Field(gt=0, le=100_000)] = 10
    # int8/int4 deltas carry only this fraction of blocks (the strongest); the rest waits in the
    # error-feedback residual for a later frame
    delta_density: Annotated[float, Field(gt=0, le=1)] = 0.5


class MergeSection(Section):
    """Staleness-weighted merging: weight ``alpha * (1 + s) ** -exponent``, 0 past ``cutoff``.

    ``s`` and ``cutoff`` are in gossip periods. ``rule`` picks the merge: ``mean`` (the
    staleness-weighted mean, the default), or a Byzantine-robust rule (``clip``: self-centred
    clipping, ``trimmed_mean``, ``median``; see :mod:`swarmfl.core.robust`). The robust rules
    read ``tolerate`` (how many neighbours may be attackers), ``clip_radius`` (a fixed clipping
    radius; 0: adaptive) and the ``suspect_*`` keys (when a peer is named a suspected attacker);
    ``exclude_suspects`` leaves suspected peers out of the merge.
    """

    alpha: Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)] = 1.0
    exponent: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)] = 0.5
    cutoff: Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False)] = 10.0
    rule: MergeRuleName = "mean"
    tolerate: Annotated[int, Field(ge=0, le=4096)] = 1
    clip_radius: Annotated[float, Field(ge=0, le=1e12, allow_inf_nan=False)] = 0.0
    suspect_ratio: Annotated[float, Field(gt=1, le=1e6, allow_inf_nan=False)] = 2.0
    suspect_window: Annotated[int, Field(ge=1, le=100_000)] = 10
    suspect_fraction: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 0.6
    exclude_suspects: bool = False

    def merge_rule(self) -> MergeRule:
        """The :class:`~swarmfl.core.merge.MergeRule` these settings describe."""
        return MergeRule(**self.model_dump())


class SwarmSection(Section):
    """What every drone of a swarm shares: its id, and the secret its key is derived from.

    In a scenario the secret is written in the file (a simulation has nothing to protect); a
    field drone reads it from a file or an environment variable (see
    :class:`~swarmfl.config.drone_file.FieldSwarmSection`).
    """

    swarm_id: U32 = 1
    secret: Annotated[str, Field(min_length=16, max_length=4096)] | None = None


class LinkSection(Section):
    """The link every radio shares (:class:`~swarmfl.radio.link.LinkConfig`): rate, datagrams,
    queue and reassembly limits. Sizes in bytes, times in seconds.

    ``mtu_bytes`` unset: the medium's natural datagram (1472 bytes for the simulated radio and
    UDP, fitting a 1500-byte frame; 65,507 for MQTT). ``burst_bytes`` unset: one datagram, so
    datagrams leave paced at ``rate_bps``. ``reassembly_buffer_bytes`` unset: room for four
    frames of ``max_frame_bytes`` being reassembled at once.
    """

    rate_bps: Annotated[float, Field(gt=0, le=1e12, allow_inf_nan=False)] = _LINK.rate_bps
    burst_bytes: Annotated[int, Field(gt=0, le=1 << 30)] | None = None
    mtu_bytes: Annotated[int, Field(ge=64, le=65_507)] | None = None
    queue_frames: Annotated[int, Field(gt=0, le=65_536)] = _LINK.queue_frames
    queue_bytes: Annotated[int, Field(gt=0, le=1 << 32)] = _LINK.queue_bytes
    max_frame_bytes: Annotated[int, Field(gt=0, le=1 << 26)] = _LINK.max_frame_bytes
    reassembly_timeout_s: Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)] = (
        _LINK.reassembly_timeout_s
    )
    reassembly_buffer_bytes: Annotated[int, Field(gt=0, le=1 << 32)] | None = None

    @model_validator(mode="after")
    def _link_sizes(self) -> LinkSection:
        if (
            self.burst_bytes is not None
            and self.mtu_bytes is not None
            and self.burst_bytes < self.mtu_bytes
        ):
            raise KeyedValueError(
                ("radio", "burst_bytes"), f"must be at least mtu_bytes ({self.mtu_bytes})"
            )
        if (
            self.reassembly_buffer_bytes is not None
            and self.reassembly_buffer_bytes < self.max_frame_bytes
        ):
            raise KeyedValueError(
                ("radio", "reassembly_buffer_bytes"),
                f"must be at least max_frame_bytes ({self.max_frame_bytes})",
            )
        return self

    def link_config(self, *, default_mtu: int, rate_bps: float | None = None) -> LinkConfig:
        """The :class:`LinkConfig` these settings describe, on a medium whose natural datagram
        is ``default_mtu`` bytes, at ``rate_bps`` if given (a device class's own rate).

        Raises :class:`ConfigError` naming the key if the combination is invalid (e.g. a burst
        below the medium's datagram).
        """
        mtu = self.mtu_bytes if self.mtu_bytes is not None else default_mtu
        try:
            return LinkConfig(
                rate_bps=rate_bps if rate_bps is not None else self.rate_bps,
                mtu_bytes=mtu,
                burst_bytes=self.burst_bytes,
                queue_frames=self.queue_frames,
                queue_bytes=self.queue_bytes,
                reassembly_timeout_s=self.reassembly_timeout_s,
                reassembly_buffer_bytes=(
                    self.reassembly_buffer_bytes
                    if self.reassembly_buffer_bytes is not None
                    else 4 * self.max_frame_bytes
                ),
                max_frame_bytes=self.max_frame_bytes,
            )
        except ConfigError as exc:
            raise ConfigError(exc.problem, key=f"radio.{exc.key}") from None
