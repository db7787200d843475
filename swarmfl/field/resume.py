"""What a restarted field drone continues from: its checkpoint and its stream numbers.

:class:`DroneCheckpoints` turns a drone's live state (model, SGD momentum, update counter,
stream sequence numbers, replay windows, rounds) into a
:class:`~swarmfl.core.checkpoint.Checkpoint` and back. Each start begins a new boot epoch
(:class:`~swarmfl.field.epoch.BootEpochFile`), persisted before the first frame, so the drone's
numbers are above anything an earlier life sent whatever its clock says, and neighbours take its
frames as a continuation, not a replay. The receive windows come back too: a frame the previous
life refused (or accepted) is refused after the restart.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass

import numpy as np

from swarmfl.core.checkpoint import Checkpoint
from swarmfl.core.node import GossipNode, NodeState
from swarmfl.core.replay import MAX_EPOCH, epoch_of, epoch_start_seq
from swarmfl.errors import CheckpointError, ConfigError
from swarmfl.field.checkpoint import CheckpointStore
from swarmfl.field.epoch import BootEpochFile
from swarmfl.learning.flatlearner import FlatLearner

__all__ = ["DroneCheckpoints", "Restored", "next_boot_epoch"]

log = logging.getLogger(__name__)


def next_boot_epoch(saved_epoch: int, checkpoint_seqs: tuple[int, ...] = ()) -> int:
    """The boot epoch of a new life: one past the saved epoch and past the epochs of the
    sequence numbers a checkpoint holds (its file may be older or newer than the epoch file).

    Raises :class:`ConfigError` once the epochs are exhausted (2**32 - 1 lives).
    """
    epoch = max([saved_epoch, *(epoch_of(seq) for seq in checkpoint_seqs)]) + 1
    if epoch > MAX_EPOCH:
        raise ConfigError("the boot epochs are exhausted", key="checkpoint.dir")
    return epoch


@dataclass(frozen=True)
class Restored:
    """What :meth:`DroneCheckpoints.restore` brought back: the update counter it resumed at
    (None: a fresh start) and the rounds trained in earlier lives."""

    resumed_from: int | None
    rounds: int


class DroneCheckpoints:
    """Saves and restores one drone's learning state in a :class:`CheckpointStore`.

    A checkpoint belongs to one drone of one swarm and one model (``signature``); restoring
    another's raises :class:`ConfigError` naming ``checkpoint.dir``.
    """

    def __init__(
        self,
        store: CheckpointStore,
        *,
        drone_id: int,
        swarm_id: int,
        signature: bytes,
        learner: FlatLearner,
        node: GossipNode,
    ) -> None:
        self.store = store
        self.drone_id = drone_id
        self.swarm_id = swarm_id
        self.signature = signature
        self.learner = learner
        self.node = node
        self.epoch_file = BootEpochFile(store.directory)
        self._epoch = 1  # this life's, chosen by restore()
        node.epoch_listener = self._persist_epoch

    def _persist_epoch(self, epoch: int) -> None:
        # A peer's EPOCH frame moved us on: save it before the new epoch's first frame. If the
        # disk fails, the next checkpoint still carries the numbers (and a restart moves past).
        try:
            self.epoch_file.write(epoch)
        except CheckpointError as exc:
            log.warning("drone %d: %s", self.drone_id, exc)

    def restore(self, *, resume: bool) -> Restored:
        """Load the newest good checkpoint (if ``resume``) into the learner and node, and choose
        a new boot epoch (saved by :meth:`begin_life`, before anything is sent).

        The receive windows of the newest checkpoint are restored even with ``resume=False``
        (a fresh model must not make the drone accept frames it refused). Raises
        :class:`ConfigError` for a checkpoint of another drone, swarm or model.
        """
        latest = self.store.load_latest()
        checkpoint = latest if resume else None
        counter = 0
        restored = Restored(None, 0)
        if checkpoint is not None:
            self._load(checkpoint)
            # A checkpoint from before the schedule existed has none: its schedule starts over.
            self.learner.rounds_trained = _int_or_zero(checkpoint.meta.get("local_rounds"))
            counter = checkpoint.counter
            restored = Restored(checkpoint.counter, int(checkpoint.meta.get("rounds", 0)))
            log.debug("drone %d: resumed from checkpoint %d", self.drone_id, checkpoint.counter)
        seqs: tuple[int, ...] = ()
        replay: tuple[tuple[int, int, int], ...] = ()
        if latest is not None and self._ours(latest):
            seqs = (latest.seq, _int_or_zero(latest.meta.get("control_seq")))
            replay = _windows(latest.meta.get("replay"), str(self.store.directory))
        epoch = next_boot_epoch(self.epoch_file.read(), seqs)
        self._epoch = epoch
        start = epoch_start_seq(epoch)
        self.node.import_state(
            NodeState(counter=counter, next_seq=start, control_seq=start, replay=replay)
        )
        return restored

    def begin_life(self) -> None:
        """Save this life's boot epoch (chosen by :meth:`restore`) to disk, fsynced: call it
        before anything is sent, and not before start-up can no longer fail on the config (a
        refused start leaves nothing behind). Raises :class:`ConfigError` naming
        ``checkpoint.dir`` if it cannot be saved."""
        try:
            self.epoch_file.write(self._epoch)
        except CheckpointError as exc:
            raise ConfigError(str(exc), key="checkpoint.dir") from None
        log.debug("drone %d: boot epoch %d", self.drone_id, self._epoch)

    def _ours(self, checkpoint: Checkpoint) -> bool:
        return (
            checkpoint.drone_id == self.drone_id
            and checkpoint.meta.get("swarm_id") == self.swarm_id
        )

    def _load(self, checkpoint: Checkpoint) -> None:
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
            or params.shape != flat.shape
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

    def snapshot(self, *, rounds: int, accuracy: float | None) -> Checkpoint:
        """The drone's state now, as a checkpoint (copied: training may go on meanwhile)."""
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
                "epoch": self.node.epoch,
                "replay": [list(row) for row in state.replay],
                "rounds": rounds,
                # the learner's own trained rounds: the learning-rate schedule resumes from them
                "local_rounds": self.learner.rounds_trained,
                "accuracy": accuracy if accuracy is not None and math.isfinite(accuracy) else None,
            },
            created_at=time.time(),
        )


def _int_or_zero(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _windows(rows: object, source: str) -> tuple[tuple[int, int, int], ...]:
    """The replay windows a checkpoint holds (none in a checkpoint written before they were)."""
    if rows is None:
        return ()
    if not isinstance(rows, list) or not all(
        isinstance(row, list) and len(row) == 3 and all(type(v) is int for v in row) for row in rows
    ):
        raise ConfigError(
            "holds malformed replay windows (use --no-resume with another checkpoint.dir)",
            source=source,
            key="checkpoint.dir",
        )
    return tuple((row[0], row[1], row[2]) for row in rows)
