"""One drone, assembled once: the same parts whether it flies in the simulator or in the field.

Given the learning settings a swarm shares (:class:`SwarmSettings`: seed, data, model, training,
gossip, merge, link) and what one drone is (its id, its shard, its :class:`DeviceProfile`),
:class:`DroneAssembly` builds the drone's data shard and evaluation subset, its model and
initial weights, its memory plan, its learner, its gossip node (and node config) and its link
config. The simulator (:class:`swarmfl.sim.swarm.Swarm`) calls it once per drone, the field agent
(:class:`swarmfl.field.agent.FieldAgent`) once for itself; a drone with the same settings gets
the same shard, weights, plan and node config either way.

What the drones of a swarm share is built once per assembly: the dataset and its split into
shards, the evaluation subset, the initial model (seeded, optionally pretrained) and its
signature, and one plan per device profile.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from swarmfl.config.sections import (
    DataSection,
    GossipSection,
    LinkSection,
    MergeSection,
    ModelSection,
    TrainingSection,
)
from swarmfl.core.identity import DroneIdentity
from swarmfl.core.merge import MergeRule
from swarmfl.core.node import GossipNode, NodeConfig
from swarmfl.core.verifier import FrameVerifier
from swarmfl.core.wire import SIGNED_BYTES, frame_overhead_bytes
from swarmfl.errors import ConfigError, PlanError
from swarmfl.learning.datafiles import load_idx, load_npz
from swarmfl.learning.datasets import BUILTIN_DATASETS, Dataset, load_builtin
from swarmfl.learning.learner import TorchLearner, TrainingConfig
from swarmfl.learning.models import build_model, model_signature, training_flops_per_sample
from swarmfl.learning.partition import partition_dirichlet, partition_iid
from swarmfl.learning.plan import (
    MemoryPlan,
    ReplicaScope,
    TrainPlan,
    plan_flops_per_sample,
    planner_optimizer,
)
from swarmfl.learning.pretrained import load_pretrained
from swarmfl.radio.link import LinkConfig
from swarmfl.seeding import eval_rng, learner_seed, partition_rng

__all__ = [
    "AssembledDrone",
    "DeviceProfile",
    "DroneAssembly",
    "SwarmSettings",
]


@dataclass(frozen=True)
class SwarmSettings:
    """The learning settings every drone of a swarm shares, as validated config sections.

    ``shards`` is the number of parts the dataset is split into (the simulator: one per
    drone; the field: ``data.shards``). ``link`` and ``default_mtu`` describe the radio's link
    (``default_mtu`` is the medium's natural datagram when ``link.mtu_bytes`` is unset).
    ``key`` is the swarm key frames are authenticated with.
    """

    seed: int
    swarm_id: int
    key: bytes
    shards: int
    data: DataSection
    model: ModelSection
    training: TrainingSection
    gossip: GossipSection
    merge: MergeSection
    link: LinkSection
    default_mtu: int
    eval_samples: int | None = None


@dataclass(frozen=True)
class DeviceProfile:
    """What one kind of companion computer changes: its memory budget and radio rate.

    ``budget_bytes`` (None: train the whole model) with ``neighbour_replicas`` held, sized by
    ``replica_scope`` (see :meth:`~swarmfl.learning.plan.MemoryPlan.candidates`);
    ``rate_bps`` its radio's bit rate (None: the link section's). ``budget_key`` names the
    config key of the budget in errors.
    """

    name: str = "default"
    budget_bytes: int | None = None
    neighbour_replicas: int = 4
    replica_scope: ReplicaScope = "trained"
    rate_bps: float | None = None
    budget_key: str = "training.budget_bytes"


@dataclass(eq=False)
class AssembledDrone:
    """A drone's parts, ready for an :class:`~swarmfl.agent.Agent`.

    ``indices`` are its shard's positions in the dataset's training split; ``plan`` what it
    trains (None: everything, whole batches); ``trains`` the same in a few characters
    (``"full"`` or ``"layers:3-5"``) for status and discovery.
    """

    drone_id: int
    shard: int
    indices: np.ndarray
    device: DeviceProfile
    plan: TrainPlan | None
    flops_per_sample: float
    learner: TorchLearner
    node_config: NodeConfig
    node: GossipNode
    link_config: LinkConfig

    @property
    def trains(self) -> str:
        """``"full"``, or the range of parameter tensors trained, e.g. ``"layers:2-3"``."""
        trained = self.learner.trained_layers
        if len(trained) == len(self.learner.layer_offsets) - 1:
            return "full"
        return f"layers:{trained[0]}-{trained[-1]}"


def load_dataset(data: DataSection, seed: int) -> Dataset:
    """The dataset a ``[data]`` section names (built-in, npz or IDX). Raises ConfigError."""
    if data.dataset in BUILTIN_DATASETS:
        return load_builtin(
            data.dataset, seed=seed, test_fraction=data.test_fraction, num_samples=data.num_samples
        )
    if data.dataset == "npz":
        assert data.path is not None  # the section requires it
        return load_npz(Path(data.path), seed=seed, test_fraction=data.test_fraction)
    assert data.images is not None and data.labels is not None  # the section requires them
    return load_idx(
        Path(data.images), Path(data.labels), seed=seed, test_fraction=data.test_fraction
    )


def split_shards(data: DataSection, dataset: Dataset, shards: int, seed: int) -> list[np.ndarray]:
    """The dataset's training indices split into ``shards`` parts, deterministic per seed.

    One shard is the whole training split, in order. Raises :class:`ConfigError` if the data
    cannot give every shard a sample.
    """
    if shards == 1:
        return [np.arange(dataset.num_train)]
    rng = partition_rng(seed)
    if data.partition == "iid":
        return partition_iid(dataset.y_train, shards, rng)
    min_size = 2 if 2 * shards <= dataset.num_train else 1
    return partition_dirichlet(dataset.y_train, shards, data.alpha, rng, min_size)


class DroneAssembly:
    """Builds the drones of one swarm from its :class:`SwarmSettings`.

    Construction loads the dataset, splits it into shards, picks the evaluation subset and
    builds the initial model (loading ``model.checkpoint`` if given); :meth:`build` then
    assembles one drone. Raises :class:`ConfigError` (naming the key) for data or a model that
    cannot be built, and :meth:`build` for a budget no plan fits or a model whose frames exceed
    the link's ``max_frame_bytes``.
    """

    def __init__(self, settings: SwarmSettings) -> None:
        self.settings = settings
        self.dataset = load_dataset(settings.data, settings.seed)
        self.shards = split_shards(settings.data, self.dataset, settings.shards, settings.seed)
        self.x_eval, self.y_eval = self._eval_set()
        model = settings.model
        self._model_args = (model.kind, self.dataset.input_shape, self.dataset.num_classes)
        self.template = self._fresh_model()
        self.signature = model_signature(self.template)
        self._pretrained = model.checkpoint is not None
        if model.checkpoint is not None:
            load_pretrained(self.template, Path(model.checkpoint))
        self._full_flops = float(training_flops_per_sample(self.template, self.dataset.input_shape))
        self._plans: dict[DeviceProfile, TrainPlan | None] = {}
        self.training_config = TrainingConfig(
            lr=settings.training.lr,
            batch_size=settings.training.batch_size,
            local_epochs=settings.training.local_epochs,
            momentum=settings.training.momentum,
            weight_decay=settings.training.weight_decay,
        )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample's shape."""
        return self.dataset.input_shape

    def _fresh_model(self) -> nn.Sequential:
        model = self.settings.model
        return build_model(
            *self._model_args,
            hidden=tuple(model.hidden),
            channels=tuple(model.channels),
            seed=self.settings.seed,  # every drone of the swarm starts from the same weights
        )

    def new_model(self) -> nn.Sequential:
        """A model with the swarm's initial weights (building is faster than deep-copying)."""
        model = self._fresh_model()
        if self._pretrained:
            model.load_state_dict(self.template.state_dict())
        return model

    def _eval_set(self) -> tuple[np.ndarray, np.ndarray]:
        x, y = self.dataset.x_test, self.dataset.y_test
        limit = self.settings.eval_samples
        if limit is not None and limit < len(y):
            pick = np.sort(eval_rng(self.settings.seed).choice(len(y), limit, replace=False))
            x, y = x[pick], y[pick]
        # Own, writable copies: torch refuses to wrap the read-only cached arrays.
        return np.array(x, dtype=np.float32), np.array(y, dtype=np.int64)

    def plan(self, device: DeviceProfile) -> TrainPlan | None:
        """What a drone of ``device`` trains (None: the whole model); one plan per profile.

        Raises :class:`PlanError` naming ``device.budget_key`` if no plan fits the budget.
        """
        if device.budget_bytes is None:
            return None
        if device in self._plans:
            return self._plans[device]
        settings = self.settings
        try:
            plan = MemoryPlan.choose(
                self.template,
                self.input_shape,
                settings.training.batch_size,
                device.budget_bytes,
                optimizer=planner_optimizer(settings.training.momentum),
                neighbour_replicas=device.neighbour_replicas,
                codec=settings.gossip.codec,
                block_size=settings.gossip.block_size,
                replica_scope=device.replica_scope,
            )
        except PlanError as exc:
            what = "" if device.name == "default" else f"device class {device.name!r}: "
            raise PlanError(what + exc.problem, key=device.budget_key) from None
        self._plans[device] = plan
        return plan

    def flops_per_sample(self, plan: TrainPlan | None) -> float:
        """FLOPs to train on one sample under ``plan`` (what the simulator charges)."""
        if plan is None:
            return self._full_flops
        return plan_flops_per_sample(self.template, self.input_shape, plan)

    def node_config(self, drone_id: int, learner: TorchLearner) -> NodeConfig:
        """The gossip node's config for ``drone_id`` training what ``learner`` trains."""
        settings = self.settings
        gossip, merge = settings.gossip, settings.merge
        return NodeConfig(
            drone_id=drone_id,
            swarm_id=settings.swarm_id,
            signature=self.signature,
            key=settings.key,
            layer_offsets=learner.layer_offsets,
            trained_layers=learner.trained_layers,
            period_s=gossip.period_s,
            codec=gossip.codec,
            block_size=gossip.block_size,
            keyframe_interval=gossip.keyframe_interval,
            delta_density=gossip.delta_density,
            merge=MergeRule(alpha=merge.alpha, exponent=merge.exponent, cutoff=merge.cutoff),
        )

    def build(
        self,
        drone_id: int,
        shard: int,
        device: DeviceProfile | None = None,
        *,
        verifier: FrameVerifier | None = None,
        identity: DroneIdentity | None = None,
    ) -> AssembledDrone:
        """Assemble drone ``drone_id`` holding shard ``shard``, of ``device`` (default profile).

        ``verifier`` is a frame verifier shared with other drones on the same medium (the
        simulator's broadcast). ``identity``: the drone's own key and the roster (the field's
        per-drone signatures; none: the swarm key alone). Raises :class:`ConfigError` for a
        shard out of range, a budget no plan fits, or frames larger than the link's
        ``max_frame_bytes``.
        """
        if not 0 <= shard < len(self.shards):
            raise ConfigError(f"shard {shard} of {len(self.shards)}", key="data.shard")
        device = device or DeviceProfile(
            neighbour_replicas=self.settings.training.neighbour_replicas,
            budget_bytes=self.settings.training.budget_bytes,
        )
        plan = self.plan(device)
        flops = self.flops_per_sample(plan)
        indices = self.shards[shard]
        learner = TorchLearner(
            self.new_model(),
            self.dataset.x_train[indices],
            self.dataset.y_train[indices],
            self.training_config,
            flops_per_sample=flops,
            seed=learner_seed(self.settings.seed, drone_id),
            plan=plan,
        )
        node_config = self.node_config(drone_id, learner)
        if identity is not None:
            node_config = dataclasses.replace(node_config, identity=identity)
        link = self.settings.link.link_config(
            default_mtu=self.settings.default_mtu, rate_bps=device.rate_bps
        )
        self._check_frame_size(learner, link, signed=identity is not None)
        return AssembledDrone(
            drone_id=drone_id,
            shard=shard,
            indices=indices,
            device=device,
            plan=plan,
            flops_per_sample=flops,
            learner=learner,
            node_config=node_config,
            node=GossipNode(node_config, verifier),
            link_config=link,
        )

    def _check_frame_size(
        self, learner: TorchLearner, link: LinkConfig, *, signed: bool = False
    ) -> None:
        offsets = learner.layer_offsets
        values = sum(offsets[i + 1] - offsets[i] for i in learner.trained_layers)
        # the largest frame: an fp32 keyframe of every trained value (quantised codecs are
        # smaller, and lz4 never expands a payload it keeps)
        largest = 4 * values + frame_overhead_bytes(len(learner.trained_layers))
        largest += SIGNED_BYTES if signed else 0  # a per-drone signature
        if largest > link.max_frame_bytes:
            raise ConfigError(
                f"this drone's frames reach {largest} bytes (an fp32 snapshot of {values} "
                f"trained values), over the link's limit of {link.max_frame_bytes}; raise it",
                key="radio.max_frame_bytes",
            )
