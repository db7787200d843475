"""One drone, assembled once: the same parts whether it flies in the simulator or in the field.

Given the learning settings a swarm shares (:class:`SwarmSettings`: seed, data, model, training,
gossip, merge, link) and what one drone is (its id, its shard, its :class:`DeviceProfile`),
:class:`DroneAssembly` builds the drone's data shard and evaluation subset, its model and
initial weights, its memory plan, its learner, its gossip node (and node config) and its link
config. The simulator (:class:`swarmfl.sim.swarm.Swarm`) calls it once per drone, the field agent
(:class:`swarmfl.field.agent.FieldAgent`) once for itself; a drone with the same settings gets
the same shard, weights, plan and node config either way.

What the drones of a swarm share is built once per assembly: the dataset and its split into
shards, the evaluation subset, the model's description, initial weights (seeded, optionally
pretrained) and signature, and one plan per device profile. Each drone's learner is built by its
backend (:mod:`swarmfl.learning.backends`), and its plan by that backend's planner: torch is
imported only for a torch drone or a pretrained checkpoint, so a lean drone's process never
loads it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from swarmfl.config.sections import (
    DataSection,
    GossipSection,
    LinkSection,
    MergeSection,
    ModelSection,
    TrainingSection,
)
from swarmfl.core.identity import DroneIdentity
from swarmfl.core.node import GossipNode, NodeConfig
from swarmfl.core.verifier import FrameVerifier
from swarmfl.core.wire import SIGNED_BYTES, frame_overhead_bytes
from swarmfl.errors import ConfigError, PlanError
from swarmfl.learning.backends import build_learner, build_torch_model, refuse_unsupported
from swarmfl.learning.datafiles import load_idx, load_npz
from swarmfl.learning.datasets import BUILTIN_DATASETS, Dataset, load_builtin
from swarmfl.learning.flatlearner import FlatLearner
from swarmfl.learning.partition import partition_dirichlet, partition_iid
from swarmfl.learning.seam import TrainingConfig
from swarmfl.learning.spec import ModelSpec, initial_parameters, model_spec
from swarmfl.learning.trainplan import ReplicaScope, TrainPlan, planner_optimizer
from swarmfl.radio.link import LinkConfig
from swarmfl.seeding import eval_rng, learner_seed, partition_rng

if TYPE_CHECKING:
    from torch import nn

    from swarmfl.learning.plan import PlanSettings
    from swarmfl.learning.privacy import DPConfig

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
    """What one kind of companion computer changes: its learner, memory budget and radio rate.

    ``backend`` is its learner (``"torch"`` or ``"lean"``; None: the training section's);
    ``budget_bytes`` (None: train the whole model) with ``neighbour_replicas`` held, sized by
    ``replica_scope`` (see :meth:`~swarmfl.learning.plan.MemoryPlan.candidates`);
    ``rate_bps`` its radio's bit rate (None: the link section's). ``budget_key`` and
    ``backend_key`` name the config keys of the budget and the backend in errors.
    """

    name: str = "default"
    budget_bytes: int | None = None
    neighbour_replicas: int = 4
    replica_scope: ReplicaScope = "trained"
    rate_bps: float | None = None
    budget_key: str = "training.budget_bytes"
    backend: str | None = None
    backend_key: str = "training.backend"


@dataclass(eq=False)
class AssembledDrone:
    """A drone's parts, ready for an :class:`~swarmfl.agent.Agent`.

    ``indices`` are its shard's positions in the dataset's training split; ``backend`` its
    learner's (``"torch"`` or ``"lean"``); ``plan`` what it trains (None: everything, whole
    batches); ``trains`` the same in a few characters (``"full"`` or ``"layers:3-5"``) for
    status and discovery.
    """

    drone_id: int
    shard: int
    indices: np.ndarray
    device: DeviceProfile
    plan: TrainPlan | None
    flops_per_sample: float
    backend: str
    learner: FlatLearner
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
    describes the model (:class:`~swarmfl.learning.spec.ModelSpec`) and its initial weights:
    one flat float32 vector drawn from the seed in numpy
    (:func:`~swarmfl.learning.spec.initial_parameters`), so that torch and lean drones start
    alike; with ``model.checkpoint`` the pretrained values are loaded into it (torch).
    :meth:`build` then assembles one drone with the backend its device profile (or
    ``training.backend``) names. Torch is imported only when a torch drone (or its memory plan)
    or a checkpoint needs it.

    Raises :class:`ConfigError` (naming the key) for data or a model that cannot be built, and
    :meth:`build` for a setting its backend cannot honour, a budget no plan fits or a model
    whose frames exceed the link's ``max_frame_bytes``.
    """

    def __init__(self, settings: SwarmSettings) -> None:
        self.settings = settings
        self.dataset = load_dataset(settings.data, settings.seed)
        self.shards = split_shards(settings.data, self.dataset, settings.shards, settings.seed)
        self.x_eval, self.y_eval = self._eval_set()
        model = settings.model
        self.spec: ModelSpec = model_spec(
            model.kind,
            self.dataset.input_shape,
            self.dataset.num_classes,
            hidden=tuple(model.hidden),
            channels=tuple(model.channels),
            seed=settings.seed,  # every drone of the swarm starts from the same weights
        )
        self.signature = self.spec.signature()
        self._template: nn.Sequential | None = None
        self.initial_parameters = initial_parameters(self.spec)
        if model.checkpoint is not None:
            from swarmfl.learning.pretrained import load_pretrained

            load_pretrained(self.template, Path(model.checkpoint))  # blocks it holds
            self.initial_parameters = np.concatenate(
                [p.detach().reshape(-1).numpy() for p in self.template.parameters()]
            ).astype(np.float32)
        # shared by every drone of the assembly: each learner trains its own copy
        self.initial_parameters.flags.writeable = False
        self._full_flops = float(self.spec.training_flops_per_sample())
        self._plans: dict[DeviceProfile, TrainPlan | None] = {}
        self.training_config = TrainingConfig(
            lr=settings.training.lr,
            batch_size=settings.training.batch_size,
            local_epochs=settings.training.local_epochs,
            momentum=settings.training.momentum,
            weight_decay=settings.training.weight_decay,
            lr_schedule=settings.training.lr_schedule,
            lr_final=settings.training.lr_final,
            lr_rounds=settings.training.lr_rounds,
        )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample's shape."""
        return self.dataset.input_shape

    @property
    def template(self) -> nn.Sequential:
        """The torch model (built on first use, which imports torch) the planner probes."""
        if self._template is None:
            self._template = build_torch_model(self.spec, self.initial_parameters)
        return self._template

    def new_model(self) -> nn.Sequential:
        """A torch model holding the swarm's initial weights (imports torch)."""
        return build_torch_model(self.spec, self.initial_parameters)

    def _eval_set(self) -> tuple[np.ndarray, np.ndarray]:
        x, y = self.dataset.x_test, self.dataset.y_test
        limit = self.settings.eval_samples
        if limit is not None and limit < len(y):
            pick = np.sort(eval_rng(self.settings.seed).choice(len(y), limit, replace=False))
            x, y = x[pick], y[pick]
        # Own, writable copies: torch refuses to wrap the read-only cached arrays.
        return np.array(x, dtype=np.float32), np.array(y, dtype=np.int64)

    def backend(self, device: DeviceProfile) -> str:
        """The backend a drone of ``device`` trains with: its own, else ``training.backend``."""
        return device.backend if device.backend is not None else self.settings.training.backend

    def plan(self, device: DeviceProfile) -> TrainPlan | None:
        """What a drone of ``device`` trains (None: the whole model); one plan per profile.

        Raises :class:`PlanError` naming ``device.budget_key`` if no plan fits the budget.
        """
        if device.budget_bytes is None:
            return None
        if device in self._plans:
            return self._plans[device]
        settings = self.settings
        settings_kw: PlanSettings = {
            "optimizer": planner_optimizer(settings.training.momentum),
            "neighbour_replicas": device.neighbour_replicas,
            "codec": settings.gossip.codec,
            "block_size": settings.gossip.block_size,
            "replica_scope": device.replica_scope,
            "dp": settings.training.dp.enabled,
        }
        batch_size = settings.training.batch_size
        try:
            if self.backend(device) == "lean":  # planned on what the lean learner keeps
                from swarmfl.learning.lean_plan import choose_lean_plan

                plan = choose_lean_plan(self.spec, batch_size, device.budget_bytes, **settings_kw)
            else:
                from swarmfl.learning.plan import MemoryPlan

                plan = MemoryPlan.choose(
                    self.template, self.input_shape, batch_size, device.budget_bytes, **settings_kw
                )
        except PlanError as exc:
            what = "" if device.name == "default" else f"device class {device.name!r}: "
            raise PlanError(what + exc.problem, key=device.budget_key) from None
        self._plans[device] = plan
        return plan

    def dp_config(self) -> DPConfig | None:
        """DP-SGD's settings (``[training.dp]``), None unless enabled."""
        dp = self.settings.training.dp
        if not dp.enabled:
            return None
        from swarmfl.learning.privacy import DPConfig  # torch: only for a DP drone

        return DPConfig(dp.clip_norm, dp.noise_multiplier, dp.delta)

    def flops_per_sample(self, plan: TrainPlan | None) -> float:
        """FLOPs to train on one sample under ``plan`` (what the simulator charges; the same
        count for both backends, from the model's description)."""
        if plan is None:
            return self._full_flops
        from swarmfl.learning.lean_plan import lean_plan_flops_per_sample

        return lean_plan_flops_per_sample(self.spec, plan)

    def node_config(self, drone_id: int, learner: FlatLearner) -> NodeConfig:
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
            merge=merge.merge_rule(),
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
        """Assemble drone ``drone_id`` holding shard ``shard``, of ``device`` (default profile:
        the training section's backend, budget and replicas).

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
            backend=self.settings.training.backend,
        )
        backend = self.backend(device)
        refuse_unsupported(
            backend,
            checkpoint=self.settings.model.checkpoint,
            backend_key=device.backend_key,
            dp=self.settings.training.dp.enabled,
        )
        plan = self.plan(device)
        flops = self.flops_per_sample(plan)
        indices = self.shards[shard]
        learner = build_learner(
            backend,
            self.spec,
            self.initial_parameters,
            self.dataset.x_train[indices],
            self.dataset.y_train[indices],
            self.training_config,
            flops_per_sample=flops,
            seed=learner_seed(self.settings.seed, drone_id),
            plan=plan,
            dp=self.dp_config(),
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
            backend=backend,
            plan=plan,
            flops_per_sample=flops,
            learner=learner,
            node_config=node_config,
            node=GossipNode(node_config, verifier),
            link_config=link,
        )

    def _check_frame_size(
        self, learner: FlatLearner, link: LinkConfig, *, signed: bool = False
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
