"""How the field agent tells a person what happens: one log line per event, text or JSON lines.

:func:`configure_logging` sets up the ``swarmfl`` command's logging: plain lines (without a
timestamp under systemd, whose journal adds its own) or JSON lines (``--log-format json``: one
object per line with ``t``, ``level``, ``logger``, ``msg``), at INFO for swarmfl's own events
when the command is the agent. :class:`PeerPresence` turns the gossip node's "last heard" times
into the "peer heard" and "peer lost" events.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any, Literal

__all__ = ["JsonLineFormatter", "LogFormat", "PeerPresence", "configure_logging"]

LogFormat = Literal["text", "json"]

_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_JOURNAL_TEXT = "%(levelname)s %(name)s: %(message)s"
_HANDLER_NAME = "swarmfl-stderr"


class JsonLineFormatter(logging.Formatter):
    """One JSON object per record: ``t`` (Unix seconds), ``level``, ``logger``, ``msg``, and
    ``exc`` when an exception is attached. Newlines inside the message stay escaped, so a
    record is always exactly one line."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one JSON line."""
        entry = {
            "t": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes to whatever ``sys.stderr`` is when a record is emitted
    (a caller that swaps stderr, as pytest's capture does, never leaves it a closed stream)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass  # StreamHandler.__init__ sets it; the property always answers sys.stderr


def configure_logging(
    verbosity: int,
    log_format: LogFormat = "text",
    *,
    events: bool = False,
    environ: Mapping[str, str] | None = None,
) -> None:
    """Log to stderr: WARNING (``-v`` INFO, ``-vv`` DEBUG) for everything.

    With ``events`` (the agent), swarmfl's own loggers log at INFO even without ``-v``: every
    event a person cares about is one INFO line. Under systemd (``$JOURNAL_STREAM`` set) text
    lines leave the timestamp to the journal.
    """
    env = os.environ if environ is None else environ
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    handler: logging.Handler = _StderrHandler()
    if log_format == "json":
        handler.setFormatter(JsonLineFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(_JOURNAL_TEXT if env.get("JOURNAL_STREAM") else _TEXT)
        )
    handler.name = _HANDLER_NAME
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.name == _HANDLER_NAME:  # ours from an earlier call; others are left alone
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("swarmfl").setLevel(min(level, logging.INFO) if events else logging.NOTSET)


class PeerPresence:
    """Which peers are being heard, from the node's last-heard times; reports changes.

    A peer is heard once a frame of it authenticated, and lost once nothing came from it for
    ``lost_after_s``. :meth:`update` returns the events as one-line messages.
    """

    def __init__(self, lost_after_s: float) -> None:
        self.lost_after_s = lost_after_s
        self._heard: set[int] = set()
        self._ever: set[int] = set()

    def update(self, last_heard: Mapping[int, float], now: float) -> list[str]:
        """Messages for the peers newly heard, heard again or lost at ``now``."""
        alive = {peer for peer, at in last_heard.items() if now - at <= self.lost_after_s}
        lines = []
        for peer in sorted(alive - self._heard):
            lines.append(f"peer {peer} heard" + (" again" if peer in self._ever else ""))
        for peer in sorted(self._heard - alive):
            at = last_heard.get(peer)
            why = f"nothing heard for {now - at:.0f} s" if at is not None else "replica aged out"
            lines.append(f"peer {peer} lost ({why})")
        self._ever |= alive
        self._heard = alive
        return lines
