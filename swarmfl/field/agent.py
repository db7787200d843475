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

from swarmfl.agent import Agent
from swarmfl.clock import LoopClock, ThreadedCompute
from swarmfl.config.drone_file import LoadedDroneConfig
from swarmfl.drone import AssembledDrone, DeviceProfile, DroneAssembly, SwarmSettings
from swarmfl.errors import ConfigError, RadioError, SwarmError
from swarmfl.field.autopilot import AutopilotFeed
from swarmfl.field.checkpoint import CheckpointStore, SaveFailures
from swarmfl.field.footprint import check_process_budget, process_plan
from swarmfl.field.identity import SWARM_KEY_WARNING, load_identity
from swarmfl.field.journal import PeerPresence
from swarmfl.field.radios import FieldRadio, open_discovery, open_radio
from swarmfl.field.resume import DroneCheckpoints
from swarmfl.field.systemd import SystemdNotifier
from swarmfl.field.telemetry import (
    STATUS_VERSION,
    MergeLag,
    PeerMemory,
    StatusLog,
    finite_or_none,
)
from swarmfl.learning.seam import StepResult
from swarmfl.radio.discovery import Discovery, PeerInfo, ZeroconfDiscovery
from swarmfl.radio.mqtt import MqttRadio
from swarmfl.radio.udp import MulticastUdpRadio, UdpRadio

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
        backend=training.backend,
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
        # First: a drone without its keys is refused before any work or any other log line.
        self.identity = load_identity(config, source=str(loaded.source))
        if config.training.threads is not None:  # torch backend only (the config refuses it)
            import torch

            torch.set_num_threads(config.training.threads)
        self.assembly = DroneAssembly(drone_settings(loaded))
        self.parts: AssembledDrone = self.assembly.build(
            self.drone_id, config.data.shard, field_device(loaded), identity=self.identity
        )
        self.description = _data_description(loaded)
        self.process_plan = process_plan(
            self.assembly, self.parts, neighbour_replicas=config.training.neighbour_replicas
        )
        check_process_budget(self.process_plan, config.training.process_budget_bytes)
        self.learner = self.parts.learner
        self.node = self.parts.node
        self.plan = self.parts.plan
        self.signature = self.assembly.signature
        self.trains = self.parts.trains
        if self.plan is not None:
            log.debug("drone %d: memory plan: %s", self.drone_id, self.plan.describe())
        self.compute = ThreadedCompute()
        self.vehicle = AutopilotFeed(config.vehicle) if config.vehicle is not None else None
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
        self.rounds_trained = 0  # this run's rounds that trained (the policy may skip some)
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
        self._peer_memory = PeerMemory()
        self.save_failures = SaveFailures()
        self.notifier = SystemdNotifier()
        self._presence = PeerPresence(lost_after_s=max(5 * config.gossip.period_s, 2.0))
        self._progress_mono = time.monotonic()

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
            path = await asyncio.to_thread(self.checkpoints.store.save, checkpoint)
        except SwarmError as exc:  # a full or read-only disk: keep flying, say so once
            line = self.save_failures.failed(exc)
            if line is not None:
                log.warning("drone %d: %s", self.drone_id, line)
            else:
                log.debug("drone %d: %s", self.drone_id, exc)
        else:
            recovered = self.save_failures.succeeded()
            if recovered is not None:
                log.warning("drone %d: %s", self.drone_id, recovered)
            log.info(
                "drone %d: checkpoint written: %s (%s rounds)",
                self.drone_id,
                path,
                checkpoint.meta.get("rounds"),
            )

    async def _save_now(self) -> None:
        await self._save_quietly(
            self.checkpoints.snapshot(rounds=self.rounds_total, accuracy=self.accuracy)
        )

    # -- status ---------------------------------------------------------------------------------

    def _evaluate(self) -> None:
        evaluation = self.learner.evaluate(self.assembly.x_eval, self.assembly.y_eval)
        self.accuracy, self.loss = evaluation.accuracy, evaluation.loss
        self._evaluated_at = time.monotonic()
        log.info(
            "drone %d: accuracy %.4f, loss %.4f after %d rounds",
            self.drone_id,
            evaluation.accuracy,
            evaluation.loss,
            self.rounds_total,
        )

    def status(self) -> dict[str, Any]:
        """The drone's live status record (what status lines, telemetry and queries carry)."""
        now = asyncio.get_running_loop().time()
        stats = self.node.stats
        radio = self.radio
        announced = self._announced()
        wall = time.time()
        heard = self.node.known_peers()
        # mDNS keeps a crashed drone's record for many minutes: a record withdrawn is a goodbye
        # (or, much later, an expiry), which ``swarmfl status`` shows as "stopped".
        self._peer_memory.update(
            set(announced) if isinstance(self.discovery, ZeroconfDiscovery) else None,
            {peer: wall - (now - heard_at) for peer, heard_at in heard.items()},
            wall,
        )
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
            "rounds_trained": self.rounds_trained,
            "training": self.agent.trains if self.agent is not None else False,
            "transmitting": self.agent.transmits if self.agent is not None else False,
            "counter": self.node.counter,
            "resumed_from": self.resumed_from,
            "accuracy": finite_or_none(self.accuracy),
            "loss": finite_or_none(self.loss),
            "train_loss": finite_or_none(self.train_loss),
            "peers_announced": sorted(announced),
            "peers_heard": {
                str(peer): round(now - heard_at, 6) for peer, heard_at in sorted(heard.items())
            },
            "peers_left": self._peer_memory.left(wall),
            "peers_lost": self._peer_memory.lost(wall),
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
            "checkpoint_failures": self.save_failures.count,
            "checkpoint_error": self.save_failures.reason,
            "uptime_s": round(time.monotonic() - self._started_mono, 1),
            **self._robustness_status(),
        }
        if isinstance(radio, UdpRadio):
            with contextlib.suppress(SwarmError):
                record["port"] = radio.local_port
            record["unique_bytes_sent"] = radio.unique_bytes_sent  # bytes_sent: all copies
            if isinstance(radio, MulticastUdpRadio):
                record["multicast"] = f"{radio.group}:{radio.group_port}"
            record.update(radio.peer_counters())
        if isinstance(radio, MqttRadio):
            record["broker"] = "connected" if radio.connected else "disconnected"
        if radio is not None:
            record.update(radio.counters())
        if self.vehicle is not None:
            record["vehicle"] = self.vehicle.status_record()
        return record

    def _robustness_status(self) -> dict[str, Any]:
        """The merge rule, what its robust merges did (per peer: merges entered, clipped,
        judged outliers, share of values trimmed), the peers suspected of attacking, and the
        privacy spent under DP-SGD (None without DP)."""
        stats = self.node.stats
        privacy = getattr(self.learner, "privacy", None)
        return {
            "merge_rule": self.node.config.merge.rule,
            "robust_merges": stats.robust_merges,
            "replicas_clipped": stats.replicas_clipped,
            "replicas_excluded": stats.replicas_excluded,
            "merge_conduct": {
                str(peer): {
                    "merges": c.merges,
                    "clipped": c.clipped,
                    "outliers": c.outliers,
                    "trimmed": round(c.trimmed_values / c.values, 6) if c.values else 0.0,
                }
                for peer, c in sorted(self.node.conduct().items())
            },
            "suspects": self.node.suspects(),
            "epsilon": None if privacy is None else round(privacy.epsilon(), 6),
            "delta": None if privacy is None else privacy.config.delta,
        }

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
            self._report_peers()

    def _report_peers(self) -> None:
        now = asyncio.get_running_loop().time()
        for line in self._presence.update(self.node.known_peers(), now):
            log.info("drone %d: %s", self.drone_id, line)

    def _healthy(self) -> bool:
        """Whether the gossip loop made progress lately (else the systemd watchdog starves)."""
        interval_s = self.notifier.watchdog_interval_s or 0.0
        # The ping interval is half of WatchdogSec: a round (training included) may take up to
        # twice WatchdogSec, or three gossip periods, before the pings stop; systemd restarts
        # the agent WatchdogSec later.
        allowed_s = max(4 * interval_s, 3 * self.config.gossip.period_s)
        return time.monotonic() - self._progress_mono <= allowed_s

    def _before_round(self, agent: Agent) -> None:
        """Apply the vehicle policy for the coming period (train? transmit?)."""
        self._progress_mono = time.monotonic()
        if self.vehicle is None:
            return
        decision = self.vehicle.decide()
        agent.trains = self.config.training.enabled and decision.train
        agent.transmits = decision.transmit

    def _on_round(self, agent: Agent, step: StepResult) -> None:
        self._progress_mono = time.monotonic()
        self.rounds_total += 1
        if agent.trains:
            self.rounds_trained += 1
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
        if not self._stop.is_set():
            log.info("drone %d: stopping: last training step, then a checkpoint", self.drone_id)
            self.notifier.stopping("stopping: writing a last checkpoint")
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """Whether a stop was requested."""
        return self._stop.is_set()

    async def _open(self) -> None:
        try:
            await self._open_all()
        except ConfigError as exc:
            if exc.source is not None:
                raise
            raise ConfigError(exc.problem, source=str(self.loaded.source), key=exc.key) from None

    async def _open_all(self) -> None:
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
        try:
            self.checkpoints.begin_life()  # nothing is sent before the epoch is on disk
        except BaseException:
            await self._close()
            raise
        if self.vehicle is not None:
            try:
                await self.vehicle.__aenter__()
            except RadioError as exc:
                await self._close()
                raise ConfigError(str(exc), key="vehicle.connection") from None
            except BaseException:
                await self._close()
                raise

    async def run(self) -> None:
        """Run the drone until :meth:`request_stop` (or a crash, which is re-raised).

        The start-up line is logged once the radio and discovery are open (start-up can no
        longer fail on the config), never before an error line. See the class docstring for the
        errors raised at start-up.
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
            before_round=self._before_round,
        )
        self._evaluate()
        self._state = "resumed" if self.resumed_from is not None else "started"
        if self.resumed_from is not None:
            # Save the advanced sequence numbers at once: crashing again before the next
            # checkpoint must not make this run's numbers be reused.
            await self._save_now()
        self._emit_status()
        self._state = "running"
        started = self.started_line()
        log.info("%s", started)
        if self.identity is None:  # opted out: said once, after start-up can no longer fail
            log.warning(SWARM_KEY_WARNING, self.drone_id)
        self.notifier.ready(started)
        crash: BaseException | None = None
        tasks = [
            asyncio.create_task(self.agent.run(), name=f"drone-{self.drone_id}-agent"),
            asyncio.create_task(self._status_loop(), name=f"drone-{self.drone_id}-status"),
        ]
        if self.notifier.enabled and self.notifier.watchdog_interval_s is not None:
            tasks.append(
                asyncio.create_task(
                    self.notifier.keep_watchdog(LoopClock(), self._healthy),
                    name=f"drone-{self.drone_id}-watchdog",
                )
            )
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
            self.notifier.close()
            if crash is None:
                log.info("drone %d: stopped after %d rounds", self.drone_id, self.rounds_total)
        if crash is not None:
            raise crash

    def started_line(self) -> str:
        """The one line saying the drone is up: who, what data, which radio, what it trains."""
        config = self.config
        radio: str = config.radio.kind
        if isinstance(self.radio, UdpRadio):
            with contextlib.suppress(SwarmError):
                radio = (
                    f"udp radio on {config.radio.udp.host}:{self.radio.local_port} "
                    f"(receive buffer {self.radio.receive_buffer_bytes // 1024} KiB)"
                )
        elif isinstance(self.radio, MqttRadio):
            radio = f"mqtt radio via {config.radio.mqtt.url}"
        resumed = self.resumed_from
        trains = self.plan.describe() if self.plan is not None else "the whole model"
        parts = [
            f"drone {self.drone_id} of swarm {self.swarm_id} started",
            self.description,
            radio,
            f"trains {trains}",
            f"resumed at update {resumed}" if resumed is not None else "fresh start",
            f"{self.parts.backend} backend",
            f"predicted {self.process_plan.describe()}",
        ]
        if self.vehicle is not None:
            parts.append(f"autopilot {self.vehicle.connection}")
        return ", ".join(parts)

    async def _close(self) -> None:
        vehicle = self.vehicle
        if vehicle is not None:
            await vehicle.__aexit__(None, None, None)
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

    async def main() -> None:
        agent = FieldAgent(loaded, resume=resume)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, agent.request_stop)
        try:
            await agent.run()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    asyncio.run(main())
    return 0
