"""Per-address budgets of refused input: a flood from one address costs one dict lookup a
datagram. Sans-IO.

A radio that reads datagrams from addresses (:class:`~swarmfl.radio.udp.UdpRadio`) keeps one
:class:`SourceGuard`. It charges each *fault* of an address to a token bucket: a datagram the
reassembler refused (garbage, a header that contradicts itself, a first fragment that pushed out
the address's own partial frames) or a whole frame whose swarm tag did not check. An address
that runs out of tokens is *penalized* for ``penalty_s``: its datagrams are then dropped as
they are read, after one dict lookup, and counted. When the penalty lapses the address is heard
again, and ``burst`` more faults (refilled at ``faults_per_s`` in the meantime) penalize it once
more; a steady flood from one address thus costs the receiver about ``burst`` full readings per
``penalty_s``, and one lookup for each of its other datagrams.

Why a spoofed address cannot cut a real peer off
-------------------------------------------------

On a mesh (or with raw sockets anywhere) an attacker can send datagrams with a real peer's
source address, so a penalty keyed by address could be turned against that peer. Three rules
keep that from happening:

* An address the agent **vouched for** is never penalized. The agent vouches for an address
  (:meth:`vouch`) when a fresh, authenticated frame came from it (the same evidence that makes
  it a destination, :meth:`~swarmfl.radio.udp.UdpRadio.confirm_peer`; a replay does not count).
  Its faults are counted (``faults_vouched``) but never charged, and a penalty it had is lifted.
  Datagrams from it always take the full path: reassembly, then the frame's tag (one HMAC),
  which is the only test that tells a peer's frame from a forgery with its address. Flooding a
  real peer's address with forgeries therefore costs the receiver the full price per datagram
  (bounded: a few microseconds) but does not drop the peer's frames.
* Forged frames are refused **before** the per-source frame budget
  (:class:`~swarmfl.radio.link.SourceRateLimit`) is charged, so they cannot use up the budget
  of the address they claim either; only authentic frames are rate limited.
* A penalty is short (``penalty_s``) and bounded in memory: at most ``max_sources`` addresses
  are tracked in each table, the least recently charged forgotten first (an attacker that churns
  source ports gets fresh buckets of ``burst`` faults, never another address's state).

What no receiver can do: tell an address that has never authenticated to it from an attacker
using that address. A drone whose address is flooded before its first frame reached us is heard
within ``penalty_s`` of the flood stopping, or once a frame of it slips in between penalties.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable

from swarmfl.errors import ConfigError
from swarmfl.radio.link import SourceRateLimit

__all__ = ["SourceGuard"]


def _positive(value: object, key: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(f"must be a positive finite number, got {value!r}", key=key)
    return float(value)


class SourceGuard:
    """Fault budgets, penalties and vouched addresses (see the module docstring).

    ``faults_per_s`` and ``burst``: each address's budget of faults; ``penalty_s``: how long an
    address that overspent it is dropped unread; ``vouch_s``: how long an address stays vouched
    for after its last authenticated frame; ``max_sources``: the bound of each table.
    :attr:`penalized` maps a penalized address to the loop time its penalty ends: the reader
    looks addresses up in it directly (the fast path) and calls :meth:`lapse` for an entry whose
    time has passed. Counters only grow.

    Raises :class:`~swarmfl.errors.ConfigError` for a non-positive or non-finite setting.
    """

    __slots__ = (
        "_budget",
        "_burst",
        "_max_sources",
        "_penalty_s",
        "_vouch_s",
        "_vouched",
        "datagrams_penalized",
        "faults",
        "faults_vouched",
        "penalized",
        "penalties",
    )

    def __init__(
        self,
        *,
        faults_per_s: float = 10.0,
        burst: int = 32,
        penalty_s: float = 2.0,
        vouch_s: float = 30.0,
        max_sources: int = 1024,
    ) -> None:
        rate = _positive(faults_per_s, "faults_per_s")
        self._burst = _positive(burst, "burst")
        self._penalty_s = _positive(penalty_s, "penalty_s")
        self._vouch_s = _positive(vouch_s, "vouch_s")
        if isinstance(max_sources, bool) or not isinstance(max_sources, int) or max_sources < 1:
            raise ConfigError(f"must be a positive integer, got {max_sources!r}", key="max_sources")
        self._max_sources = max_sources
        # Each address's fault budget: the token buckets the link keeps for frames, here counted
        # in faults (charged only for addresses not vouched for).
        self._budget = SourceRateLimit(rate, math.ceil(self._burst), max_sources=max_sources)
        # address -> vouched until (loop time); insertion order is recency order.
        self._vouched: OrderedDict[Hashable, float] = OrderedDict()
        #: address -> the loop time its penalty ends (insertion order: oldest penalty first).
        self.penalized: dict[Hashable, float] = {}
        #: Faults charged (from addresses not vouched for).
        self.faults = 0
        #: Faults of vouched addresses (counted, not charged).
        self.faults_vouched = 0
        #: Penalties imposed.
        self.penalties = 0
        #: Datagrams dropped unread because their address was penalized (the reader counts).
        self.datagrams_penalized = 0

    def __len__(self) -> int:
        """Addresses tracked now, in all tables."""
        return len(self._budget) + len(self._vouched) + len(self.penalized)

    def vouched(self, address: Hashable, now: float) -> bool:
        """Whether an authenticated frame came from ``address`` within ``vouch_s`` of ``now``."""
        until = self._vouched.get(address)
        return until is not None and until >= now

    def vouch(self, address: Hashable, now: float) -> None:
        """A fresh authenticated frame came from ``address`` at ``now``: exempt it from
        penalties for ``vouch_s``, and lift the one it has."""
        vouched = self._vouched
        if address in vouched:
            vouched.move_to_end(address)
        elif len(vouched) >= self._max_sources:
            vouched.popitem(last=False)
        vouched[address] = now + self._vouch_s
        self.penalized.pop(address, None)
        self._budget.forget(address)

    def fault(self, address: Hashable, now: float) -> bool:
        """Charge one fault of ``address`` at ``now``; True if that put it under a penalty."""
        if self.vouched(address, now):
            self.faults_vouched += 1
            return False
        self.faults += 1
        if self._budget.allow(address, now):
            return False
        penalized = self.penalized
        penalized.pop(address, None)  # re-inserted last: the dict stays in order of penalty
        if len(penalized) >= self._max_sources:
            del penalized[next(iter(penalized))]
        penalized[address] = now + self._penalty_s
        self.penalties += 1
        return True

    def lapse(self, address: Hashable, now: float) -> bool:
        """Whether ``address``'s penalty is over at ``now`` (then it is forgotten)."""
        until = self.penalized.get(address)
        if until is None or until <= now:
            self.penalized.pop(address, None)
            return True
        return False

    def counters(self) -> dict[str, int]:
        """``datagrams_penalized``, ``source_penalties``, ``source_faults``,
        ``sources_penalized`` (now)."""
        return {
            "datagrams_penalized": self.datagrams_penalized,
            "source_penalties": self.penalties,
            "source_faults": self.faults + self.faults_vouched,
            "sources_penalized": len(self.penalized),
        }
