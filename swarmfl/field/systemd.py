"""systemd's service notifications (sd_notify): ready, status, watchdog, stopping.

A ``Type=notify`` unit hands its service a unix datagram socket in ``$NOTIFY_SOCKET``; the
service writes newline-separated assignments to it (``READY=1``, ``STATUS=...``,
``WATCHDOG=1``, ``STOPPING=1``). With ``WatchdogSec=`` systemd also sets ``$WATCHDOG_USEC``
(and ``$WATCHDOG_PID``) and restarts a service that stays silent that long.

The protocol is a few lines of socket code, so it is written here rather than taken from
``sdnotify`` (last released in 2017, silent on every error, no watchdog interval) or
``systemd-python`` (needs libsystemd headers and a C build on the drone). Outside systemd
(no ``$NOTIFY_SOCKET``) every call is a no-op. A notification that cannot be sent is logged
once per kind of failure and reported by a False return: the supervisor's socket failing is
never a reason for the agent to stop.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping

from swarmfl.clock import Clock

__all__ = ["SystemdNotifier"]

log = logging.getLogger(__name__)

_MAX_STATUS_CHARS = 1024


class SystemdNotifier:
    """Sends notifications to systemd over ``$NOTIFY_SOCKET`` (a path or ``@abstract`` name).

    ``environ`` defaults to :data:`os.environ`; ``pid`` to this process's (a ``$WATCHDOG_PID``
    naming another process means the watchdog is not ours). Raises nothing.
    """

    def __init__(self, environ: Mapping[str, str] | None = None, *, pid: int | None = None):
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # Linux abstract namespace
        self._address = address if address.startswith(("/", "\0")) else None
        self._socket: socket.socket | None = None
        self._failures: set[str] = set()
        self.watchdog_interval_s = _watchdog_interval_s(env, os.getpid() if pid is None else pid)

    @property
    def enabled(self) -> bool:
        """True when running under systemd with a notification socket."""
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments in one datagram; True if sent (False outside systemd)."""
        if self._address is None:
            return False
        payload = "\n".join(assignments).encode("utf-8", "replace")
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
            self._socket.sendto(payload, self._address)
        except OSError as exc:
            kind = type(exc).__name__
            if kind not in self._failures:
                self._failures.add(kind)
                log.warning("systemd notification failed (%s); the service goes on", exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Tell systemd the service is up (``READY=1``), with an optional status line."""
        return self.notify("READY=1", *_status(status))

    def status(self, text: str) -> bool:
        """Set the one-line status ``systemctl status`` shows."""
        return self.notify(*_status(text))

    def watchdog(self) -> bool:
        """Keep the watchdog from firing (``WATCHDOG=1``)."""
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """Tell systemd the service is shutting down (``STOPPING=1``)."""
        return self.notify("STOPPING=1", *_status(status))

    async def keep_watchdog(self, clock: Clock, healthy: Callable[[], bool] | None = None) -> None:
        """Ping the watchdog every ``watchdog_interval_s`` while ``healthy()`` holds (forever).

        Returns at once when systemd set no watchdog for us. Run it as a task of the agent: a
        wedged event loop then stops the pings, and systemd restarts the service. ``healthy``
        lets the agent withhold them too (e.g. no gossip round for many periods).
        """
        interval_s = self.watchdog_interval_s
        if interval_s is None or not self.enabled:
            return
        while True:
            if healthy is None or healthy():
                self.watchdog()
            await clock.sleep_until(clock.now() + interval_s)

    def close(self) -> None:
        """Close the socket (notifications after this reopen it)."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _status(text: str | None) -> list[str]:
    if text is None:
        return []
    line = " ".join(text.split())  # one line: the protocol separates assignments by newlines
    return [f"STATUS={line[:_MAX_STATUS_CHARS]}"]


def _watchdog_interval_s(env: Mapping[str, str], pid: int) -> float | None:
    """Half of ``$WATCHDOG_USEC`` (systemd's advice), if the watchdog is set and for ``pid``."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    owner = env.get("WATCHDOG_PID")
    if usec <= 0 or (owner is not None and owner.strip() != str(pid)):
        return None
    return usec / 2e6
