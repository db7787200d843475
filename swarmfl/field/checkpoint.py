"""Crash-safe checkpoints of a drone's learning state, on disk.

A field drone can lose power at any instant. A checkpoint lets it come back with its model, its
optimizer state and the next sequence number of its model stream, so neighbours accept its frames
as a continuation rather than a replay. The bytes are :mod:`swarmfl.core.checkpoint`'s format.

Writes are atomic: a temporary file in the same directory is written, flushed and fsynced, then
renamed over the final name and the directory fsynced. A crash leaves either the old set of
checkpoints or the new one, plus perhaps a ``*.tmp`` file that the store ignores and removes.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from swarmfl.core.checkpoint import Checkpoint, decode, encode
from swarmfl.errors import CheckpointError, ConfigError
from swarmfl.field.atomic import TEMP_SUFFIX, write_atomically

__all__ = ["CheckpointStore", "CheckpointWriteError", "SaveFailures"]

logger = logging.getLogger(__name__)

_FILE_RE = re.compile(r"^ckpt-(\d{12})\.swfl$")


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (a full disk, a file size limit, a read-only card).

    ``path`` is the checkpoint that was not written and ``reason`` the operating system's words
    (``"No space left on device"``); the files already on disk are untouched.
    """

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: cannot write checkpoint: {reason}")


class SaveFailures:
    """What a drone says about failing checkpoint saves: one line per kind of failure, not one
    per round.

    :meth:`failed` returns the line to log at WARNING for the first failure and for a failure
    whose reason differs from the previous one, None for a repeat (the status counts them);
    :meth:`succeeded` returns the one line saying saving works again, None if nothing failed.
    ``count`` (all failures so far) and ``reason`` (the current failure's, None once a save
    succeeds) are what the status reports.
    """

    def __init__(self) -> None:
        self.count = 0
        self.reason: str | None = None
        self._since_success = 0

    def failed(self, error: Exception) -> str | None:
        """Count a failed save; the line to log, or None for a repeat of the same failure."""
        reason = error.reason if isinstance(error, CheckpointWriteError) else str(error)
        repeat = reason == self.reason
        self.count += 1
        self._since_success += 1
        self.reason = reason
        if repeat:
            return None
        return (
            f"{error} (older checkpoints are kept; flying on, further failures are "
            "counted in the status)"
        )

    def succeeded(self) -> str | None:
        """Note a successful save; the recovery line if saves were failing until now."""
        failures, self._since_success = self._since_success, 0
        self.reason = None
        if failures == 0:
            return None
        return f"checkpoints are written again, after {failures} failed"


class CheckpointStore:
    """Checkpoints of one drone in one directory, newest by update counter, the last ``keep`` kept.

    One store (one process) per directory: concurrent writers to the same directory are not
    supported. Raises :class:`~swarmfl.errors.ConfigError` if ``keep`` < 1.
    """

    def __init__(self, directory: Path, keep: int = 3) -> None:
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ConfigError(f"must be an int >= 1, got {keep!r}", key="keep")
        self.directory = Path(directory)
        self.keep = keep

    def path_for(self, counter: int) -> Path:
        """The file name a checkpoint with this update counter is saved under."""
        return self.directory / f"ckpt-{counter:012d}.swfl"

    def checkpoint_paths(self) -> list[Path]:
        """Checkpoint files present, newest (highest counter) first; temp files excluded."""
        if not self.directory.is_dir():
            return []
        found = []
        for entry in self.directory.iterdir():
            match = _FILE_RE.match(entry.name)
            if match is not None and entry.is_file():
                found.append((int(match.group(1)), entry))
        found.sort(reverse=True)
        return [path for _, path in found]

    def save(self, ckpt: Checkpoint) -> Path:
        """Write ``ckpt`` atomically and durably, then prune old files; return its path.

        Files with a higher counter than ``ckpt`` are removed, so the next :meth:`load_latest`
        returns what was saved last (they exist only if the drone restarted from an older
        checkpoint because the newer ones were corrupt). Raises :class:`CheckpointWriteError`
        (the files on disk untouched, no temporary file left) if the file cannot be written.
        """
        data = encode(ckpt)
        final = self.path_for(ckpt.counter)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_atomically(final, data)
        except OSError as exc:
            raise CheckpointWriteError(final, exc.strerror or str(exc)) from exc
        self._prune(ckpt.counter)
        return final

    def _prune(self, saved_counter: int) -> None:
        kept = 0
        for path in self.checkpoint_paths():
            counter = int(path.name[5:17])
            if counter > saved_counter:
                logger.warning("removing %s: superseded by checkpoint %d", path, saved_counter)
            elif kept < self.keep:
                kept += 1
                continue
            try:
                path.unlink()
            except OSError as exc:
                logger.warning("could not remove old checkpoint %s: %s", path, exc)
        self._remove_temp_files()

    def _remove_temp_files(self) -> None:
        if not self.directory.is_dir():
            return
        for entry in self.directory.iterdir():
            if entry.name.endswith(TEMP_SUFFIX) and entry.is_file():
                try:
                    entry.unlink()
                except OSError as exc:
                    logger.warning("could not remove temp file %s: %s", entry, exc)

    def load(self, path: Path) -> Checkpoint:
        """Read and verify one checkpoint file.

        Raises :class:`~swarmfl.errors.CheckpointError` naming the file and the problem (missing,
        unreadable, truncated, corrupt or refused).
        """
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot read checkpoint: {exc}") from exc
        return decode(data, source=str(path))

    def load_latest(self) -> Checkpoint | None:
        """The newest checkpoint that verifies, or None if there is none.

        Corrupt or truncated files are skipped with a logged warning (and left in place); temp
        files left by a crash are removed.
        """
        self._remove_temp_files()
        for path in self.checkpoint_paths():
            try:
                return self.load(path)
            except CheckpointError as exc:
                logger.warning("skipping checkpoint: %s", exc)
        return None
