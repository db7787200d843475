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
import os
import re
import secrets
from pathlib import Path

from swarmfl.core.checkpoint import Checkpoint, decode, encode
from swarmfl.errors import CheckpointError, ConfigError

__all__ = ["CheckpointStore"]

logger = logging.getLogger(__name__)

_FILE_RE = re.compile(r"^ckpt-(\d{12})\.swfl$")
_TMP_SUFFIX = ".tmp"


def _fsync_directory(directory: Path) -> None:
    # A rename is durable only once the directory entry is; not every platform can open one.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
        checkpoint because the newer ones were corrupt). Raises
        :class:`~swarmfl.errors.CheckpointError` if the file cannot be written.
        """
        data = encode(ckpt)
        final = self.path_for(ckpt.counter)
        tmp = self.directory / f".{final.name}.{secrets.token_hex(4)}{_TMP_SUFFIX}"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with open(tmp, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise CheckpointError(f"{final}: cannot write checkpoint: {exc}") from exc
        _fsync_directory(self.directory)
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
            if entry.name.endswith(_TMP_SUFFIX) and entry.is_file():
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
