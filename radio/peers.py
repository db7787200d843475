"""Where a unicast radio sends: discovery's hints, confirmed by authenticated frames.

Discovery (mDNS, a static list) is unauthenticated: anyone can announce any drone id at any
address, or say goodbye on another drone's behalf. So an announcement only makes an address a
*candidate*; model traffic goes to a drone's address only once a frame that authenticated as
that drone (and was not a replay) came *from* that address. :class:`PeerTable` keeps both:

* **confirmed peers**: drone id -> the source address of its latest authenticated frame (the
  authenticated address wins over any announcement). They are the only destinations of model
  frames, so the send rate is spent on them alone. A confirmed peer leaves when its authenticated
  frames stop for ``silence_s``, never on a goodbye.
* **candidates**: (drone id, address) pairs discovery reported. Each is sent a small
  authenticated HELLO now and then (:meth:`PeerTable.due_probes`), with exponential back-off for
  addresses that never answer and a cap per round, so that two fresh drones confirm each other
  while 2,000 forged records cost a few small datagrams a period. A goodbye removes a candidate
  only.

Both tables are bounded; when the candidates are full, the ones probed most without an answer go
first. Sans-IO: the time is passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from swarmfl.errors import ConfigError

__all__ = ["PeerTable", "PeerTableStats"]

Address = tuple[str, int]
"""A host (address or name) and a port."""


@dataclass(slots=True)
class PeerTableStats:
    """Counters of the peer table."""

    confirmations: int = 0  # authenticated frames that (re)confirmed a peer's address
    address_changes: int = 0  # confirmed peers whose authenticated address changed
    silent_expired: int = 0  # confirmed peers dropped after silence_s without frames
    candidates_evicted: int = 0  # candidates dropped to make room (the table is bounded)
    probes_sent: int = 0  # HELLO probes sent to candidates


@dataclass(slots=True)
class _Candidate:
    added_at: float
    probes: int = 0
    next_probe_at: float = -math.inf


class PeerTable:
    """Confirmed peers and discovery candidates of one unicast radio (see the module).

    ``silence_s``: a confirmed peer without an authenticated frame for this long is dropped.
    ``probe_interval_s``: the first gap between two probes of one candidate, doubled after each
    unanswered probe up to ``max_probe_interval_s``. ``probes_per_round``: the most candidates
    :meth:`due_probes` returns at once, at most once every ``round_interval_s``. Raises
    :class:`ConfigError` for non-positive values.
    """

    def __init__(
        self,
        *,
        silence_s: float = 10.0,
        probe_interval_s: float = 1.0,
        max_probe_interval_s: float = 60.0,
        probes_per_round: int = 2,
        round_interval_s: float = 1.0,
        max_candidates: int = 256,
        max_peers: int = 1024,
    ) -> None:
        for key, value in (
            ("silence_s", silence_s),
            ("probe_interval_s", probe_interval_s),
            ("max_probe_interval_s", max_probe_interval_s),
            ("probes_per_round", probes_per_round),
            ("round_interval_s", round_interval_s),
            ("max_candidates", max_candidates),
            ("max_peers", max_peers),
        ):
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigError(f"must be a positive number, got {value!r}", key=key)
        self.silence_s = float(silence_s)
        self.probe_interval_s = float(probe_interval_s)
        self.max_probe_interval_s = max(float(max_probe_interval_s), self.probe_interval_s)
        self.probes_per_round = int(probes_per_round)
        self.round_interval_s = float(round_interval_s)
        self._round_at = -math.inf
        self.max_candidates = int(max_candidates)
        self.max_peers = int(max_peers)
        self.stats = PeerTableStats()
        self._confirmed: dict[int, tuple[Address, float]] = {}
        self._candidates: dict[tuple[int, Address], _Candidate] = {}

    # -- discovery's hints --------------------------------------------------------------------

    def hint(self, drone_id: int, address: Address, now: float) -> None:
        """Discovery says ``drone_id`` may be heard at ``address`` (unauthenticated)."""
        key = (drone_id, address)
        if key in self._candidates:
            return
        if len(self._candidates) >= self.max_candidates:
            # Evict the least promising: probed most often without an answer, then the oldest.
            worst = max(
                self._candidates.items(), key=lambda item: (item[1].probes, -item[1].added_at)
            )[0]
            del self._candidates[worst]
            self.stats.candidates_evicted += 1
        self._candidates[key] = _Candidate(now)

    def withdraw(self, drone_id: int) -> None:
        """Discovery says ``drone_id`` left (unauthenticated: only its candidates go)."""
        for key in [key for key in self._candidates if key[0] == drone_id]:
            del self._candidates[key]

    # -- authenticated evidence ---------------------------------------------------------------

    def confirm(self, drone_id: int, address: Address, now: float) -> None:
        """A fresh authenticated frame of ``drone_id`` came from ``address``: send to it there."""
        held = self._confirmed.get(drone_id)
        if held is None and len(self._confirmed) >= self.max_peers:
            self._expire(now)
            if len(self._confirmed) >= self.max_peers:
                oldest = min(self._confirmed.items(), key=lambda item: item[1][1])[0]
                del self._confirmed[oldest]
        if held is not None and held[0] != address:
            self.stats.address_changes += 1
        self._confirmed[drone_id] = (address, now)
        self.stats.confirmations += 1
        candidate = self._candidates.get((drone_id, address))
        if candidate is not None:  # answered: probe it again only if the peer falls silent
            candidate.probes = 0
            candidate.next_probe_at = -math.inf

    # -- what to send where -------------------------------------------------------------------

    def destinations(self, now: float) -> list[Address]:
        """The addresses of the confirmed peers heard within ``silence_s`` (model traffic)."""
        self._expire(now)
        return [address for address, _ in self._confirmed.values()]

    def confirmed(self, now: float) -> dict[int, Address]:
        """Confirmed peers by drone id (after dropping the silent ones)."""
        self._expire(now)
        return {drone_id: address for drone_id, (address, _) in self._confirmed.items()}

    def due_probes(self, now: float) -> list[tuple[int, Address]]:
        """Candidates ``(drone id, address)`` to send a HELLO to now (at most
        ``probes_per_round``), counted as probed: fewest probes first, then the newest.
        Candidates of a drone confirmed at any address are skipped."""
        self._expire(now)
        if now - self._round_at < self.round_interval_s:
            return []
        due = [
            (candidate.probes, candidate.added_at, key)
            for key, candidate in self._candidates.items()
            if candidate.next_probe_at <= now and key[0] not in self._confirmed
        ]
        # Fewest probes first, then the newest: a drone announced during a flood of forged
        # records is tried at once, and addresses that never answer fall behind.
        due.sort(key=lambda item: (item[0], -item[1]))
        chosen = []
        for _, _, key in due[: self.probes_per_round]:
            candidate = self._candidates[key]
            candidate.next_probe_at = now + min(
                self.max_probe_interval_s, self.probe_interval_s * 2**candidate.probes
            )
            candidate.probes = min(candidate.probes + 1, 32)
            chosen.append(key)
        self.stats.probes_sent += len(chosen)
        if chosen:
            self._round_at = now
        return chosen

    def has_due_probes(self, now: float) -> bool:
        """Whether :meth:`due_probes` would return an address now."""
        return now - self._round_at >= self.round_interval_s and any(
            candidate.next_probe_at <= now and key[0] not in self._confirmed
            for key, candidate in self._candidates.items()
        )

    def _expire(self, now: float) -> None:
        silent = [
            drone_id
            for drone_id, (_, heard_at) in self._confirmed.items()
            if now - heard_at > self.silence_s
        ]
        for drone_id in silent:
            del self._confirmed[drone_id]
        self.stats.silent_expired += len(silent)

    def __len__(self) -> int:
        """Confirmed peers held (silent ones included until the next query)."""
        return len(self._confirmed)

    @property
    def candidate_count(self) -> int:
        """Candidates held."""
        return len(self._candidates)
