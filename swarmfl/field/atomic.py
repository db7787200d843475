"""Writing a small file so that a crash leaves either the old content or the new, never a mix.

The bytes go to a temporary file in the same folder (``.<name>.<random>.tmp``), which is flushed
and fsynced, then renamed over the final name, and the folder is fsynced so the rename itself
survives a power cut. If anything fails (a full disk, a file size limit, a read-only card) the
temporary file is removed and the old file, if any, is left exactly as it was.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["TEMP_SUFFIX", "fsync_directory", "write_atomically"]

TEMP_SUFFIX = ".tmp"


def fsync_directory(directory: Path) -> None:
    """Make the folder's entries (a rename) durable; a platform that cannot open a folder for
    that is skipped silently."""
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


def write_atomically(path: Path, data: bytes, *, mode: int = 0o666) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    ``mode`` is the new file's permission bits (before the umask). The folder must exist.
    Raises :class:`OSError` (the temporary file removed, the old file untouched) if the file
    cannot be written; the caller translates it into its own error.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # BaseException too: a KeyboardInterrupt mid-write must not leave the temp file behind.
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
