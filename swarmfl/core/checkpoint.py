"""The checkpoint file format: a drone's learning state as bytes, checked on the way back in.

A field drone can lose power at any instant. A checkpoint lets it come back with its model, its
public replica (the error-feedback state its neighbours hold of it), its optimizer state and the
next sequence number of its model stream, so neighbours accept its frames as a continuation rather
than a replay.

File format (all integers little-endian)::

    magic "SWFLCKPT" | version u16 | flags u16 (0) | json_len u32 | body_len u64 | sha256 (32 bytes)
    body: JSON header (json_len bytes) | zero padding | array 0 | padding | array 1 | ...

The JSON header holds the scalars, ``meta`` and each array's name, dtype and shape; the arrays'
raw C-order bytes follow, each starting on a 64-byte file offset so they can be viewed in place.
The SHA-256 covers the fixed header fields and the whole body, so any flipped or missing byte is
detected. Only plain numeric dtypes are accepted and nothing is ever unpickled: a hostile file can
be refused, never executed.

Sans-IO: :func:`encode` and :func:`decode` turn a :class:`Checkpoint` into bytes and back. The
field drone's crash-safe store of these files is
:class:`swarmfl.field.checkpoint.CheckpointStore`; pretrained weights
(:mod:`swarmfl.learning.pretrained`) may come in this format too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from swarmfl.errors import CheckpointError, ConfigError

__all__ = ["FORMAT_VERSION", "MAGIC", "Checkpoint", "decode", "encode"]

logger = logging.getLogger(__name__)

MAGIC = b"SWFLCKPT"
FORMAT_VERSION = 1

# magic, version, flags, json_len, body_len; the digest follows.
_PREFIX = struct.Struct("<8sHHIQ")
_DIGEST_BYTES = 32
_HEADER_BYTES = _PREFIX.size + _DIGEST_BYTES
_ALIGN_BYTES = 64
# Bounds what a corrupt length field can make us parse; real headers are a few KiB.
_MAX_JSON_BYTES = 16 * 1024 * 1024
_MAX_NDIM = 32
# bool, signed/unsigned integers, floats, complex: types whose bytes are only numbers.
_ALLOWED_KINDS = frozenset("biufc")


def _check_dtype(dtype: np.dtype[Any], where: str) -> str | None:
    """Return why ``dtype`` may not be stored, or None if it is a plain numeric dtype."""
    if dtype.hasobject:
        return f"{where}: object dtype {dtype.str!r} is not allowed (no pickle)"
    if dtype.names is not None or dtype.subdtype is not None or dtype.kind not in _ALLOWED_KINDS:
        return f"{where}: dtype {dtype.str!r} is not a plain numeric dtype"
    return None


@dataclass(frozen=True)
class Checkpoint:
    """One saved learning state of one drone.

    ``counter`` is the drone's update counter (it names the file); ``seq`` the next sequence
    number of its model stream. ``arrays`` holds numeric arrays under names the caller chooses
    (model parameters, the error-feedback public replica, flattened optimizer state); ``meta`` any
    JSON-serialisable mapping (accuracy, bytes sent, the memory plan). ``created_at`` is seconds
    on the caller's clock.

    Raises :class:`~swarmfl.errors.ConfigError` naming the field if a value is out of range, an
    array is not a plain numeric ndarray, or ``meta`` is not JSON-serialisable.
    """

    drone_id: int
    counter: int
    seq: int
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]
    created_at: float

    def __post_init__(self) -> None:
        for name in ("drone_id", "counter", "seq"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"must be a non-negative int, got {value!r}", key=name)
        if self.counter >= 10**12:
            raise ConfigError("must be below 10**12 (it names the file)", key="counter")
        if isinstance(self.created_at, bool) or not isinstance(self.created_at, int | float):
            raise ConfigError(f"must be a float, got {self.created_at!r}", key="created_at")
        if not math.isfinite(self.created_at):
            raise ConfigError("must be finite", key="created_at")
        if not isinstance(self.arrays, dict):
            raise ConfigError("must be a dict of name to ndarray", key="arrays")
        for name, array in self.arrays.items():
            if not isinstance(name, str):
                raise ConfigError(f"array names must be str, got {name!r}", key="arrays")
            if not isinstance(array, np.ndarray):
                raise ConfigError(f"not an ndarray: {type(array).__name__}", key=f"arrays.{name}")
            problem = _check_dtype(array.dtype, f"arrays.{name}")
            if problem is not None:
                raise ConfigError(problem, key=f"arrays.{name}")
            if array.ndim > _MAX_NDIM:
                raise ConfigError(f"more than {_MAX_NDIM} dimensions", key=f"arrays.{name}")
        if not isinstance(self.meta, dict):
            raise ConfigError("must be a dict", key="meta")
        try:
            json.dumps(self.meta)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"not JSON-serialisable: {exc}", key="meta") from exc


def _align(offset: int) -> int:
    return -(-offset // _ALIGN_BYTES) * _ALIGN_BYTES


def _layout(json_len: int, nbytes: list[int]) -> tuple[list[int], int]:
    """File offsets of each array's data and the total file size, for a given JSON length."""
    offsets = []
    end = _HEADER_BYTES + json_len
    for n in nbytes:
        start = _align(end)
        offsets.append(start)
        end = start + n
    return offsets, end


def encode(ckpt: Checkpoint) -> bytes:
    """Serialise ``ckpt`` to the checkpoint file format (see the module docstring)."""
    entries = []
    buffers = []
    for name, array in ckpt.arrays.items():
        entries.append({"name": name, "dtype": array.dtype.str, "shape": list(array.shape)})
        buffers.append(np.ascontiguousarray(array).tobytes())
    header = {
        "drone_id": ckpt.drone_id,
        "counter": ckpt.counter,
        "seq": ckpt.seq,
        "created_at": float(ckpt.created_at),
        "meta": ckpt.meta,
        "arrays": entries,
    }
    json_bytes = json.dumps(header, separators=(",", ":")).encode()
    offsets, total = _layout(len(json_bytes), [len(b) for b in buffers])
    out = bytearray(total)
    out[_HEADER_BYTES : _HEADER_BYTES + len(json_bytes)] = json_bytes
    for offset, data in zip(offsets, buffers, strict=True):
        out[offset : offset + len(data)] = data
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(json_bytes), total - _HEADER_BYTES)
    out[: _PREFIX.size] = prefix
    digest = hashlib.sha256(prefix)
    digest.update(memoryview(out)[_HEADER_BYTES:])
    out[_PREFIX.size : _HEADER_BYTES] = digest.digest()
    return bytes(out)


def _require_int(header: Mapping[str, Any], key: str) -> int:
    value = header.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"field {key!r} is not an int: {value!r}")
    return value


def decode(data: bytes | bytearray, *, source: str = "<bytes>") -> Checkpoint:
    """Parse a checkpoint file's bytes; the arrays are writable views into a private copy.

    Raises :class:`~swarmfl.errors.CheckpointError` naming ``source`` and the problem: bad magic,
    unsupported version, truncation or trailing bytes, checksum mismatch, bad JSON, a field of
    the wrong type, a non-numeric dtype or sizes that do not add up.
    """

    def fail(problem: str) -> CheckpointError:
        return CheckpointError(f"{source}: {problem}")

    buf = bytearray(data)
    if len(buf) < _HEADER_BYTES:
        raise fail(f"truncated header ({len(buf)} of {_HEADER_BYTES} bytes)")
    magic, version, flags, json_len, body_len = _PREFIX.unpack_from(buf)
    if magic != MAGIC:
        raise fail(f"bad magic {magic!r}")
    if version != FORMAT_VERSION:
        raise fail(f"unsupported format version {version}")
    if flags != 0:
        raise fail(f"unknown flags {flags:#06x}")
    if len(buf) - _HEADER_BYTES != body_len:
        raise fail(f"body is {len(buf) - _HEADER_BYTES} bytes, header says {body_len} (truncated?)")
    if json_len > min(body_len, _MAX_JSON_BYTES):
        raise fail(f"JSON length {json_len} exceeds the body or the cap")
    digest = hashlib.sha256(buf[: _PREFIX.size])
    digest.update(memoryview(buf)[_HEADER_BYTES:])
    if digest.digest() != bytes(buf[_PREFIX.size : _HEADER_BYTES]):
        raise fail("SHA-256 checksum mismatch")
    try:
        header = json.loads(buf[_HEADER_BYTES : _HEADER_BYTES + json_len].decode())
        if not isinstance(header, dict):
            raise ValueError("JSON header is not an object")
        drone_id = _require_int(header, "drone_id")
        counter = _require_int(header, "counter")
        seq = _require_int(header, "seq")
        created_at = header.get("created_at")
        if isinstance(created_at, bool) or not isinstance(created_at, int | float):
            raise ValueError(f"field 'created_at' is not a number: {created_at!r}")
        meta = header.get("meta")
        if not isinstance(meta, dict):
            raise ValueError("field 'meta' is not an object")
        entries = header.get("arrays")
        if not isinstance(entries, list):
            raise ValueError("field 'arrays' is not a list")
        specs: list[tuple[str, np.dtype[Any], tuple[int, ...], int]] = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise ValueError(f"arrays[{i}] is not an object")
            name, dtype_str, shape = entry.get("name"), entry.get("dtype"), entry.get("shape")
            if not isinstance(name, str):
                raise ValueError(f"arrays[{i}].name is not a string")
            if not isinstance(dtype_str, str):
                raise ValueError(f"array {name!r}: dtype is not a string")
            try:
                dtype = np.dtype(dtype_str)
            except (TypeError, SyntaxError) as exc:
                raise ValueError(f"array {name!r}: unknown dtype {dtype_str!r}") from exc
            problem = _check_dtype(dtype, f"array {name!r}")
            if problem is not None:
                raise ValueError(problem)
            if (
                not isinstance(shape, list)
                or len(shape) > _MAX_NDIM
                or not all(type(d) is int and d >= 0 for d in shape)
            ):
                raise ValueError(f"array {name!r}: bad shape {shape!r}")
            count = math.prod(shape)
            specs.append((name, dtype, tuple(shape), count))
    except (ValueError, UnicodeDecodeError) as exc:
        # json.JSONDecodeError is a ValueError.
        raise fail(f"bad header: {exc}") from exc
    names = [s[0] for s in specs]
    if len(set(names)) != len(names):
        raise fail("duplicate array names")
    offsets, total = _layout(json_len, [s[1].itemsize * s[3] for s in specs])
    if total != len(buf):
        raise fail(f"array sizes add up to a {total}-byte file, but it is {len(buf)} bytes")
    arrays = {
        name: np.frombuffer(buf, dtype=dtype, count=count, offset=offset).reshape(shape)
        for (name, dtype, shape, count), offset in zip(specs, offsets, strict=True)
    }
    try:
        return Checkpoint(
            drone_id=drone_id,
            counter=counter,
            seq=seq,
            arrays=arrays,
            meta=meta,
            created_at=float(created_at),
        )
    except ConfigError as exc:
        raise fail(f"invalid value: {exc}") from exc
