"""Reading config files safely: TOML in, validated frozen sections out, or one line of error.

Both file formats (scenarios for ``swarmfl sim``, ``drone.toml`` for ``swarmfl agent``) go
through the same three steps:

1. :func:`read_toml`: a regular file (not a FIFO, a device or a folder), at most
   :data:`MAX_CONFIG_BYTES`, UTF-8, valid TOML. Nothing is read past the cap, so ``/dev/zero``
   or a huge file costs nothing.
2. :func:`apply_overrides`: ``--set key.path=value`` values, read as TOML, on a copy.
3. :func:`validate`: the pydantic model; its first error becomes a :class:`ConfigError` whose
   one line names the file, the dotted key and the problem.

Section validators that need to name a key other than their own raise :class:`KeyedValueError`.
"""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from swarmfl.errors import ConfigError

__all__ = [
    "MAX_CONFIG_BYTES",
    "KeyedValueError",
    "apply_overrides",
    "parse_override",
    "read_text_file",
    "read_toml",
    "resolve_paths",
    "validate",
]

MAX_CONFIG_BYTES = 1 << 20
"""The largest config file read (1 MiB): far above any real scenario or drone.toml."""

M = TypeVar("M", bound=BaseModel)


class KeyedValueError(ValueError):
    """A validation problem that belongs to another key than the validator's own.

    ``loc`` is the key path from the file's root, e.g. ``("radio", "burst_bytes")``.
    """

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


def read_text_file(path: Path, *, max_bytes: int, source: str, key: str | None = None) -> str:
    """The UTF-8 text of the regular file ``path``, read only up to ``max_bytes``.

    ``source`` and ``key`` say where the path came from (the config file and the key naming
    it; for a config file itself, its own path and no key). Raises :class:`ConfigError` for a
    missing file, something that is not a regular file (a folder, a FIFO, a device), a file over
    ``max_bytes``, an unreadable file or one that is not UTF-8.
    """

    def error(problem: str) -> ConfigError:
        # a config file's own errors are prefixed with its path already; a file named by a key
        # is named in the problem
        where = "" if key is None else f"{path}: "
        return ConfigError(where + problem, source=source, key=key)

    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then refuses it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise error("file not found") from None
    except OSError as exc:
        raise error(f"cannot read: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error("not a regular file")
        if info.st_size > max_bytes:
            raise error(f"{info.st_size} bytes, over the limit of {max_bytes}")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise error(f"cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # it grew while we read it
        raise error(f"over the limit of {max_bytes} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise error("not UTF-8 text") from None


def read_toml(path: Path) -> dict[str, Any]:
    """The TOML table in the config file ``path`` (see :func:`read_text_file` for the checks).

    Raises :class:`ConfigError` naming the file.
    """
    source = str(path)
    text = read_text_file(path, max_bytes=MAX_CONFIG_BYTES, source=source)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", source=source) from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``key.path=value``; the value is read as TOML, else taken as a string.

    Raises :class:`ConfigError` when there is no ``=`` or no key.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"expected key.path=value, got {text!r}", source="--set")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``key.path=value`` override applied.

    Raises :class:`ConfigError` for a malformed override or one that walks into a non-table.
    """
    result = _deep_copy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = result
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"'{part}' is not a table", source="--set", key=".".join(path))
            node = child
        node[path[-1]] = value
    return result


def _deep_copy(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in raw.items()}


def resolve_paths(raw: dict[str, Any], keys: list[tuple[str, ...]], folder: Path) -> None:
    """Make the relative paths at ``keys`` (as written in a file) absolute against ``folder``.

    Called before overrides are applied: a path in a file is relative to the file's folder, one
    given with ``--set`` to the current directory. Missing keys and wrong types are left for
    validation to report.
    """
    for key in keys:
        node: Any = raw
        for part in key[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        value = node.get(key[-1])
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            node[key[-1]] = str((folder / value).absolute())


def validate(model: type[M], raw: dict[str, Any], *, source: str) -> M:
    """``raw`` validated as ``model``; raises :class:`ConfigError` naming ``source`` and the key."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise _config_error(exc, source) from None
    except RecursionError:
        raise ConfigError("nested too deeply", source=source) from None


def _config_error(exc: ValidationError, source: str) -> ConfigError:
    error = exc.errors()[0]
    loc = tuple(error.get("loc", ()))
    context = error.get("ctx") or {}
    inner = context.get("error")
    if isinstance(inner, KeyedValueError):
        loc, problem = inner.loc, str(inner)
    elif error["type"] == "extra_forbidden":
        problem = "unknown key"
    elif error["type"] == "value_error" and inner is not None:
        problem = str(inner)
    else:
        value = error.get("input")
        shown = "" if isinstance(value, dict | list) else f" (got {_short(value)})"
        problem = f"{error['msg'][0].lower()}{error['msg'][1:]}{shown}"
    key = ".".join(str(part) for part in loc) or None
    extra = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return ConfigError(problem + extra, source=source, key=key)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
