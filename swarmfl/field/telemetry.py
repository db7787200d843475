"""A field drone's live status: the JSON-lines status log and what the record carries.

The same record (see :meth:`swarmfl.field.agent.FieldAgent.status`) goes to the status log
(:class:`StatusLog`), to MQTT telemetry and to answers to ``swarmfl status`` queries; its
version is :data:`STATUS_VERSION`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from swarmfl.core.node import NodeStats
from swarmfl.errors import ConfigError

__all__ = ["STATUS_VERSION", "MergeLag", "PeerMemory", "StatusLog", "finite_or_none"]

log = logging.getLogger(__name__)

STATUS_VERSION = 1
"""Version of the status record (``v``) in status lines, telemetry and query answers."""


def finite_or_none(value: float | None) -> float | None:
    """``value`` if it is a finite number, else None (JSON has no NaN)."""
    return value if value is not None and math.isfinite(value) else None


class MergeLag:
    """The mean time heard frames waited before being merged, over each status interval.

    Reads the node's cumulative counters (``replicas_merged``, ``merge_lag_s``) and reports the
    mean since the previous call.
    """

    def __init__(self) -> None:
        self._merged = 0
        self._lag_s = 0.0

    def take_mean_s(self, stats: NodeStats) -> float | None:
        """Mean lag in seconds of the replicas merged since the last call (None: none were)."""
        merged = stats.replicas_merged - self._merged
        lag = stats.merge_lag_s - self._lag_s
        self._merged, self._lag_s = stats.replicas_merged, stats.merge_lag_s
        return lag / merged if merged else None


class PeerMemory:
    """What a drone remembers of peers that went away, for ``swarmfl status``.

    * ``peers_left``: peers whose announcement was withdrawn (a goodbye), seconds ago;
    * ``peers_lost``: peers heard before of which the node holds no live replica any more,
      seconds since they were last heard.

    :meth:`update` takes the peers announced and the live ones with when they were last heard.
    A peer that comes back is forgotten from both. Each table keeps at most ``max_peers``
    (the oldest goes first), so hostile announcements or frames cannot grow the record.
    """

    def __init__(self, max_peers: int = 64) -> None:
        self.max_peers = max_peers
        self._announced: set[int] = set()
        self._left: dict[int, float] = {}
        self._heard: dict[int, float] = {}
        self._live: set[int] = set()

    def update(self, announced: set[int] | None, heard: Mapping[int, float], now: float) -> None:
        """Note the peers announced (None: no announcements to follow) and the live peers with
        the wall-clock time each was last heard, at wall-clock time ``now`` (s)."""
        if announced is not None:
            for drone in self._announced - announced:
                self._left[drone] = now
            for drone in announced:
                self._left.pop(drone, None)
            self._announced = announced
        self._heard.update(heard)
        self._live = set(heard)
        for table in (self._left, self._heard):
            while len(table) > self.max_peers:
                del table[min(table, key=table.__getitem__)]

    def left(self, now: float) -> dict[str, float]:
        """Seconds since each goodbye at ``now``, by drone id (a string, for JSON)."""
        return {str(d): round(max(0.0, now - at), 3) for d, at in sorted(self._left.items())}

    def lost(self, now: float) -> dict[str, float]:
        """Seconds since each peer no longer live was last heard, by drone id."""
        return {
            str(d): round(max(0.0, now - at), 3)
            for d, at in sorted(self._heard.items())
            if d not in self._live
        }


class StatusLog:
    """Appends JSON lines to a file, rotating it to ``.1`` past ``max_bytes``.

    Raises :class:`ConfigError` (key ``status.log``) if its folder cannot be created or is not
    writable. Writing never raises: a full disk is logged and the drone flies on.
    """

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.failures = 0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create {path.parent}: {exc.strerror}", key="status.log"
            ) from None
        if path.is_dir():
            raise ConfigError(f"{path} is a folder, not a file", key="status.log")
        if not os.access(path.parent, os.W_OK):
            raise ConfigError(f"{path.parent} is not writable", key="status.log")

    def write(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` as one JSON line (logged, not raised, if it cannot be written)."""
        line = json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n"
        try:
            if self.path.exists() and self.path.stat().st_size > self.max_bytes:
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
        except OSError as exc:  # a full disk must not take the drone down
            self.failures += 1
            if self.failures == 1 or self.failures % 100 == 0:
                log.warning("cannot write status line to %s: %s", self.path, exc)
