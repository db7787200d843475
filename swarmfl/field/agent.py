"""The field agent: one drone, in real time, on real sockets (``swarmfl agent``).

:class:`FieldAgent` builds everything a drone's companion computer runs from a ``drone.toml``
(:mod:`swarmfl.agentconfig`): the local data and learner, the sans-IO gossip node, the radio
(UDP or MQTT), discovery (zeroconf, a static list, or the broker's presence), checkpoints and
the live status. Then it runs the very :class:`~swarmfl.agent.Agent` the simulator runs, with a
real clock and training in a worker thread so the radio and discovery stay responsive.

Lifecycle::

    start   restore the newest good checkpoint (unless --no-resume), bind the radio, announce
    run     merge -> train -> publish every period; receive all the time; status lines
    stop    on SIGINT/SIGTERM (request_stop): the training step in flight finishes, the agent's
            tasks stop, a last checkpoint is written, the radio says goodbye; exit code 0

Restarting continues the drone's streams: the update counter comes back from the checkpoint and
the sequence numbers start above any this drone used before (see :func:`stream_start_seq`), so
neighbours take its frames as a continuation, not a replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import torch
from torch import nn

from swarmfl.agent import Agent
from swarmfl.agentconfig import AgentConfig, LoadedAgentConfig
from swarmfl.clock import Costed, LoopClock
from swarmfl.core.merge import MergeRule
from swarmfl.core.node import GossipNode, NodeConfig, NodeState
from swarmfl.errors import ConfigError, PlanError, SwarmError
from swarmfl.field.checkpoint import Checkpoint, CheckpointStore
from swarmfl.fleet import planner_optimizer
from swarmfl.learning.data import (
    BUILTIN_DATASETS,
    Dataset,
    load_builtin,
    load_idx,
    load_npz,
    partition_dirichlet,
    partition_iid,
    shard,
)
from swarmfl.learning.learner import StepResult, TorchLearner, TrainingConfig
from swarmfl.learning.memory import MemoryPlan, TrainPlan, plan_flops_per_sample
from swarmfl.learning.models import build_model, model_signature, training_flops_per_sample
from swarmfl.learning.pretrained import load_pretrained
from swarmfl.radio.discovery import (
    PeerDown,
    PeerInfo,
    PeerUp,
    StaticDiscovery,
    ZeroconfDiscovery,
)
from swarmfl.radio.link import LinkConfig
from swarmfl.radio.mqtt import MqttRadio, MqttSettings
from swarmfl.radio.udp import UdpRadio

__all__ = [
    "RESTART_SEQ_GAP",
    "STATUS_VERSION",
    "DroneData",
    "FieldAgent",
    "FieldCompute",
    "load_drone_data",
    "run_agent",
    "stream_start_seq",
]

log = logging.getLogger(__name__)

STATUS_VERSION = 1
"""Version of the status record (``v``) in status lines, telemetry and query answers."""

RESTART_SEQ_GAP = 2**32
"""How far a restarted drone's sequence numbers jump past the checkpointed ones, at least.

A drone keeps sending after its last checkpoint; after a crash the checkpoint's numbers are
behind what neighbours already saw. No drone sends 2**32 frames between two checkpoints.
"""

# A start's sequence numbers are also at least (Unix ms) << 20: above anything an earlier run
# could have sent (it would need 2**20 frames per millisecond), even without a checkpoint
# (--no-resume, a lost checkpoint folder), as long as the clock does not go back.
_TIME_BASE_SHIFT = 20
_MAX_START_SEQ = 2**63

C = TypeVar("C", bound=Costed)


def stream_start_seq(saved_next_seq: int | None, wall_s: float) -> int:
    """The first sequence number of a (re)started drone's streams.

    The larger of ``saved_next_seq + RESTART_SEQ_GAP`` (if a checkpoint was restored) and the
    wall-clock base ``int(wall_s * 1000) << 20``, capped at 2**63.
    """
    start = max(0, int(wall_s * 1000)) << _TIME_BASE_SHIFT
    if saved_next_seq is not None:
        start = max(start, saved_next_seq + RESTART_SEQ_GAP)
    return min(start, _MAX_START_SEQ)


class FieldCompute:
    """Training in a worker thread that shutdown can wait for, or no training at all.

    Cancelling the agent does not stop a thread mid-step: :meth:`drain` waits for the step in
    flight, so a checkpoint taken afterwards is never half an SGD step. With ``enabled=False``
    no step runs (the drone only gossips and merges).
    """

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self._inflight: asyncio.Future[Any] | None = None

    async def run(self, step: Callable[[], C]) -> C:
        """Run ``step`` in a thread (or skip it when disabled) and return its result."""
        if not self.enabled:
            return cast(C, StepResult(0, 0.0, math.nan))
        future = asyncio.ensure_future(asyncio.to_thread(step))
        self._inflight = future
        return cast(C, await asyncio.shield(future))

    async def drain(self) -> None:
        """Wait for the step in flight, if any, to finish (its result or error is dropped)."""
        future, self._inflight = self._inflight, None
        if future is not None and not future.done():
            with contextlib.suppress(Exception):
                await future


class _MergeLag:
    """How long frames wait between being heard and being merged (seconds)."""

    def __init__(self) -> None:
        self._merged: dict[int, float] = {}
        self.total_s = 0.0
        self.count = 0

    def observe(self, heard: Mapping[int, float], now: float) -> None:
        for peer, heard_at in heard.items():
            if self._merged.get(peer) != heard_at:
                self._merged[peer] = heard_at
                self.total_s += now - heard_at
                self.count += 1

    def take_mean_s(self) -> float | None:
        mean = self.total_s / self.count if self.count else None
        self.total_s, self.count = 0.0, 0
        return mean


class _FieldNode(GossipNode):
    """A gossip node that also measures how long heard frames wait before they are merged."""

    lag: _MergeLag

    def mix(self, x: np.ndarray, now: float) -> int:
        self.lag.observe(self.known_peers(), now)
        return super().mix(x, now)


@dataclass(frozen=True, eq=False)
class DroneData:
    """A drone's local training data and the held-out set it evaluates on."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_eval: np.ndarray
    y_eval: np.ndarray
    input_shape: tuple[int, ...]
    num_classes: int
    description: str


def load_drone_data(loaded: LoadedAgentConfig) -> DroneData:
    """The local data named by the config: a built-in dataset's shard, .npz files or IDX files.

    A built-in dataset is split into ``data.shards`` parts exactly as the simulator splits it
    among that many drones (same seed, same parts). Raises :class:`ConfigError` naming the file.
    """
    config = loaded.config
    data = config.data
    dataset: Dataset
    if data.dataset in BUILTIN_DATASETS:
        dataset = load_builtin(
            data.dataset,
            seed=data.seed,
            test_fraction=data.test_fraction,
            num_samples=data.num_samples,
        )
        rng = np.random.default_rng([data.seed, 0x5A17])  # the simulator's partition stream
        if data.partition == "iid":
            parts = partition_iid(dataset.y_train, data.shards, rng)
        else:
            min_size = 2 if 2 * data.shards <= dataset.num_train else 1
            parts = partition_dirichlet(dataset.y_train, data.shards, data.alpha, rng, min_size)
        x, y = shard(dataset, parts[data.shard])
        description = f"{data.dataset} shard {data.shard}/{data.shards}"
    elif data.dataset == "npz":
        assert data.path is not None
        dataset = load_npz(loaded.path(data.path), seed=data.seed, test_fraction=data.test_fraction)
        x, y = np.array(dataset.x_train), np.array(dataset.y_train)
        description = f"npz {data.path}"
    else:
        assert data.images is not None and data.labels is not None
        dataset = load_idx(
            loaded.path(data.images),
            loaded.path(data.labels),
            seed=data.seed,
            test_fraction=data.test_fraction,
        )
        x, y = np.array(dataset.x_train), np.array(dataset.y_train)
        description = f"idx {data.images}"
    x_eval, y_eval = dataset.x_test, dataset.y_test
    limit = config.status.eval_samples
    if limit is not None and limit < len(y_eval):
        pick = np.sort(np.random.default_rng([data.seed, 0xE7A1]).choice(len(y_eval), limit, False))
        x_eval, y_eval = x_eval[pick], y_eval[pick]
    return DroneData(
        x_train=x,
        y_train=y,
        x_eval=np.array(x_eval, dtype=np.float32),
        y_eval=np.array(y_eval, dtype=np.int64),
        input_shape=dataset.input_shape,
        num_classes=dataset.num_classes,
        description=description,
    )


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


class _StatusLog:
    """Appends JSON lines to a file, rotating it to ``.1`` past ``max_bytes``."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create {path.parent}: {exc}", key="status.log") from None

    def write(self, record: Mapping[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n"
        try:
            if self.path.exists() and self.path.stat().st_size > self.max_bytes:
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
        except OSError as exc:  # a full disk must not take the drone down
            log.warning("cannot write status line to %s: %s", self.path, exc)


class FieldAgent:
    """One drone of a real swarm, built from its config. ``await run()`` until stopped.

    ``resume`` restores the newest checkpoint that verifies (the default). Raises
    :class:`ConfigError` for data, model or checkpoint problems the user must fix (including a
    checkpoint of another drone, swarm or model); :meth:`run` raises :class:`ConfigError` for a
    radio port in use and :class:`~swarmfl.errors.RadioError` for other radio failures.
    """

    def __init__(self, loaded: LoadedAgentConfig, *, resume: bool = True) -> None:
        config = loaded.config
        self.loaded = loaded
        self.config: AgentConfig = config
        self.drone_id = config.drone.id
        self.swarm_id = config.drone.swarm_id
        if config.training.threads is not None:
            torch.set_num_threads(config.training.threads)
        self.data = load_drone_data(loaded)
        model = build_model(
            config.model.kind,
            self.data.input_shape,
            self.data.num_classes,
            hidden=tuple(config.model.hidden),
            channels=tuple(config.model.channels),
            seed=config.data.seed,  # every drone of the swarm starts from the same weights
        )
        if config.model.checkpoint is not None:
            # Fine-tuning a pretrained (perception) model is the usual case on a drone.
            load_pretrained(model, loaded.path(config.model.checkpoint))
        self.signature = model_signature(model)
        self.plan = self._plan(model)
        training = config.training.model_dump(
            exclude={"enabled", "threads", "budget_bytes", "neighbour_replicas"}
        )
        self.learner = TorchLearner(
            copy.deepcopy(model),
            self.data.x_train,
            self.data.y_train,
            TrainingConfig(**training),
            flops_per_sample=(
                training_flops_per_sample(model, self.data.input_shape)
                if self.plan is None
                else plan_flops_per_sample(model, self.data.input_shape, self.plan)
            ),
            seed=config.data.seed * 100_003 + self.drone_id,
            plan=self.plan,
        )
        gossip, merge = config.gossip, config.merge
        self.node = _FieldNode(
            NodeConfig(
                drone_id=self.drone_id,
                swarm_id=self.swarm_id,
                signature=self.signature,
                key=loaded.key,
                layer_offsets=self.learner.layer_offsets,
                trained_layers=self.learner.trained_layers,
                period_s=gossip.period_s,
                codec=gossip.codec,
                block_size=gossip.block_size,
                keyframe_interval=gossip.keyframe_interval,
                delta_density=gossip.delta_density,
                merge=MergeRule(merge.alpha, merge.exponent, merge.cutoff),
            )
        )
        self.node.lag = _MergeLag()
        layers = len(self.learner.layer_offsets) - 1
        trained = self.learner.trained_layers
        self.trains = "full" if len(trained) == layers else f"layers:{trained[0]}-{trained[-1]}"
        self.compute = FieldCompute(enabled=config.training.enabled)
        self.store = CheckpointStore(
            loaded.path(config.checkpoint.dir), keep=config.checkpoint.keep
        )
        log_path = config.status.log
        self._status_log = (
            _StatusLog(loaded.path(log_path), config.status.log_max_bytes) if log_path else None
        )
        self.resumed_from: int | None = None
        self.rounds_total = 0
        self._restore(resume)
        self.agent: Agent | None = None
        self.radio: UdpRadio | MqttRadio | None = None
        self.discovery: ZeroconfDiscovery | StaticDiscovery | None = None
        self.accuracy: float | None = None
        self.loss: float | None = None
        self.train_loss: float | None = None
        self._evaluated_at = -math.inf
        self._state = "starting"
        self._started_mono = time.monotonic()
        self._stop = asyncio.Event()
        self._saving: asyncio.Task[None] | None = None
        self._last_checkpoint_round = self.rounds_total

    # -- checkpoints ----------------------------------------------------------------------------

    def _plan(self, model: nn.Sequential) -> TrainPlan | None:
        """What this drone trains within ``training.budget_bytes`` (None: no budget, all of it).

        Peers' replicas are budgeted at the whole model's size: a field swarm may mix devices,
        and a peer's frames may carry layers this drone keeps frozen (they are merged).
        """
        training, gossip = self.config.training, self.config.gossip
        if training.budget_bytes is None:
            return None
        try:
            plan = MemoryPlan.choose(
                model,
                self.data.input_shape,
                training.batch_size,
                training.budget_bytes,
                optimizer=planner_optimizer(training.momentum),
                neighbour_replicas=training.neighbour_replicas,
                codec=gossip.codec,
                block_size=gossip.block_size,
                replica_scope="model",
            )
        except PlanError as exc:
            raise PlanError(
                exc.problem, source=str(self.loaded.source), key="training.budget_bytes"
            ) from None
        log.info("drone %d: memory plan: %s", self.drone_id, plan.describe())
        return plan

    def _restore(self, resume: bool) -> None:
        checkpoint = self.store.load_latest() if resume else None
        saved_seq = None
        control_seq = 0
        counter = 0
        if checkpoint is not None:
            meta = checkpoint.meta
            source = str(self.store.directory)
            if checkpoint.drone_id != self.drone_id or meta.get("swarm_id") != self.swarm_id:
                raise ConfigError(
                    f"holds a checkpoint of drone {checkpoint.drone_id} of swarm "
                    f"{meta.get('swarm_id')}, not drone {self.drone_id} of swarm {self.swarm_id} "
                    "(use another checkpoint.dir, or --no-resume)",
                    source=source,
                    key="checkpoint.dir",
                )
            params = checkpoint.arrays.get("params")
            flat = self.learner.flat_parameters()
            if (
                meta.get("signature") != self.signature.hex()
                or params is None
                or (params.shape != flat.shape)
            ):
                raise ConfigError(
                    "holds a checkpoint of another model (use another checkpoint.dir, or "
                    "--no-resume to start this model from scratch)",
                    source=source,
                    key="checkpoint.dir",
                )
            np.copyto(flat, params)
            momentum = checkpoint.arrays.get("momentum")
            if momentum is not None:
                # Momentum now off, or another plan: start it afresh, as a new optimizer would.
                with contextlib.suppress(ConfigError):
                    self.learner.load_momentum_state(momentum)
            counter = checkpoint.counter
            saved_seq = checkpoint.seq
            control_seq = int(meta.get("control_seq", 0))
            self.rounds_total = int(meta.get("rounds", 0))
            self.resumed_from = checkpoint.counter
            log.info("drone %d: resumed from checkpoint %d", self.drone_id, checkpoint.counter)
        start = stream_start_seq(saved_seq, time.time())
        self.node.import_state(
            NodeState(counter=counter, next_seq=start, control_seq=max(start, control_seq))
        )

    def _checkpoint(self) -> Checkpoint:
        state = self.node.export_state()
        arrays = {"params": self.learner.flat_parameters().copy()}
        momentum = self.learner.momentum_state()
        if momentum is not None:
            arrays["momentum"] = momentum
        return Checkpoint(
            drone_id=self.drone_id,
            counter=state.counter,
            seq=state.next_seq,
            arrays=arrays,
            meta={
                "swarm_id": self.swarm_id,
                "signature": self.signature.hex(),
                "control_seq": state.control_seq,
                "rounds": self.rounds_total,
                "accuracy": _finite(self.accuracy),
            },
            created_at=time.time(),
        )

    def _save_in_background(self) -> None:
        if self._saving is not None and not self._saving.done():
            return  # the previous save is still being written: skip this one
        checkpoint = self._checkpoint()  # copied now, on the loop: a consistent state
        self._last_checkpoint_round = self.rounds_total
        self._saving = asyncio.get_running_loop().create_task(
            self._save(checkpoint), name=f"drone-{self.drone_id}-checkpoint"
        )

    async def _save(self, checkpoint: Checkpoint) -> None:
        try:
            await asyncio.to_thread(self.store.save, checkpoint)
        except SwarmError as exc:  # a full or read-only disk: keep flying, say so
            log.warning("drone %d: %s", self.drone_id, exc)

    # -- status ---------------------------------------------------------------------------------

    def _evaluate(self) -> None:
        evaluation = self.learner.evaluate(self.data.x_eval, self.data.y_eval)
        self.accuracy, self.loss = evaluation.accuracy, evaluation.loss
        self._evaluated_at = time.monotonic()

    def status(self) -> dict[str, Any]:
        """The drone's live status record (what status lines, telemetry and queries carry)."""
        now = asyncio.get_running_loop().time()
        stats = self.node.stats
        radio = self.radio
        record: dict[str, Any] = {
            "v": STATUS_VERSION,
            "t": round(time.time(), 3),
            "mono": round(now, 6),  # time.monotonic(): comparable across processes
            "drone": self.drone_id,
            "swarm": self.swarm_id,
            "state": self._state,
            "radio": self.config.radio.kind,
            "trains": self.trains,
            "samples": self.learner.sample_count,
            "rounds": self.rounds_total,
            "counter": self.node.counter,
            "resumed_from": self.resumed_from,
            "accuracy": _finite(self.accuracy),
            "loss": _finite(self.loss),
            "train_loss": _finite(self.train_loss),
            "peers_announced": sorted(self._announced()),
            "peers_heard": {
                str(peer): round(now - heard_at, 6)
                for peer, heard_at in sorted(self.node.known_peers().items())
            },
            "frames_published": stats.frames_published,
            "frames_accepted": stats.frames_accepted,
            "frames_rejected": stats.frames_rejected,
            "frames_replayed": stats.frames_replayed,
            "stream_gaps": stats.stream_gaps,
            "nacks_sent": stats.nacks_sent,
            "merge_lag_s": _finite(self.node.lag.take_mean_s()),
            "uptime_s": round(time.monotonic() - self._started_mono, 1),
        }
        if isinstance(radio, UdpRadio):
            with contextlib.suppress(SwarmError):
                record["port"] = radio.local_port
        if isinstance(radio, MqttRadio):
            record["broker"] = "connected" if radio.connected else "disconnected"
        if radio is not None:
            record.update(radio.counters())
        return record

    def _announced(self) -> Mapping[int, PeerInfo]:
        if self.discovery is not None:
            return self.discovery.peers()
        if isinstance(self.radio, MqttRadio):
            return self.radio.peers()
        return {}

    def _emit_status(self) -> None:
        record = self.status()
        if self._status_log is not None:
            self._status_log.write(record)
        radio = self.radio
        if isinstance(radio, MqttRadio) and self.config.status.telemetry:
            radio.publish_telemetry(record)

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.status.interval_s)
            self._emit_status()

    def _on_round(self, agent: Agent, step: StepResult) -> None:
        self.rounds_total += 1
        self.train_loss = step.loss
        if time.monotonic() - self._evaluated_at >= self.config.status.eval_interval_s:
            self._evaluate()
        if (
            self.rounds_total - self._last_checkpoint_round
            >= self.config.checkpoint.interval_rounds
        ):
            self._save_in_background()

    # -- radio and discovery ------------------------------------------------------------------

    def _link_config(self) -> LinkConfig:
        radio = self.config.radio
        return LinkConfig(
            rate_bps=radio.rate_bps,
            mtu_bytes=self.config.mtu_bytes(),
            burst_bytes=max(radio.burst_bytes, self.config.mtu_bytes()),
            queue_frames=radio.queue_frames,
            queue_bytes=radio.queue_bytes,
            reassembly_timeout_s=radio.reassembly_timeout_s,
            reassembly_buffer_bytes=4 * radio.max_frame_bytes,
            max_frame_bytes=radio.max_frame_bytes,
        )

    def _me(self, host: str, port: int) -> PeerInfo:
        return PeerInfo(
            drone_id=self.drone_id,
            swarm_id=self.swarm_id,
            signature=self.signature,
            host=host,
            port=port,
            trains=self.trains,
            transport=self.config.radio.kind,
        )

    async def _open_radio(self) -> UdpRadio | MqttRadio:
        config = self.config
        if config.radio.kind == "udp":
            udp = config.radio.udp
            udp_radio = UdpRadio(
                drone_id=self.drone_id,
                host=udp.host,
                port=udp.port,
                link=self._link_config(),
                inbox_frames=config.radio.inbox_frames,
                loss=udp.loss,
                seed=config.data.seed * 7919 + self.drone_id,
                status=self.status if config.status.answer_queries else None,
            )
            await udp_radio.start()
            return udp_radio
        mqtt = config.radio.mqtt
        settings = MqttSettings(
            url=mqtt.url,
            username=mqtt.username,
            password=self.loaded.mqtt_password,
            ca_file=str(self.loaded.path(mqtt.ca_file)) if mqtt.ca_file else None,
            cert_file=str(self.loaded.path(mqtt.cert_file)) if mqtt.cert_file else None,
            key_file=str(self.loaded.path(mqtt.key_file)) if mqtt.key_file else None,
            tls_insecure=mqtt.tls_insecure,
            topic_prefix=mqtt.topic_prefix,
            keepalive_s=mqtt.keepalive_s,
            connect_timeout_s=mqtt.connect_timeout_s,
            backoff_initial_s=mqtt.backoff_initial_s,
            backoff_max_s=mqtt.backoff_max_s,
        )
        mqtt_radio = MqttRadio(
            me=self._me(settings.host, 0),
            settings=settings,
            link=self._link_config(),
            inbox_frames=config.radio.inbox_frames,
        )
        await mqtt_radio.start()
        return mqtt_radio

    async def _open_discovery(
        self, radio: UdpRadio | MqttRadio
    ) -> ZeroconfDiscovery | StaticDiscovery | None:
        config = self.config
        kind = config.discovery.resolved_kind(config.radio.kind)
        if kind == "broker":
            return None  # the MQTT radio's presence is the discovery
        port = radio.local_port if isinstance(radio, UdpRadio) else 0
        if kind == "static":
            peers = {
                peer.id: PeerInfo(
                    peer.id,
                    self.swarm_id,
                    self.signature,
                    peer.host,
                    peer.port,
                    "full",
                    config.radio.kind,
                )
                for peer in config.discovery.peers
            }
            return StaticDiscovery(peers)
        host = config.advertised_host() or "127.0.0.1"
        zeroconf = ZeroconfDiscovery(self._me(host, port), interfaces=config.discovery.interfaces)
        await zeroconf.start()
        return zeroconf

    async def _follow_discovery(self) -> None:
        source = self.discovery if self.discovery is not None else self.radio
        if source is None:
            return
        radio = self.radio
        events = source.events()
        async for event in events:
            if isinstance(event, PeerUp):
                log.info("drone %d: peer %d is up", self.drone_id, event.peer.drone_id)
                if isinstance(radio, UdpRadio) and event.peer.transport == "udp":
                    radio.set_peer(event.peer.drone_id, event.peer.host, event.peer.port)
            elif isinstance(event, PeerDown):
                # A hint only: the node keeps what it heard until the merge cut-off ages it out.
                log.info("drone %d: peer %d is gone", self.drone_id, event.drone_id)
                if isinstance(radio, UdpRadio):
                    radio.remove_peer(event.drone_id)

    # -- running --------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop soon: the step in flight finishes, then checkpoint and close (run() returns)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """Whether a stop was requested."""
        return self._stop.is_set()

    async def run(self) -> None:
        """Run the drone until :meth:`request_stop` (or a crash, which is re-raised).

        See the class docstring for the errors raised at start-up.
        """
        self.radio = await self._open_radio()
        try:
            self.discovery = await self._open_discovery(self.radio)
        except BaseException:
            await self.radio.aclose()
            raise
        self.agent = Agent(
            drone_id=self.drone_id,
            learner=self.learner,
            node=self.node,
            radio=self.radio,
            clock=LoopClock(),
            compute=self.compute,
            period_s=self.config.gossip.period_s,
            on_round=self._on_round,
        )
        self._evaluate()
        self._state = "resumed" if self.resumed_from is not None else "started"
        if self.resumed_from is not None:
            # Save the advanced sequence numbers at once: crashing again before the next
            # checkpoint must not make this run's numbers be reused.
            await self._save(self._checkpoint())
        self._emit_status()
        self._state = "running"
        crash: BaseException | None = None
        tasks = [
            asyncio.create_task(self.agent.run(), name=f"drone-{self.drone_id}-agent"),
            asyncio.create_task(self._follow_discovery(), name=f"drone-{self.drone_id}-peers"),
            asyncio.create_task(self._status_loop(), name=f"drone-{self.drone_id}-status"),
        ]
        stop = asyncio.create_task(self._stop.wait())
        try:
            done, _ = await asyncio.wait([*tasks, stop], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stop and not task.cancelled() and task.exception() is not None:
                    crash = task.exception()
        finally:
            self._state = "stopping"
            for task in [*tasks, stop]:
                task.cancel()
            await asyncio.gather(*tasks, stop, return_exceptions=True)
            await self.compute.drain()
            if self._saving is not None:
                await asyncio.gather(self._saving, return_exceptions=True)
            if crash is None:
                self._state = "stopped"
                self._evaluate()  # the last status line says what the drone flies home with
                await self._save(self._checkpoint())
            else:
                self._state = "crashed"
            self._emit_status()
            await self._close()
        if crash is not None:
            raise crash

    async def _close(self) -> None:
        discovery, self.discovery = self.discovery, None
        if discovery is not None:
            with contextlib.suppress(SwarmError):
                await discovery.aclose()
        radio = self.radio
        if radio is not None:
            await radio.aclose()


def run_agent(loaded: LoadedAgentConfig, *, resume: bool = True) -> int:
    """Run one drone until SIGINT or SIGTERM; return the exit code (0 after a clean stop).

    Raises what :class:`FieldAgent` raises (the CLI turns it into one line and exit code 2).
    """
    import signal
    import sys

    async def main() -> None:
        agent = FieldAgent(loaded, resume=resume)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, agent.request_stop)
        config = loaded.config
        resumed = agent.resumed_from
        print(
            f"swarmfl agent: drone {agent.drone_id} of swarm {agent.swarm_id}, "
            f"{agent.data.description}, {config.radio.kind} radio, trains "
            + (agent.plan.describe() if agent.plan is not None else "the whole model")
            + ", "
            + (f"resumed at update {resumed}" if resumed is not None else "fresh start"),
            file=sys.stderr,
            flush=True,
        )
        try:
            await agent.run()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    asyncio.run(main())
    return 0
