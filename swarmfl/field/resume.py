"""What a restarted field drone continues from: its checkpoint and its stream numbers.

:class:`DroneCheckpoints` turns a drone's live state (model, SGD momentum, update counter,
stream sequence numbers, rounds) into a :class:`~swarmfl.core.checkpoint.Checkpoint` and back.
On restore the sequence numbers jump past anything the previous life could have sent (see
:func:`stream_start_seq`), so neighbours take the drone's frames as a continuation, not a
replay.
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
from swarmfl.errors import ConfigError
from swarmfl.field.checkpoint import CheckpointStore
from swarmfl.learning.flatlearner import FlatLearner

__all__ = ["RESTART_SEQ_GAP", "DroneCheckpoints", "Restored", "stream_start_seq"]

log = logging.getLogger(__name__)

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


def stream_start_seq(saved_next_seq: int | None, wall_s: float) -> int:
    """The first sequence number of a (re)started drone's streams.

    The larger of ``saved_next_seq + RESTART_SEQ_GAP`` (if a checkpoint was restored) and the
    wall-clock base ``int(wall_s * 1000) << 20``, capped at 2**63.
    """
    start = max(0, int(wall_s * 1000)) << _TIME_BASE_SHIFT
    if saved_next_seq is not None:
        start = max(start, saved_next_seq + RESTART_SEQ_GAP)
    return min(start, _MAX_START_SEQ)


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

    def restore(self, *, resume: bool) -> Restored:
        """Load the newest good checkpoint (if ``resume``) into the learner and node, and start
        the node's streams above any sequence number an earlier life used.

        Raises :class:`ConfigError` for a checkpoint of another drone, swarm or model.
        """
        checkpoint = self.store.load_latest() if resume else None
        saved_seq: int | None = None
        control_seq = 0
        counter = 0
        restored = Restored(None, 0)
        if checkpoint is not None:
            control_seq = self._load(checkpoint)
            counter, saved_seq = checkpoint.counter, checkpoint.seq
            restored = Restored(checkpoint.counter, int(checkpoint.meta.get("rounds", 0)))
            log.debug("drone %d: resumed from checkpoint %d", self.drone_id, checkpoint.counter)
        start = stream_start_seq(saved_seq, time.time())
        self.node.import_state(
            NodeState(counter=counter, next_seq=start, control_seq=max(start, control_seq))
        )
        return restored

    def _load(self, checkpoint: Checkpoint) -> int:
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
        return int(meta.get("control_seq", 0))

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
                "rounds": rounds,
                "accuracy": accuracy if accuracy is not None and math.isfinite(accuracy) else None,
            },
            created_at=time.time(),
        )
