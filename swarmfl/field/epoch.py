"""The boot epoch: a counter a field drone persists and increments before each life's first frame.

A drone's sequence numbers are ``epoch << 32 | n`` (:mod:`swarmfl.core.replay`). Incrementing a
number kept on disk, and fsyncing it before anything is sent, makes every life's numbers larger
than any earlier life's, whatever the wall clock says (a drone without a real-time clock may
boot in 1970). The file sits next to the checkpoints; a drone that lost it (a new card) starts
at epoch 1 and its neighbours tell it the epoch they last heard (an EPOCH frame), which it then
moves past.
"""

from __future__ import annotations

import logging
from pathlib import Path

from swarmfl.core.replay import MAX_EPOCH
from swarmfl.errors import CheckpointError
from swarmfl.field.atomic import write_atomically

__all__ = ["BootEpochFile"]

log = logging.getLogger(__name__)

_MAX_FILE_BYTES = 64


class BootEpochFile:
    """The boot epoch saved in ``directory/epoch`` (a decimal number and a newline)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / "epoch"

    def read(self) -> int:
        """The epoch saved, or 0 if there is none. A damaged file is logged and read as 0 (the
        checkpoint's numbers and the neighbours' EPOCH frames still move the drone past it)."""
        try:
            with open(self.path, "rb") as f:
                data = f.read(_MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            log.warning("%s: cannot read the boot epoch: %s", self.path, exc)
            return 0
        text = data.decode("ascii", errors="replace").strip()
        if len(data) > _MAX_FILE_BYTES or not text.isdigit() or int(text) > MAX_EPOCH:
            log.warning("%s: not a boot epoch (ignored): %r", self.path, data[:_MAX_FILE_BYTES])
            return 0
        return int(text)

    def write(self, epoch: int) -> None:
        """Save ``epoch`` atomically and durably (temporary file, fsync, rename, directory fsync).

        Raises :class:`~swarmfl.errors.CheckpointError` if it cannot be written.
        """
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_atomically(self.path, f"{int(epoch)}\n".encode("ascii"))
        except OSError as exc:
            raise CheckpointError(
                f"{self.path}: cannot write the boot epoch: {exc.strerror or exc}"
            ) from exc
