"""Per-peer record of robust merges, and the peers it makes suspect.

A drone's robust merges (:mod:`swarmfl.core.robust`) judge each replica: clipped or not,
values trimmed, outlier or not. :class:`MergeLedger` keeps these counts per peer, and a short
window of recent verdicts from which it names suspected attackers: peers that were outliers in
most of their recent merges. A peer's identity is authenticated (its frames carry valid tags),
so the record follows the drone, not its radio address; the table is bounded all the same.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from swarmfl.core.robust import ReplicaOutcome
from swarmfl.errors import ConfigError


@dataclass(slots=True)
class PeerConduct:
    """How one peer's replicas fared in a drone's robust merges.

    ``merges`` counts the merges its replica entered; ``clipped`` and ``outliers`` those that
    clipped it or judged it an outlier; ``trimmed_values`` of its ``values`` were left out by a
    coordinate-wise rule. ``recent`` holds the outlier verdicts of its last merges.
    """

    merges: int = 0
    clipped: int = 0
    outliers: int = 0
    trimmed_values: int = 0
    values: int = 0
    recent: deque[bool] = field(default_factory=deque)


class MergeLedger:
    """Per-peer counts of robust-merge outcomes, and the peers they make suspect.

    A peer is *suspected* when at least ``ceil(fraction * window)`` of its last ``window``
    merges judged it an outlier (so at least that many merges are needed). The table is bounded
    to ``max_peers`` entries; the peer merged longest ago makes room. Raises
    :class:`ConfigError` for a window below 1, a fraction outside (0, 1] or ``max_peers`` < 1.
    """

    def __init__(self, window: int = 10, fraction: float = 0.6, max_peers: int = 1024) -> None:
        if window < 1:
            raise ConfigError(f"must be >= 1, got {window!r}", key="merge.suspect_window")
        if not 0.0 < fraction <= 1.0:
            raise ConfigError(f"must be in (0, 1], got {fraction!r}", key="merge.suspect_fraction")
        if max_peers < 1:
            raise ConfigError(f"must be >= 1, got {max_peers!r}", key="max_peers")
        self.window = window
        self.needed = max(1, math.ceil(fraction * window - 1e-9))
        self.max_peers = max_peers
        self._peers: OrderedDict[int, PeerConduct] = OrderedDict()

    def record(self, peer_ids: Sequence[int], outcomes: Sequence[ReplicaOutcome]) -> None:
        """Count one merge: ``outcomes[k]`` is what ``peer_ids[k]``'s replica contributed.

        Left-out replicas (weight 0) are not counted.
        """
        for peer_id, outcome in zip(peer_ids, outcomes, strict=True):
            if outcome.weight <= 0.0:
                continue
            conduct = self._peers.get(peer_id)
            if conduct is None:
                conduct = self._peers[peer_id] = PeerConduct(recent=deque(maxlen=self.window))
                if len(self._peers) > self.max_peers:
                    self._peers.popitem(last=False)
            else:
                self._peers.move_to_end(peer_id)
            conduct.merges += 1
            conduct.clipped += outcome.clipped
            conduct.outliers += outcome.outlier
            conduct.trimmed_values += outcome.trimmed_values
            conduct.values += outcome.values
            conduct.recent.append(outcome.outlier)

    def suspects(self) -> list[int]:
        """The suspected attackers' ids, in increasing order."""
        return sorted(
            peer_id
            for peer_id, conduct in self._peers.items()
            if sum(conduct.recent) >= self.needed
        )

    def table(self) -> dict[int, PeerConduct]:
        """Every peer's record (live objects: read, do not modify)."""
        return dict(self._peers)

    def forget(self, peer_id: int) -> None:
        """Drop ``peer_id``'s record."""
        self._peers.pop(peer_id, None)
