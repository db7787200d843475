"""The field agent: one drone, in real time, on real sockets (``swarmfl agent``).

:class:`FieldAgent` assembles the drone from its ``drone.toml`` with the same
:class:`~swarmfl.drone.DroneAssembly` the simulator uses (data shard, model, plan, learner,
gossip node, link), opens its radio and discovery (:mod:`swarmfl.field.radios`), and runs the
very :class:`~swarmfl.agent.Agent` the simulator runs, with a real clock and training in a
worker thread so the radio and discovery stay responsive.

Lifecycle::

    start   restore the newest good checkpoint (unless --no-resume), bind the radio, announce
    run     merge -> train -> publish every period; receive all the time; status lines
    stop    on SIGINT/SIGTERM (request_stop): the training step in flight finishes, the agent's
            tasks stop, a last checkpoint is written, the radio says goodbye; exit code 0

Restarting continues the drone's streams (:mod:`swarmfl.field.resume`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from swarmfl.agent import Agent
from swarmfl.clock import LoopClock, ThreadedCompute
from swarmfl.config.drone_file import LoadedDroneConfig
from swarmfl.drone import AssembledDrone, DeviceProfile, DroneAssembly, SwarmSettings
from swarmfl.errors import ConfigError, SwarmError
from swarmfl.field.checkpoint import CheckpointStore
from swarmfl.field.identity import load_identity
from swarmfl.field.radios import FieldRadio, open_discovery, open_radio
from swarmfl.field.resume import DroneCheckpoints
from swarmfl.field.telemetry import STATUS_VERSION, MergeLag, StatusLog, finite_or_none
from swarmfl.learning.learner import StepResult
from swarmfl.radio.discovery import Discovery, PeerInfo
from swarmfl.radio.mqtt import MqttRadio
from swarmfl.radio.udp import UdpRadio

__all__ = ["FieldAgent", "drone_settings", "field_device", "run_agent"]

log = logging.getLogger(__name__)


def drone_settings(loaded: LoadedDroneConfig) -> SwarmSettings:
    """The learning settings a drone.toml gives its drone (``data.shards`` shards)."""
    config = loaded.config
    return SwarmSettings(
        seed=config.run.seed,
        swarm_id=config.swarm.swarm_id,
        key=loaded.key,
        shards=config.data.shards,
        data=config.data,
        model=config.model,
        training=config.training,
        gossip=config.gossip,
        merge=config.merge,
        link=config.radio,
        default_mtu=config.radio.default_mtu(),
        eval_samples=config.run.eval_samples,
    )


def field_device(loaded: LoadedDroneConfig) -> DeviceProfile:
    """The drone's device profile: its ``training.budget_bytes``.

    Peers' replicas are budgeted at the whole model's size: a field swarm may mix devices, and
    a peer's frames may carry layers this drone keeps frozen (they are merged).
    """
    training = loaded.config.training
    return DeviceProfile(
        budget_bytes=training.budget_bytes,
        neighbour_replicas=training.neighbour_replicas,
        replica_scope="model",
    )


def _data_description(loaded: LoadedDroneConfig) -> str:
    data = loaded.config.data
    if data.dataset == "npz":
        what = f"npz {data.path}"
    elif data.dataset == "idx":
        what = f"idx {data.images}"
    else:
        what = data.dataset
    return what if data.shards == 1 else f"{what} shard {data.shard}/{data.shards}"


class FieldAgent:
    """One drone of a real swarm, built from its config. ``await run()`` until stopped.

    ``resume`` restores the newest checkpoint that verifies (the default). Raises
    :class:`ConfigError` (naming the config file) for data, model, plan, checkpoint or status
    problems the user must fix (including a checkpoint of another drone, swarm or model);
    :meth:`run` raises :class:`ConfigError` for a radio port in use and
    :class:`~swarmfl.errors.RadioError` for other radio failures.
    """

    def __init__(self, loaded: LoadedDroneConfig, *, resume: bool = True) -> None:
        try:
            self._build(loaded, resume)
        except ConfigError as exc:
            if exc.source is not None:
                raise
            raise ConfigError(exc.problem, source=str(loaded.source), key=exc.key) from None

    def _build(self, loaded: LoadedDroneConfig, resume: bool) -> None:
        config = loaded.config
        self.loaded = loaded
        self.config = config
        self.drone_id = config.drone.id
        self.swarm_id = config.swarm.swarm_id
        if config.training.threads is not None:
            torch.set_num_threads(config.training.threads)
        self.assembly = DroneAssembly(drone_settings(loaded))
        self.identity = load_identity(config, source=str(loaded.source))
        self.parts: AssembledDrone = self.assembly.build(
            self.drone_id, config.data.shard, field_device(loaded), identity=self.identity
        )
        self.description = _data_description(loaded)
        self.learner = self.parts.learner
        self.node = self.parts.node
        self.plan = self.parts.plan
        self.signature = self.assembly.signature
        self.trains = self.parts.trains
        if self.plan is not None:
            log.info("drone %d: memory plan: %s", self.drone_id, self.plan.describe())
        self.compute = ThreadedCompute()
        store_dir = Path(config.checkpoint.dir)
        if store_dir.exists() and not store_dir.is_dir():
            raise ConfigError(f"{store_dir} is not a folder", key="checkpoint.dir")
        self.checkpoints = DroneCheckpoints(
            CheckpointStore(store_dir, keep=config.checkpoint.keep),
            drone_id=self.drone_id,
            swarm_id=self.swarm_id,
            signature=self.signature,
            learner=self.learner,
            node=self.node,
        )
        log_path = config.status.log
        self._status_log = (
            StatusLog(Path(log_path), config.status.log_max_bytes) if log_path else None
        )
        restored = self.checkpoints.restore(resume=resume)
        self.resumed_from = restored.resumed_from
        self.rounds_total = restored.rounds
        self.agent: Agent | None = None
        self.radio: FieldRadio | None = None
        self.discovery: Discovery | None = None
        self.accuracy: float | None = None
        self.loss: float | None = None
        self.train_loss: float | None = None
        self._evaluated_at = -math.inf
        self._state = "starting"
        self._started_mono = time.monotonic()
        self._stop = asyncio.Event()
        self._saving: asyncio.Task[None] | None = None
        self._last_checkpoint_round = self.rounds_total
        self._merge_lag = MergeLag()
        self.checkpoint_failures = 0

    # -- checkpoints ----------------------------------------------------------------------------

    def _save_in_background(self) -> None:
        if self._saving is not None and not self._saving.done():
            return  # the previous save is still being written: skip this one
        # copied now, on the loop: a consistent state
        checkpoint = self.checkpoints.snapshot(rounds=self.rounds_total, accuracy=self.accuracy)
        self._last_checkpoint_round = self.rounds_total
        self._saving = asyncio.get_running_loop().create_task(
            self._save_quietly(checkpoint), name=f"drone-{self.drone_id}-checkpoint"
        )

    async def _save_quietly(self, checkpoint: Any) -> None:
        try:
            await asyncio.to_thread(self.checkpoints.store.save, checkpoint)
        except SwarmError as exc:  # a full or read-only disk: keep flying, say so
            self.checkpoint_failures += 1
            log.warning("drone %d: %s", self.drone_id, exc)

    async def _save_now(self) -> None:
        await self._save_quietly(
            self.checkpoints.snapshot(rounds=self.rounds_total, accuracy=self.accuracy)
        )

    # -- status ---------------------------------------------------------------------------------

    def _evaluate(self) -> None:
        evaluation = self.learner.evaluate(self.assembly.x_eval, self.assembly.y_eval)
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
            "accuracy": finite_or_none(self.accuracy),
            "loss": finite_or_none(self.loss),
            "train_loss": finite_or_none(self.train_loss),
            "peers_announced": sorted(self._announced()),
            "peers_heard": {
                str(peer): round(now - heard_at, 6)
                for peer, heard_at in sorted(self.node.known_peers().items())
            },
            "frames_published": stats.frames_published,
            "frames_accepted": stats.frames_accepted,
            "frames_rejected": stats.frames_rejected,
            "frames_replayed": stats.frames_replayed,
            "epoch": self.node.epoch,
            "epoch_hints_sent": stats.epoch_hints_sent,
            "epoch_restarts": stats.epoch_restarts,
            "roster_version": self.identity.version if self.identity is not None else None,
            "rosters_adopted": stats.rosters_adopted,
            "stream_gaps": stats.stream_gaps,
            "nacks_sent": stats.nacks_sent,
            "merge_lag_s": finite_or_none(self._merge_lag.take_mean_s(stats)),
            "checkpoint_failures": self.checkpoint_failures,
            "uptime_s": round(time.monotonic() - self._started_mono, 1),
        }
        if isinstance(radio, UdpRadio):
            with contextlib.suppress(SwarmError):
                record["port"] = radio.local_port
            record.update(radio.peer_counters())
        if isinstance(radio, MqttRadio):
            record["broker"] = "connected" if radio.connected else "disconnected"
        if radio is not None:
            record.update(radio.counters())
        return record

    def _announced(self) -> dict[int, PeerInfo]:
        return dict(self.discovery.peers()) if self.discovery is not None else {}

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
        if time.monotonic() - self._evaluated_at >= self.config.run.eval_interval_s:
            self._evaluate()
        if (
            self.rounds_total - self._last_checkpoint_round
            >= self.config.checkpoint.interval_rounds
        ):
            self._save_in_background()

    # -- running --------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop soon: the step in flight finishes, then checkpoint and close (run() returns)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """Whether a stop was requested."""
        return self._stop.is_set()

    async def _open(self) -> None:
        self.radio = await open_radio(
            self.loaded,
            self.parts.link_config,
            signature=self.signature,
            trains=self.trains,
            status=self.status,
        )
        try:
            self.discovery = await open_discovery(
                self.loaded, self.radio, signature=self.signature, trains=self.trains
            )
        except BaseException:
            await self.radio.aclose()
            raise

    async def run(self) -> None:
        """Run the drone until :meth:`request_stop` (or a crash, which is re-raised).

        See the class docstring for the errors raised at start-up.
        """
        await self._open()
        assert self.radio is not None
        self.agent = Agent(
            drone_id=self.drone_id,
            learner=self.learner,
            node=self.node,
            radio=self.radio,
            clock=LoopClock(),
            compute=self.compute,
            period_s=self.config.gossip.period_s,
            discovery=self.discovery,
            on_round=self._on_round,
            trains=self.config.training.enabled,
        )
        self._evaluate()
        self._state = "resumed" if self.resumed_from is not None else "started"
        if self.resumed_from is not None:
            # Save the advanced sequence numbers at once: crashing again before the next
            # checkpoint must not make this run's numbers be reused.
            await self._save_now()
        self._emit_status()
        self._state = "running"
        crash: BaseException | None = None
        tasks = [
            asyncio.create_task(self.agent.run(), name=f"drone-{self.drone_id}-agent"),
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
                await self._save_now()
            else:
                self._state = "crashed"
            self._emit_status()
            await self._close()
        if crash is not None:
            raise crash

    async def _close(self) -> None:
        discovery, self.discovery = self.discovery, None
        radio = self.radio
        if discovery is not None and discovery is not radio:
            with contextlib.suppress(SwarmError):
                await discovery.aclose()  # type: ignore[attr-defined]
        if radio is not None:
            await radio.aclose()


def run_agent(loaded: LoadedDroneConfig, *, resume: bool = True) -> int:
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
            f"{agent.description}, {config.radio.kind} radio, trains "
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
