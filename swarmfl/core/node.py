"""The sans-IO gossip node: frames and the time in, frames to send out.

A :class:`GossipNode` does no I/O and reads no clock. The agent (or a test harness) feeds it
frames heard from the radio with :meth:`GossipNode.receive`, asks it to :meth:`GossipNode.mix`
its neighbours' replicas into the local model, and to :meth:`GossipNode.publish` the local model
as frames. The simulator, the UDP agent and the MQTT agent all drive this same object.

Stream rules (CHOCO-style model streams, one per sender):

* A sender keeps the public replica ``x_hat`` of its trained layers: what its neighbours believe
  it holds. Each frame carries ``Q(x - x_hat)`` (a *delta*) or ``Q(x)`` (a *keyframe*, every
  ``keyframe_interval`` frames), and the sender applies the same decoded value to ``x_hat``, so
  the quantisation error is carried into the next frame, never lost.
* Frames of a stream carry consecutive sequence numbers. A receiver that sees a gap drops that
  sender's replica (it would otherwise drift silently), sends a NACK asking for a keyframe (at
  most once per period per sender), and resynchronises on the next keyframe. Loss costs accuracy
  briefly, never correctness.
* Every frame is authenticated (HMAC with the swarm key) and checked against a per-sender replay
  window before it touches any state. A bad frame is counted, logged at debug and dropped.
* Sequence numbers carry the sender's boot epoch in their high bits (:mod:`swarmfl.core.replay`).
  A model frame refused as a replay earns its sender an EPOCH frame (at most one per period per
  sender) naming the newest number heard from it. A node told of a number it has not sent yet
  in this life (it restarted without its saved epoch: a new disk, say) moves to the epoch after
  it, so it is taken back within a period or two, and never by reusing numbers; a hint about a
  number it did send (a replay of its own frame) changes nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from swarmfl.core.codecs import CODECS, DEFAULT_CODEC, CodecName
from swarmfl.core.identity import DroneIdentity, RosterError
from swarmfl.core.ledger import MergeLedger, PeerConduct
from swarmfl.core.merge import Contribution, MergeRule, merge_into, staleness_weight
from swarmfl.core.quant import Quantizer, make_quantizer
from swarmfl.core.replay import MAX_EPOCH, ReplayWindow, epoch_of, epoch_start_seq
from swarmfl.core.robust import median_into, robust_merge_into
from swarmfl.core.stream import StreamDecoder, StreamEncoder
from swarmfl.core.verifier import FrameVerifier
from swarmfl.core.wire import (
    Frame,
    FrameKind,
    codec_id,
    encode_frame,
    epoch_hint,
    epoch_payload,
    nack_payload,
    nack_target,
    payload_view,
    quantizer_for,
)
from swarmfl.errors import ConfigError, FrameDecodeError, StreamGapError

log = logging.getLogger(__name__)

# Model frames and control frames (NACK) have separate sequence spaces, so a NACK never opens a
# gap in the model stream; the replay window keeps one slot per (sender, channel).
_MODEL_CHANNEL = 0
_CONTROL_CHANNEL = 1
_CONTROL_KINDS = frozenset({FrameKind.NACK, FrameKind.EPOCH, FrameKind.HELLO})
_F32 = np.dtype(np.float32)
_LE_F32 = np.dtype("<f4")


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Who this node is and how it gossips. Raises :class:`ConfigError` for bad values."""

    drone_id: int
    swarm_id: int
    signature: bytes
    key: bytes
    layer_offsets: tuple[int, ...]
    trained_layers: tuple[int, ...]
    period_s: float = 1.0
    codec: CodecName = DEFAULT_CODEC
    block_size: int = 128
    keyframe_interval: int = 10
    delta_density: float = 0.5
    merge: MergeRule = field(default_factory=MergeRule)
    identity: DroneIdentity | None = None
    """Per-drone keys (the field's default): frames are signed with this drone's key, only
    frames signed by their sender per the roster are accepted, and rosters spread. None: the
    swarm key's HMAC alone (the simulator's default)."""

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise ConfigError(
                f"must be one of {list(CODECS)}, got {self.codec!r}", key="gossip.codec"
            )
        if not self.period_s > 0:
            raise ConfigError(f"must be > 0, got {self.period_s!r}", key="gossip.period_s")
        if self.keyframe_interval < 1:
            raise ConfigError(
                f"must be >= 1, got {self.keyframe_interval!r}", key="gossip.keyframe_interval"
            )
        if self.identity is not None and self.identity.signer.drone_id != self.drone_id:
            raise ConfigError("the drone key is another drone's", key="identity")
        if len(self.key) < 16:
            raise ConfigError("the swarm key must be at least 16 bytes", key="swarm.key")
        layers = len(self.layer_offsets) - 1
        if not self.trained_layers or any(not 0 <= i < layers for i in self.trained_layers):
            raise ConfigError(
                f"trained layers {self.trained_layers} not within 0..{layers - 1}",
                key="trained_layers",
            )


@dataclass(slots=True)
class NodeStats:
    """Counters of what the node has seen and done."""

    frames_published: int = 0
    payload_bytes: int = 0  # quantised payloads before lz4
    frame_bytes: int = 0  # whole frames as sent (header, lz4-packed payload, tag)
    frames_accepted: int = 0
    frames_rejected: int = 0
    frames_replayed: int = 0
    frames_duplicate: int = 0
    stream_gaps: int = 0
    diverged: int = 0  # local models that held NaN/inf and were replaced by neighbours' merge
    nacks_sent: int = 0
    keyframes_requested: int = 0
    epoch_hints_sent: int = 0  # EPOCH frames telling a restarted peer its epoch is stale
    epoch_restarts: int = 0  # times a peer's EPOCH frame moved this node to a newer epoch
    hellos_sent: int = 0  # HELLO frames built for a unicast radio's candidate addresses
    rosters_adopted: int = 0  # newer rosters heard from peers and adopted
    rosters_refused: int = 0  # ROSTER frames whose roster was not the authority's
    replicas_merged: int = 0  # fresh replicas merged (each heard frame counts once)
    merge_lag_s: float = 0.0  # their total wait between being heard and being merged
    robust_merges: int = 0  # merges by a robust rule (merge.rule other than mean)
    replicas_clipped: int = 0  # replicas the clip rule cut, over all merges
    values_trimmed: int = 0  # replica values trimmed_mean/median left out, over all merges
    replicas_excluded: int = 0  # replicas of suspected peers left out (merge.exclude_suspects)


@dataclass(frozen=True, slots=True)
class NodeState:
    """What a checkpoint keeps of a node so a restarted drone continues its streams.

    ``counter`` is the update counter; ``next_seq`` the sequence number of the next model
    frame (its high bits are the boot epoch); ``control_seq`` the last sequence number used
    for control frames (NACK, EPOCH); ``replay`` the receive windows
    (:meth:`~swarmfl.core.replay.ReplayWindow.export` rows), so a restarted drone refuses what
    it refused before.
    """

    counter: int
    next_seq: int
    control_seq: int
    replay: tuple[tuple[int, int, int], ...] = ()


@dataclass(slots=True)
class PeerReplica:
    """What we hold of one neighbour: its stream decoder and when it last refreshed."""

    decoder: StreamDecoder
    quantizer: Quantizer
    layers: tuple[int, ...]
    codec: int
    block_size: int
    counter: int = 0
    samples: int = 0
    heard_at: float = float("-inf")
    changed_at: float = float("-inf")  # when its values last changed (see GossipNode.mix)
    nacked_at: float = float("-inf")
    merged_heard_at: float = float("-inf")  # heard_at of the replica last merged


def _same_values(previous: np.ndarray | None, values: np.ndarray) -> bool:
    """True if a peer's new replica ``values`` equals its ``previous`` one, value for value."""
    return (
        previous is not None and previous.shape == values.shape and np.array_equal(previous, values)
    )


class GossipNode:
    """One drone's gossip protocol state, with no I/O.

    ``receive`` and ``publish`` return the frames to transmit; ``mix`` merges neighbours'
    replicas into a flat parameter vector in place.
    """

    def __init__(self, config: NodeConfig, verifier: FrameVerifier | None = None) -> None:
        self.config = config
        self.stats = NodeStats()
        self.counter = 0
        identity = config.identity
        self._signer = identity.signer if identity is not None else None
        self._verifier = verifier or FrameVerifier(
            config.key,
            config.swarm_id,
            config.signature,
            senders=identity.senders if identity is not None else None,
        )
        if verifier is not None and (
            verifier.key != config.key
            or verifier.swarm_id != config.swarm_id
            or verifier.signature != config.signature
        ):
            raise ConfigError("the shared verifier is for another swarm, key or model")
        offsets = config.layer_offsets
        self._trained = tuple(sorted(set(config.trained_layers)))
        self._all_layers = self._trained == tuple(range(len(offsets) - 1))
        self._trained_slices = [slice(offsets[i], offsets[i + 1]) for i in self._trained]
        size = sum(s.stop - s.start for s in self._trained_slices)
        # fp32 frames are exact snapshots: sending each one as a keyframe makes them immune to loss.
        interval = 1 if config.codec == "fp32" else config.keyframe_interval
        quantizer = make_quantizer(config.codec, config.block_size)
        self._codec_id = codec_id(quantizer)
        # A factory, so that import_state can restart the stream at another sequence number.
        self._new_encoder = functools.partial(
            StreamEncoder, quantizer, size, interval, delta_density=config.delta_density
        )
        self._encoder = self._new_encoder()
        self._control_seq = 0
        self._epoch = 0
        self._replay = ReplayWindow(64)
        self._epoch_hinted_at: dict[int, float] = {}
        self.epoch_listener: Callable[[int], None] | None = None
        """Called with the new epoch before the first frame of an epoch a peer's EPOCH frame
        moved this node to (a field drone persists it there)."""
        self._peers: dict[int, PeerReplica] = {}
        self._scratch: np.ndarray | None = None
        self._ledger = MergeLedger(config.merge.suspect_window, config.merge.suspect_fraction)

    # -- what we send -------------------------------------------------------------------------

    def publish(self, x: np.ndarray, samples: int, now: float) -> list[bytes]:
        """Count one local update and return the frame carrying the trained layers of ``x``.

        Raises :class:`~swarmfl.core.quant.NonFiniteError` (a :class:`ConfigError`) if the model
        holds NaN or Inf: a diverged model is never sent.
        """
        self.counter += 1
        values = x if self._all_layers else np.concatenate([x[s] for s in self._trained_slices])
        previous = self._encoder.replica
        # A lossless keyframe is lent, not copied: its payload is copied once, into the frame,
        # and the replica is then a view of the frame's (immutable) bytes.
        packet = self._encoder.encode(values, borrow=True)
        lent = isinstance(packet.payload, memoryview)
        frame = Frame(
            kind=FrameKind.KEY if packet.kind == "key" else FrameKind.DELTA,
            swarm_id=self.config.swarm_id,
            sender=self.config.drone_id,
            signature=self.config.signature,
            seq=packet.seq,
            counter=self.counter,
            layers=self._trained,
            samples=samples,
            codec=self._codec_id,
            block_size=self.config.block_size,
            payload=b"" if lent else packet.payload,
        )
        data = encode_frame(frame, self.config.key, self._signer, payload=packet.payload)
        if lent:
            view = payload_view(data)
            frame = dataclasses.replace(frame, payload=view)
            self._encoder.adopt(np.frombuffer(view, dtype=_LE_F32).astype(_F32, copy=False))
        self.stats.frames_published += 1
        self.stats.payload_bytes += len(packet.payload)
        self.stats.frame_bytes += len(data)
        # In the simulator the verifier is shared: receivers then skip re-verifying our frame
        # and decoding it (our replica is exactly what they would decode): a keyframe's
        # receivers take our replica, a delta's receivers that hold our previous one take it.
        self._verifier.remember(
            data, frame, self._encoder.replica, previous if packet.kind == "delta" else None
        )
        if self.config.identity is not None and packet.kind == "key":
            # With every keyframe, the roster we hold: newer rosters (revocations) spread.
            return [data, self._control(FrameKind.ROSTER, self.config.identity.roster_bytes)]
        return [data]

    def _nack(self, target: int) -> bytes:
        self.stats.nacks_sent += 1
        return self._control(FrameKind.NACK, nack_payload(target))

    def _control(self, kind: FrameKind, payload: bytes) -> bytes:
        self._control_seq += 1
        frame = Frame(
            kind=kind,
            swarm_id=self.config.swarm_id,
            sender=self.config.drone_id,
            signature=self.config.signature,
            seq=self._control_seq,
            counter=self.counter,
            layers=(),
            samples=0,
            codec=0,
            block_size=self.config.block_size,
            payload=payload,
        )
        return encode_frame(frame, self.config.key, self._signer)

    # -- what we hear -------------------------------------------------------------------------

    def hello(self, target: int) -> bytes:
        """A small authenticated HELLO frame for drone ``target``: what a unicast radio sends
        to an address discovery reported for ``target``, so that drone can confirm where we
        are. Naming the target keeps a HELLO sent to a forged address from confirming us
        elsewhere: only ``target`` takes it as evidence."""
        self.stats.hellos_sent += 1
        return self._control(FrameKind.HELLO, nack_payload(target))

    def receive(self, data: bytes, now: float) -> list[bytes]:
        """Take one frame heard from the radio; return frames to send in reply (NACKs).

        Never raises for a bad frame: it is counted, logged at debug and dropped.
        """
        return self.receive_from(data, now)[1]

    def receive_from(self, data: bytes, now: float) -> tuple[int | None, list[bytes]]:
        """As :meth:`receive`, and say who sent the frame: its sender's drone id if it
        authenticated and was fresh (not a replay), else None. A unicast radio confirms the
        frame's source address as that drone's only then."""
        try:
            frame = self._verifier.decode(data)
        except FrameDecodeError as exc:
            self.stats.frames_rejected += 1
            log.debug("drone %d: dropped a frame: %s", self.config.drone_id, exc)
            return None, []
        if frame.sender == self.config.drone_id:
            return None, []
        if frame.kind == FrameKind.ROSTER:
            # The authority signed the roster, its sender did not sign the frame: no evidence
            # of who or where the sender is, and no move of its replay windows. An old roster
            # replayed is refused by its version.
            self._on_roster(frame)
            return None, []
        control = frame.kind in _CONTROL_KINDS
        window = frame.sender * 2 + (_CONTROL_CHANNEL if control else _MODEL_CHANNEL)
        try:
            self._replay.check_and_update(window, frame.seq)
        except FrameDecodeError as exc:
            self.stats.frames_replayed += 1
            log.debug("drone %d: %s from %d", self.config.drone_id, exc, frame.sender)
            return None, [] if control else self._stale_epoch(frame, window, now)
        if frame.kind == FrameKind.NACK:
            return frame.sender, self._on_nack(frame)
        if frame.kind == FrameKind.EPOCH:
            return frame.sender, self._on_epoch(frame)
        if frame.kind in (FrameKind.KEY, FrameKind.DELTA):
            return frame.sender, self._on_model(frame, now)
        if frame.kind == FrameKind.HELLO and frame.payload == nack_payload(self.config.drone_id):
            return frame.sender, []
        return None, []  # a HELLO for another drone (relayed by whoever it was sent to)

    def _stale_epoch(self, frame: Frame, window: int, now: float) -> list[bytes]:
        """An EPOCH frame telling the sender of a refused model frame the newest number heard
        from it, at most once a period (only a sender that has not sent it yet acts on it)."""
        highest = self._replay.highest(window)
        if highest is None:
            return []
        if now - self._epoch_hinted_at.get(frame.sender, float("-inf")) < self.config.period_s:
            return []
        self._epoch_hinted_at[frame.sender] = now
        self.stats.epoch_hints_sent += 1
        return [self._control(FrameKind.EPOCH, epoch_payload(frame.sender, highest))]

    def _on_epoch(self, frame: Frame) -> list[bytes]:
        target, seen_seq = epoch_hint(frame)
        seen_epoch = epoch_of(seen_seq)
        # A number we have not sent in this life was heard: an earlier life used it.
        if (
            target == self.config.drone_id
            and self._encoder.next_seq <= seen_seq
            and (seen_epoch < MAX_EPOCH)
        ):
            log.info(
                "drone %d: drone %d heard epoch %d of us: moving to epoch %d",
                self.config.drone_id,
                frame.sender,
                seen_epoch,
                seen_epoch + 1,
            )
            self.start_epoch(seen_epoch + 1)
            self.stats.epoch_restarts += 1
        return []

    @property
    def epoch(self) -> int:
        """The boot epoch this node's frames carry (the high bits of their numbers)."""
        return self._epoch

    def start_epoch(self, epoch: int) -> None:
        """Number the next frames from the start of boot epoch ``epoch`` (model stream and
        control frames); the next model frame is a keyframe. Tells :attr:`epoch_listener` first.

        Raises :class:`ConfigError` if ``epoch`` is not in [0, MAX_EPOCH] or is older than the
        current one.
        """
        first = epoch_start_seq(epoch)
        if epoch < self._epoch:
            raise ConfigError(f"epoch {epoch} is older than {self._epoch}", key="epoch")
        if self.epoch_listener is not None:
            self.epoch_listener(epoch)
        self._epoch = epoch
        self._encoder = self._new_encoder(first_seq=first)
        self._encoder.force_keyframe()
        self._control_seq = first

    def _on_roster(self, frame: Frame) -> None:
        identity = self.config.identity
        if identity is None:
            return
        try:
            adopted = identity.offer(bytes(frame.payload))
        except RosterError as exc:
            self.stats.rosters_refused += 1
            log.debug("drone %d: roster from %d: %s", self.config.drone_id, frame.sender, exc)
            return
        if adopted:
            self.stats.rosters_adopted += 1
            log.info("drone %d: adopted roster version %d", self.config.drone_id, identity.version)

    def _on_nack(self, frame: Frame) -> list[bytes]:
        if nack_target(frame) == self.config.drone_id:
            self._encoder.force_keyframe()
            self.stats.keyframes_requested += 1
        return []

    def _on_model(self, frame: Frame, now: float) -> list[bytes]:
        offsets = self.config.layer_offsets
        if not frame.layers or frame.layers[-1] >= len(offsets) - 1:
            self.stats.frames_rejected += 1
            log.debug(
                "drone %d: frame from %d names unknown layers", self.config.drone_id, frame.sender
            )
            return []
        peer = self._peers.get(frame.sender)
        if peer is None or (peer.layers, peer.codec, peer.block_size) != (
            frame.layers,
            frame.codec,
            frame.block_size,
        ):
            quantizer = quantizer_for(frame)  # decode_frame checked codec and block size
            size = sum(offsets[i + 1] - offsets[i] for i in frame.layers)
            peer = PeerReplica(
                StreamDecoder(quantizer, size),
                quantizer,
                frame.layers,
                frame.codec,
                frame.block_size,
            )
            self._peers[frame.sender] = peer
        previous = peer.decoder.replica
        try:
            if frame.kind == FrameKind.KEY:
                decoded = self._verifier.keyframe_values(frame, peer.quantizer, peer.decoder.size)
                values = peer.decoder.apply_key(frame.seq, decoded)
            else:
                shared = self._verifier.delta_values(frame)
                if shared is not None and peer.decoder.follow(frame.seq, *shared):
                    values = peer.decoder.replica
                else:
                    values = peer.decoder.apply(
                        "delta", frame.seq, frame.payload, peer.decoder.size
                    )
        except StreamGapError:
            self.stats.stream_gaps += 1
            if now - peer.nacked_at >= self.config.period_s:
                peer.nacked_at = now
                return [self._nack(frame.sender)]
            return []
        except FrameDecodeError as exc:
            self.stats.frames_rejected += 1
            log.debug("drone %d: bad payload from %d: %s", self.config.drone_id, frame.sender, exc)
            return []
        if values is None:
            self.stats.frames_duplicate += 1
            return []
        self.stats.frames_accepted += 1
        peer.counter = frame.counter
        peer.samples = frame.samples
        peer.heard_at = now
        # Under a robust rule a model sent again unchanged (a free rider's) keeps its age.
        if self.config.merge.rule == "mean" or not _same_values(previous, values):
            peer.changed_at = now
        return []

    # -- merging ------------------------------------------------------------------------------

    def staleness(self, peer_id: int, now: float) -> float:
        """Age of what we hold of ``peer_id``, in gossip periods (inf if we hold nothing).

        Under a robust ``merge.rule`` the age runs from when its values last changed: a peer
        that sends the same model again brings nothing new (see :meth:`mix`).
        """
        peer = self._peers.get(peer_id)
        if peer is None or peer.decoder.replica is None:
            return float("inf")
        return (now - peer.changed_at) / self.config.period_s

    def mix(self, x: np.ndarray, now: float) -> int:
        """Merge every live replica into ``x`` in place; return how many contributed.

        Replicas older than the merge cut-off are forgotten (their senders resync with a
        keyframe if they come back). A robust ``merge.rule`` also counts, per peer, how its
        replica fared (see :meth:`conduct` and :meth:`suspects`), and with
        ``merge.exclude_suspects`` leaves suspected peers out; ``mean`` counts nothing.

        Under a robust rule a replica's staleness weight is that of its *values*: a peer that
        keeps sending the same model (a free rider re-sending its initial or an old model)
        gets the weight of when that model was first heard. Past the cut-off its replica is
        measured but not merged, and judged an outlier, so a peer that does so for most of its
        recent merges is named a suspect. Such a model is not always far from us: a drone with
        two free riders among four neighbours is pulled back to their model, so distance alone
        does not catch them; an honest drone's model changes every period (it trains and
        merges).
        """
        peer_ids, contributions, expired, repeated = self._live(now, merging=True)
        for peer_id in expired:
            del self._peers[peer_id]
        if self.config.merge.rule == "mean":
            if self._scratch is None or self._scratch.shape != x.shape:
                self._scratch = np.empty_like(x)
            merge_into(x, self.config.layer_offsets, contributions, self._scratch)
            return len(contributions)
        if not contributions:
            return 0
        left_out = set(repeated)
        if self.config.merge.exclude_suspects:
            left_out.update(self._ledger.suspects())
        excluded = tuple(k for k, peer_id in enumerate(peer_ids) if peer_id in left_out)
        outcomes = robust_merge_into(
            x, self.config.layer_offsets, contributions, self.config.merge, excluded=excluded
        )
        for k, peer_id in enumerate(peer_ids):
            if peer_id in repeated:
                outcomes[k] = dataclasses.replace(outcomes[k], outlier=True)
        self._ledger.record(peer_ids, outcomes)
        self.stats.robust_merges += 1
        self.stats.replicas_clipped += sum(o.clipped for o in outcomes)
        self.stats.values_trimmed += sum(o.trimmed_values for o in outcomes)
        self.stats.replicas_excluded += len(excluded)
        return len(contributions) - len(excluded)

    def live_replicas(self, now: float) -> dict[int, Contribution]:
        """The replicas a merge at ``now`` would use, by peer id, with their staleness weights.

        The values are read-only views of what this node decoded from the frames it heard.
        """
        peer_ids, contributions, _, repeated = self._live(now, merging=False)
        return {
            peer_id: contribution
            for peer_id, contribution in zip(peer_ids, contributions, strict=True)
            if peer_id not in repeated
        }

    def _live(
        self, now: float, *, merging: bool
    ) -> tuple[list[int], list[Contribution], list[int], set[int]]:
        """Live peers and their contributions at ``now``, the peers past the cut-off, and the
        live peers whose values are past it (``repeated``: they sent them again unchanged;
        their contribution has the weight of their last frame).

        ``merging`` counts each fresh replica's wait in the merge-lag statistics.
        """
        peer_ids = []
        contributions = []
        expired = []
        repeated = set()
        for peer_id, peer in self._peers.items():
            replica = peer.decoder.replica
            if replica is None:
                continue
            weight = staleness_weight(
                (now - peer.heard_at) / self.config.period_s, self.config.merge
            )
            if weight == 0.0:
                expired.append(peer_id)
                continue
            if peer.changed_at < peer.heard_at:  # heard again, unchanged: its values' age
                age = staleness_weight(
                    (now - peer.changed_at) / self.config.period_s, self.config.merge
                )
                if age == 0.0:
                    repeated.add(peer_id)
                else:
                    weight = age
            if merging and peer_id not in repeated and peer.merged_heard_at != peer.heard_at:
                peer.merged_heard_at = peer.heard_at
                self.stats.replicas_merged += 1
                self.stats.merge_lag_s += now - peer.heard_at
            contributions.append(Contribution(peer.layers, replica, weight))
            peer_ids.append(peer_id)
        return peer_ids, contributions, expired, repeated

    def adopt_neighbours(self, x: np.ndarray, now: float) -> int:
        """Replace ``x`` (a diverged model) by the merge of the live replicas alone.

        Returns how many replicas contributed; with none, ``x`` is left as it is. Under a
        robust rule, ``x`` restarts from the neighbours' coordinate-wise weighted median (robust
        whatever the rule) and is then merged by the rule; layers no replica carries become 0.
        """
        if self.config.merge.rule != "mean":
            live = list(self.live_replicas(now).values())
            if not live:
                return 0
            x[:] = 0.0
            median_into(x, self.config.layer_offsets, live, self_weight=0.0)
            return self.mix(x, now)
        held = np.array(x, copy=True)
        x[:] = 0.0
        merged = self.mix(x, now)
        if merged == 0:
            x[:] = held
            return 0
        # mix() computed (0 + sum w r) / (1 + sum w): rescale to drop the zero self-weight.
        weights = sum(
            staleness_weight((now - peer.heard_at) / self.config.period_s, self.config.merge)
            for peer in self._peers.values()
            if peer.decoder.replica is not None
        )
        if weights > 0:
            x *= (1.0 + weights) / weights
        return merged

    def conduct(self) -> dict[int, PeerConduct]:
        """How each peer's replicas fared in this node's robust merges, by peer id."""
        return self._ledger.table()

    def suspects(self) -> list[int]:
        """Peers judged outliers in most of their recent robust merges: suspected attackers.

        A peer is suspected when at least ``merge.suspect_fraction`` of its last
        ``merge.suspect_window`` merges judged it an outlier (``merge.suspect_ratio`` times
        farther from our model than the radius or the median distance, see
        :mod:`swarmfl.core.robust`; or sending a model again unchanged past the cut-off, see
        :meth:`mix`). Under ``merge.rule = "mean"`` nothing is judged, so nobody
        is suspected.
        """
        return self._ledger.suspects()

    def forget(self, peer_id: int) -> None:
        """Drop the replica held of ``peer_id`` (it left the swarm); its conduct record stays."""
        self._peers.pop(peer_id, None)

    def known_peers(self) -> dict[int, float]:
        """Peers we hold a live replica of, with the time each was last refreshed."""
        return {
            peer_id: peer.heard_at
            for peer_id, peer in self._peers.items()
            if peer.decoder.replica is not None
        }

    def peer_samples(self, peer_id: int) -> int:
        """The training-sample count ``peer_id``'s last accepted frame declared (0 if none)."""
        peer = self._peers.get(peer_id)
        return 0 if peer is None else peer.samples

    # -- checkpoints: state export / import ---------------------------------------------------

    def export_state(self) -> NodeState:
        """The counters, sequence numbers and replay windows a checkpoint must keep (see
        :meth:`import_state`)."""
        replay = tuple((row[0], row[1], row[2]) for row in self._replay.export())
        return NodeState(self.counter, self._encoder.next_seq, self._control_seq, replay)

    def import_state(self, state: NodeState) -> None:
        """Continue from ``state``: update counter, model-stream and control sequence numbers,
        and the replay windows (merged into the ones held: each sender keeps the newer).

        The caller picks sequence numbers above any this drone used before (frames sent after
        the checkpoint was taken carry higher ones, and neighbours refuse a replayed number): a
        field drone starts a new boot epoch. The public replica is not restored: neighbours may
        hold a newer replica of us than the checkpoint does, so the next model frame is a
        keyframe, which resynchronises them all. Peers' replicas are kept. Raises
        :class:`ConfigError` for negative values or malformed windows.
        """
        for name in ("counter", "next_seq", "control_seq"):
            value = getattr(state, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"must be a non-negative int, got {value!r}", key=name)
        self._replay.restore([list(row) for row in state.replay])
        self.counter = state.counter
        self._control_seq = state.control_seq
        self._epoch = epoch_of(state.next_seq)
        self._encoder = self._new_encoder(first_seq=state.next_seq)
        self._encoder.force_keyframe()
