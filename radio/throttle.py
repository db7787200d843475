"""Bandwidth throttling for radios: a token bucket in bytes, with time passed in.

Every radio (simulated, UDP, MQTT) charges what it transmits to a :class:`TokenBucket`. The
bucket never reads a clock: each call takes ``now`` in seconds, virtual or real.
"""

from __future__ import annotations

import math
import operator

from swarmfl.errors import ConfigError

__all__ = ["TokenBucket"]

# A caller that sleeps for exactly ``time_until()`` and then calls ``try_consume()`` must succeed,
# even though ``now + wait`` rounds (at ``now`` ~ 1.7e9 s of wall-clock time the rounding is
# ~4e-7 s). So a consumer up to one microsecond early counts as on time. It can push the bucket
# into debt by at most ``rate * 1e-6`` bytes, which later sends repay, so the long-run rate holds.
_SLACK_S = 1e-6


class TokenBucket:
    """A byte token bucket: ``rate_bps / 8`` bytes per second refill, ``burst_bytes`` deep.

    The bucket starts full. Tokens are bytes. Sending ``n`` bytes needs ``min(n, burst_bytes)``
    tokens in the bucket and then removes ``n``:

    * a datagram no larger than the burst needs that many tokens, as usual;
    * a datagram **larger than the burst** (which could never be covered) waits until the bucket
      is full and then drives it negative: the bucket is *in debt*, and nothing else can be sent
      until the refill has paid the debt back. So oversize datagrams are sendable, and the
      long-run rate still never exceeds ``rate_bps``.

    Over any window of length ``w`` between two transmissions, the bytes sent are at most
    ``burst_bytes + rate * w``, plus, if the last datagram of the window is oversize, its excess
    over the burst.

    Time is monotonic: a ``now`` earlier than the latest one seen is treated as that latest one.

    Raises :class:`~swarmfl.errors.ConfigError` if ``rate_bps`` or ``burst_bytes`` is not a
    positive finite number.
    """

    __slots__ = (
        "_burst",
        "_last_s",
        "_rate_Bps",
        "_slack_bytes",
        "_tokens",
        "burst_bytes",
        "rate_bps",
    )

    def __init__(self, rate_bps: float, burst_bytes: int) -> None:
        try:
            rate = math.nan if isinstance(rate_bps, str | bytes) else float(rate_bps)
        except (TypeError, ValueError):
            rate = math.nan
        if not (math.isfinite(rate) and rate > 0):
            raise ConfigError(f"must be a positive finite number, got {rate_bps!r}", key="rate_bps")
        try:
            burst = -1 if isinstance(burst_bytes, bool) else operator.index(burst_bytes)
        except TypeError:
            burst = -1
        if burst <= 0:
            raise ConfigError(f"must be a positive integer, got {burst_bytes!r}", key="burst_bytes")
        self.rate_bps = rate
        self.burst_bytes = burst
        self._rate_Bps = self.rate_bps / 8.0
        self._burst = float(burst)
        self._slack_bytes = self._rate_Bps * _SLACK_S
        self._tokens = float(burst)
        self._last_s = -math.inf

    def _refill(self, now: float) -> float:
        """Bring the bucket to ``now`` (clamped to be monotonic) and return its tokens."""
        last = self._last_s
        if now > last:
            self._last_s = now
            if last == -math.inf:
                return self._tokens
            tokens = self._tokens + (now - last) * self._rate_Bps
            if tokens > self._burst:
                tokens = self._burst
            self._tokens = tokens
        return self._tokens

    def available_bytes(self, now: float) -> float:
        """Tokens in the bucket at ``now``: at most ``burst_bytes``, negative while in debt."""
        return self._refill(now)

    def try_consume(self, nbytes: int, now: float) -> bool:
        """Take ``nbytes`` if they may be sent at ``now``; return whether they were taken.

        Raises :class:`~swarmfl.errors.ConfigError` if ``nbytes`` is negative.
        """
        if nbytes < 0:
            raise ConfigError(f"must be >= 0, got {nbytes}", key="nbytes")
        tokens = self._refill(now)
        need = nbytes if nbytes < self._burst else self._burst
        if tokens + self._slack_bytes < need:
            return False
        self._tokens = tokens - nbytes
        return True

    def time_until(self, nbytes: int, now: float) -> float:
        """Seconds from ``now`` until ``nbytes`` could be sent; ``0.0`` if they can be sent now.

        For ``nbytes > burst_bytes`` this is the time until the bucket is full (see the class
        docstring). Takes nothing from the bucket. Raises
        :class:`~swarmfl.errors.ConfigError` if ``nbytes`` is negative.
        """
        if nbytes < 0:
            raise ConfigError(f"must be >= 0, got {nbytes}", key="nbytes")
        tokens = self._refill(now)
        need = nbytes if nbytes < self._burst else self._burst
        if tokens + self._slack_bytes >= need:
            return 0.0
        # A ``now`` in the past was clamped: the wait counts from the caller's ``now``.
        return (self._last_s - now if now < self._last_s else 0.0) + (
            need - tokens
        ) / self._rate_Bps

    def consume(self, nbytes: int, now: float) -> float:
        """Take ``nbytes`` unconditionally and return the earliest time their sending may start.

        For schedulers (the simulated radio): the returned time is ``now`` if the bytes fit,
        else the time at which :meth:`try_consume` would first have succeeded. The bucket goes
        into debt as needed, so back-to-back calls serialise transmissions at ``rate_bps``.
        Raises :class:`~swarmfl.errors.ConfigError` if ``nbytes`` is negative.
        """
        if nbytes < 0:
            raise ConfigError(f"must be >= 0, got {nbytes}", key="nbytes")
        tokens = self._refill(now)
        start = self._last_s  # ``now``, or the latest time seen if ``now`` is earlier
        need = nbytes if nbytes < self._burst else self._burst
        # Taking the bytes now and letting the refill repay the shortfall is the same as waiting
        # for the tokens and then taking them, since the bucket stays below ``need`` meanwhile.
        self._tokens = tokens - nbytes
        if tokens + self._slack_bytes >= need:
            return start
        return start + (need - tokens) / self._rate_Bps

    def __repr__(self) -> str:
        return (
            f"TokenBucket(rate_bps={self.rate_bps!r}, burst_bytes={self.burst_bytes!r}, "
            f"tokens={self._tokens:.1f})"
        )
