"""The one exception tree of swarmfl.

Everything swarmfl raises on purpose derives from :class:`SwarmError`, split by who is at fault:

* :class:`ConfigError` -- the caller's: a bad scenario, config file, CLI value or API argument.
* :class:`PeerError` -- the remote's: a frame that is malformed, forged, replayed or foreign.
* :class:`RadioError` -- the medium's: a socket, broker or link that failed.

Errors from third-party libraries (lz4, zeroconf, aiomqtt, sockets) are translated into these at
the edge, with ``raise ... from exc``.
"""

from __future__ import annotations


class SwarmError(Exception):
    """Root of every error swarmfl raises on purpose."""


class ConfigError(SwarmError, ValueError):
    """A usage or configuration error: the caller's fault.

    ``source`` names the file (or ``"--set"``, ``"argument"``), ``key`` the dotted key path, and
    ``problem`` says what is wrong, so the CLI can print one line and exit 2.
    """

    def __init__(self, problem: str, *, source: str | None = None, key: str | None = None) -> None:
        self.problem = problem
        self.source = source
        self.key = key
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """The error as the single line the CLI prints."""
        parts = [p for p in (self.source, f"key '{self.key}'" if self.key else None) if p]
        return ": ".join([*parts, self.problem])


class PlanError(ConfigError):
    """A memory budget below the smallest feasible training plan."""


class PeerError(SwarmError):
    """A remote peer sent something we refuse: the remote's fault."""


class FrameDecodeError(PeerError):
    """A frame could not be decoded: malformed, truncated, oversized, forged, replayed or foreign.

    This is the only exception :func:`swarmfl.core.wire.decode_frame` raises.
    """


class StreamGapError(PeerError):
    """A model stream frame arrived after a missing sequence number; the replica was dropped."""


class RadioError(SwarmError):
    """The medium failed: a socket, broker or link error, translated at the edge."""


class ClosedRadioError(RadioError):
    """The radio was used after it was closed."""


class CheckpointError(SwarmError):
    """A checkpoint is missing, truncated or fails its checksum."""
