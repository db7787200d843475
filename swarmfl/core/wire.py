"""Wire frames: authenticated, lz4-packed, with a total decoder.

Frame layout (little-endian, version 1)::

    offset size field
         0    4 magic b"SWFL"
         4    1 version (1)
         5    1 kind (FrameKind: 1 KEY, 2 DELTA, 3 HELLO, 4 NACK, 5 EPOCH)
         6    1 flags (bit 0: payload is lz4-compressed; bit 1: signed by the sender's own key;
                   other bits must be 0)
         7    1 codec (0 fp32, 1 int8, 2 int4)
         8    2 block size (64..256 for int8/int4; any value for fp32)
        10    4 swarm id
        14    4 sender id
        18    8 model signature (hash of the architecture)
        26    8 sequence number (per sender, +1 per frame; high 32 bits: the boot epoch)
        34    8 update counter (sender's local updates, for staleness)
        42    4 sample count (sender's local samples)
        46    2 number of layers n (<= MAX_LAYERS)
        48   2n layer indexes (sorted, unique)
     48+2n    4 raw payload length (<= MAX_PAYLOAD_BYTES)
     52+2n    4 stored payload length (the bytes that follow)
     56+2n    m stored payload (lz4 block without size prefix, or raw)
  56+2n+m   64 (signed frames only) Ed25519 signature of every byte before it, by the sender's
                 own key (see :mod:`swarmfl.core.identity`)
       end-16   16 tag = HMAC-SHA256(swarm key, every byte before the tag)[:16]

A receiver given the roster's keys (``senders``) refuses unsigned frames and frames whose
signature is not the roster's key of the claimed sender (a revoked drone has none). The swarm-key
tag is checked first: outsiders cost an HMAC, never a signature verification.

:func:`decode_frame` is total: anything but a well-formed, authentic frame of our swarm and model
raises :class:`~swarmfl.errors.FrameDecodeError` with a short reason (``"reason"`` or
``"reason: detail"``), and nothing else escapes. It checks, in order: length bounds and magic,
version, layer count and declared lengths against the caps and the actual size (so a huge
declared size is refused before anything is allocated), swarm id, the tag (constant-time), then
the authenticated fields (model signature, kind, codec, flags, layers, compression ratio), and
only then decompresses. Replays are refused separately by :class:`ReplayWindow`, after
authentication.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import operator
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

import lz4.block

from swarmfl.core.codecs import CodecName
from swarmfl.core.quant import MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, Quantizer, make_quantizer
from swarmfl.errors import ConfigError, FrameDecodeError

__all__ = [
    "CODEC_FP32",
    "CODEC_INT4",
    "CODEC_INT8",
    "CODEC_NAMES",
    "FLAG_LZ4",
    "FLAG_SIGNED",
    "MAGIC",
    "MAX_FRAME_BYTES",
    "MAX_LAYERS",
    "MAX_PAYLOAD_BYTES",
    "MIN_KEY_BYTES",
    "SIGNATURE_BYTES",
    "SIGNED_BYTES",
    "TAG_BYTES",
    "VERSION",
    "Frame",
    "FrameKind",
    "FrameSigner",
    "SenderKeys",
    "codec_id",
    "decode_frame",
    "derive_swarm_key",
    "encode_frame",
    "epoch_hint",
    "epoch_payload",
    "frame_overhead_bytes",
    "frame_tag_check",
    "nack_payload",
    "nack_target",
    "payload_view",
    "quantizer_for",
]

MAGIC = b"SWFL"
VERSION = 1
FLAG_LZ4 = 0x01
FLAG_SIGNED = 0x02
SIGNED_BYTES = 64
TAG_BYTES = 16
SIGNATURE_BYTES = 8
MIN_KEY_BYTES = 16
MAX_FRAME_BYTES = 64 * 1024 * 1024
MAX_PAYLOAD_BYTES = 256 * 1024 * 1024
MAX_LAYERS = 1024
# LZ4 cannot expand more than ~255x (one extra length byte adds at most 255 output bytes), so a
# larger declared ratio is a lie; refusing it keeps an authenticated peer from making us allocate
# MAX_PAYLOAD_BYTES for a tiny frame.
_LZ4_MAX_RATIO = 255

CODEC_FP32 = 0
CODEC_INT8 = 1
CODEC_INT4 = 2
# The numbers are part of the frame format, so they are fixed here rather than taken from the
# order of swarmfl.core.codecs.CODECS; every codec there has one (tests/test_wire.py checks it).
CODEC_NAMES: dict[int, CodecName] = {CODEC_FP32: "fp32", CODEC_INT8: "int8", CODEC_INT4: "int4"}
_CODEC_IDS: dict[str, int] = {name: ident for ident, name in CODEC_NAMES.items()}

_U8, _U16, _U32, _U64 = 0xFF, 0xFFFF, 0xFFFF_FFFF, 0xFFFF_FFFF_FFFF_FFFF

_INT_FIELDS = (
    ("swarm_id", _U32),
    ("sender", _U32),
    ("samples", _U32),
    ("seq", _U64),
    ("counter", _U64),
    ("codec", _U8),
    ("block_size", _U16),
)

_HEAD = struct.Struct("<4sBBBBHII8sQQIH")
_LENGTHS = struct.Struct("<II")
_NACK = struct.Struct("<I")
_EPOCH = struct.Struct("<IQ")
_MIN_FRAME_BYTES = _HEAD.size + _LENGTHS.size + TAG_BYTES


class FrameKind(IntEnum):
    """What a frame carries."""

    KEY = 1  # a model stream keyframe
    DELTA = 2  # a model stream delta
    HELLO = 3  # presence / capabilities
    NACK = 4  # asks the sender named in the payload for a keyframe
    EPOCH = 5  # tells the sender named in the payload that its boot epoch is stale
    ROSTER = 6  # carries the swarm's roster, signed by the authority (spreads newer rosters)


class FrameSigner(Protocol):
    """Signs frames with one drone's own key (:class:`swarmfl.core.identity.DroneSigner`)."""

    drone_id: int

    def sign(self, message: bytes) -> bytes:
        """The 64-byte signature of ``message``."""
        ...


class SenderKeys(Protocol):
    """Checks senders' signatures (:class:`swarmfl.core.identity.RosterVerifier`)."""

    def verify(self, drone_id: int, message: bytes | memoryview, signature: bytes) -> bool:
        """Whether ``signature`` over ``message`` is ``drone_id``'s."""
        ...


# Control frames whose payload has one fixed size, checked on encode and decode.
_FIXED_PAYLOADS: dict[FrameKind, int] = {FrameKind.NACK: _NACK.size, FrameKind.EPOCH: _EPOCH.size}


def _check_uint(value: object, limit: int, key: str) -> int:
    """``value`` as a plain int in [0, limit] (numpy integers accepted, bools refused)."""
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        number = -1
    if isinstance(value, bool) or not 0 <= number <= limit:
        raise ConfigError(f"must be an integer in [0, {limit}], got {value!r}", key=key)
    return number


def _check_key(key: bytes) -> None:
    if not isinstance(key, (bytes, bytearray)) or len(key) < MIN_KEY_BYTES:
        raise ConfigError(f"the swarm key must be at least {MIN_KEY_BYTES} bytes", key="key")


def _check_signature(signature: object, key: str) -> bytes:
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES:
        raise ConfigError(f"must be {SIGNATURE_BYTES} bytes, got {signature!r}", key=key)
    return signature


def _layers_problem(layers: tuple[int, ...]) -> str | None:
    """Why ``layers`` is not a valid layer set, or None."""
    if len(layers) > MAX_LAYERS:
        return f"{len(layers)} layers, at most {MAX_LAYERS}"
    previous = -1
    for index in layers:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= _U16:
            return f"layer index {index!r} not in [0, {_U16}]"
        if index <= previous:
            return "layer indexes not sorted and unique"
        previous = index
    return None


def _block_problem(codec: int, block_size: int) -> str | None:
    if codec not in CODEC_NAMES:
        return f"unknown codec {codec}"
    if codec != CODEC_FP32 and not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
        return f"block size {block_size} not in [{MIN_BLOCK_SIZE}, {MAX_BLOCK_SIZE}]"
    return None


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame. ``payload`` is the uncompressed (quantized) payload.

    Raises :class:`ConfigError` naming the field when a value does not fit its wire field:
    swarm_id, sender, samples u32; seq, counter u64; signature 8 bytes; layers sorted, unique,
    each < 65536, at most MAX_LAYERS; codec 0..2; block_size u16 and 64..256 for int8/int4;
    payload at most MAX_PAYLOAD_BYTES. Integers are stored as plain ints (numpy integers are
    accepted), a list of layers as a tuple, a bytearray payload as bytes. A memoryview payload
    over an immutable ``bytes`` object is kept as it is (read-only, no copy: a decoded model
    frame's payload is such a view into the frame); any other memoryview is copied to bytes.
    """

    kind: FrameKind
    swarm_id: int
    sender: int
    signature: bytes
    seq: int
    counter: int
    layers: tuple[int, ...]
    samples: int
    codec: int
    block_size: int
    payload: bytes | memoryview

    def __post_init__(self) -> None:
        if type(self.kind) is not FrameKind:
            try:
                object.__setattr__(self, "kind", FrameKind(self.kind))
            except ValueError as exc:
                raise ConfigError(f"unknown frame kind {self.kind!r}", key="kind") from exc
        for name, limit in _INT_FIELDS:
            value = getattr(self, name)
            # Fast path for plain ints (every frame the node builds); convert anything else.
            if type(value) is not int or not 0 <= value <= limit:
                object.__setattr__(self, name, _check_uint(value, limit, name))
        _check_signature(self.signature, "signature")
        if not isinstance(self.layers, (tuple, list)):
            raise ConfigError(f"must be a tuple of ints, got {self.layers!r}", key="layers")
        layers = []
        for index in self.layers:
            try:
                layers.append(index if isinstance(index, bool) else operator.index(index))
            except TypeError as exc:
                raise ConfigError(f"layer index {index!r} is not an int", key="layers") from exc
        object.__setattr__(self, "layers", tuple(layers))
        problem = _layers_problem(self.layers)
        if problem is not None:
            raise ConfigError(problem, key="layers")
        problem = _block_problem(self.codec, self.block_size)
        if problem is not None:
            raise ConfigError(problem, key="codec" if "codec" in problem else "block_size")
        payload = self.payload
        if isinstance(payload, bytearray) or (
            isinstance(payload, memoryview)
            and not (payload.readonly and isinstance(payload.obj, bytes) and payload.contiguous)
        ):
            object.__setattr__(self, "payload", bytes(payload))
        elif isinstance(payload, memoryview):
            object.__setattr__(self, "payload", payload.cast("B"))
        if not isinstance(self.payload, (bytes, memoryview)):
            raise ConfigError("must be bytes", key="payload")
        if len(self.payload) > MAX_PAYLOAD_BYTES:
            raise ConfigError(
                f"{len(self.payload)} bytes, at most {MAX_PAYLOAD_BYTES}", key="payload"
            )


def codec_id(quantizer: Quantizer) -> int:
    """The wire codec number of ``quantizer`` (0 fp32, 1 int8, 2 int4).

    Raises :class:`ConfigError` for a quantizer with another name.
    """
    try:
        return _CODEC_IDS[quantizer.name]
    except KeyError as exc:
        raise ConfigError(f"no wire codec for quantizer {quantizer.name!r}", key="codec") from exc


def quantizer_for(frame: Frame) -> Quantizer:
    """The quantizer that decodes ``frame``'s payload (its codec and block size)."""
    return make_quantizer(CODEC_NAMES[frame.codec], frame.block_size)  # fp32 ignores the size


def nack_payload(target: int) -> bytes:
    """The payload of a NACK asking sender ``target`` for a keyframe.

    Raises :class:`ConfigError` if ``target`` is not a u32.
    """
    return _NACK.pack(_check_uint(target, _U32, "target"))


def nack_target(frame: Frame) -> int:
    """The sender a NACK frame asks for a keyframe.

    Raises :class:`FrameDecodeError` if ``frame`` is not a NACK (decode_frame already checked
    the payload size of NACKs it returns).
    """
    if frame.kind != FrameKind.NACK or len(frame.payload) != _NACK.size:
        raise FrameDecodeError("not a NACK frame")
    (target,) = _NACK.unpack(frame.payload)
    return int(target)


def epoch_payload(target: int, seen_seq: int) -> bytes:
    """The payload of an EPOCH frame: ``target``'s frames were refused, ``seen_seq`` is the
    highest sequence number of ``target`` the sender of the EPOCH frame has accepted.

    Raises :class:`ConfigError` if ``target`` is not a u32 or ``seen_seq`` not a u64.
    """
    return _EPOCH.pack(_check_uint(target, _U32, "target"), _check_uint(seen_seq, _U64, "seen_seq"))


def epoch_hint(frame: Frame) -> tuple[int, int]:
    """``(target, seen_seq)`` of an EPOCH frame (see :func:`epoch_payload`).

    Raises :class:`FrameDecodeError` if ``frame`` is not an EPOCH frame.
    """
    if frame.kind != FrameKind.EPOCH or len(frame.payload) != _EPOCH.size:
        raise FrameDecodeError("not an EPOCH frame")
    target, seen_seq = _EPOCH.unpack(frame.payload)
    return int(target), int(seen_seq)


def _tag(key: bytes, message: bytes | memoryview) -> bytes:
    return hmac.digest(key, message, hashlib.sha256)[:TAG_BYTES]


def frame_tag_check(key: bytes, swarm_id: int) -> Callable[[bytes], bool]:
    """A check that a whole frame carries swarm ``swarm_id``'s id and a valid tag under ``key``.

    What a radio runs on each frame it reassembles, before any per-source budget is charged and
    before the frame is queued for the agent: the frame's size bounds, magic and swarm id (byte
    comparisons), then one HMAC over the bytes before the tag, compared in constant time. It
    parses nothing else (:func:`decode_frame` does, once the frame reaches the node, and checks
    the tag again there: one more HMAC per authentic frame, about 0.6 ms per MB on this
    project's 2-core test machine, against a few microseconds per forgery it turns away
    before any budget is charged). Never raises for any ``frame`` content; raises
    :class:`~swarmfl.errors.ConfigError` for a bad ``key`` or ``swarm_id`` (the caller's bug).
    """
    _check_key(key)
    _check_uint(swarm_id, _U32, "swarm_id")
    swarm = struct.pack("<I", swarm_id)
    low, high = _MIN_FRAME_BYTES, MAX_FRAME_BYTES
    digest, sha256, equal = hmac.digest, hashlib.sha256, hmac.compare_digest
    body_end = -TAG_BYTES

    def check(frame: bytes) -> bool:
        if not low <= len(frame) <= high or frame[:4] != MAGIC or frame[10:14] != swarm:
            return False
        view = memoryview(frame)
        return equal(digest(key, view[:body_end], sha256)[:TAG_BYTES], view[body_end:])

    return check


def frame_overhead_bytes(layers: int) -> int:
    """Bytes a frame carrying ``layers`` layers adds around its payload (header, tag)."""
    return _HEAD.size + 2 * layers + _LENGTHS.size + TAG_BYTES


def encode_frame(
    frame: Frame,
    key: bytes,
    signer: FrameSigner | None = None,
    *,
    payload: bytes | memoryview | None = None,
) -> bytes:
    """The authenticated wire bytes of ``frame`` (see the module docstring for the layout).

    ``payload``, if given, is sent instead of ``frame.payload``: any contiguous buffer (a
    model's own memory), read during the call and copied once, into the frame; then
    :func:`payload_view` gives a view of that copy. The payload is lz4-compressed when that
    makes it smaller, stored raw otherwise. Raises
    :class:`ConfigError` for a key shorter than MIN_KEY_BYTES, a NACK whose payload is not 4
    bytes (an EPOCH frame's not 12), a ``signer`` of another drone than ``frame.sender``, or a
    result larger than MAX_FRAME_BYTES. With a ``signer`` the frame is signed (FLAG_SIGNED).
    """
    _check_key(key)
    if signer is not None and signer.drone_id != frame.sender:
        raise ConfigError(f"drone {signer.drone_id} cannot sign for {frame.sender}", key="signer")
    raw = frame.payload if payload is None else memoryview(payload).cast("B")
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise ConfigError(f"{len(raw)} bytes, at most {MAX_PAYLOAD_BYTES}", key="payload")
    fixed = _FIXED_PAYLOADS.get(frame.kind)
    if fixed is not None and len(raw) != fixed:
        raise ConfigError(
            f"a {frame.kind.name} payload is {fixed} bytes (see nack_payload, epoch_payload)",
            key="payload",
        )
    flags = 0
    stored = raw
    # Raw float32 mantissas do not compress; trying costs more than the rest of the encode.
    if raw and frame.codec != _CODEC_IDS["fp32"]:
        compressed = lz4.block.compress(raw, store_size=False)
        if len(compressed) < len(raw):
            stored, flags = compressed, FLAG_LZ4
    if signer is not None:
        flags |= FLAG_SIGNED
    size = frame_overhead_bytes(len(frame.layers)) + len(stored)
    size += SIGNED_BYTES if signer is not None else 0
    if size > MAX_FRAME_BYTES:
        raise ConfigError(f"frame of {size} bytes exceeds {MAX_FRAME_BYTES}", key="payload")
    head = b"".join(
        (
            _HEAD.pack(
                MAGIC,
                VERSION,
                int(frame.kind),
                flags,
                frame.codec,
                frame.block_size,
                frame.swarm_id,
                frame.sender,
                frame.signature,
                frame.seq,
                frame.counter,
                frame.samples,
                len(frame.layers),
            ),
            struct.pack(f"<{len(frame.layers)}H", *frame.layers),
            _LENGTHS.pack(len(raw), len(stored)),
        )
    )
    # MAC the header and the payload in place, then copy the payload once into the frame.
    mac = hmac.new(key, head, hashlib.sha256)
    mac.update(stored)
    if signer is None:
        return b"".join((head, stored, mac.digest()[:TAG_BYTES]))
    signature = signer.sign(head + stored)
    if len(signature) != SIGNED_BYTES:
        raise ConfigError(f"a signature is {SIGNED_BYTES} bytes", key="signer")
    mac.update(signature)
    return b"".join((head, stored, signature, mac.digest()[:TAG_BYTES]))


def payload_view(data: bytes) -> memoryview:
    """A read-only view of the payload stored in frame ``data`` (which :func:`encode_frame`
    made, so it is well formed; lz4-packed payloads are viewed packed). No copy."""
    (nlayers,) = struct.unpack_from("<H", data, _HEAD.size - 2)
    offset = _HEAD.size + 2 * nlayers
    _, stored_len = _LENGTHS.unpack_from(data, offset)
    start = offset + _LENGTHS.size
    return memoryview(data)[start : start + stored_len]


def decode_frame(
    data: bytes | bytearray | memoryview,
    key: bytes,
    *,
    swarm_id: int,
    signature: bytes | None,
    senders: SenderKeys | None = None,
) -> Frame:
    """Authenticate and decode one frame of swarm ``swarm_id`` (and model ``signature``).

    ``signature=None`` accepts any model signature. With ``senders`` (the roster's keys) only
    frames signed by their sender's key are accepted. Raises :class:`FrameDecodeError` (and
    nothing else) for any malformed, truncated, oversized, forged, foreign-swarm or
    foreign-model frame; :class:`ConfigError` only for a bad ``key``, ``swarm_id`` or
    ``signature`` argument (the caller's bug).
    """
    _check_key(key)
    _check_uint(swarm_id, _U32, "swarm_id")
    if signature is not None:
        _check_signature(signature, "signature")
    try:
        return _decode(data, key, swarm_id, signature, senders)
    except FrameDecodeError:
        raise
    except Exception as exc:  # the decoder is total: no other error may reach the receive path
        raise FrameDecodeError(f"malformed: {type(exc).__name__}") from exc


def _decode(
    data: bytes | bytearray | memoryview,
    key: bytes,
    swarm_id: int,
    signature: bytes | None,
    senders: SenderKeys | None,
) -> Frame:
    try:
        view = memoryview(data).cast("B")
    except TypeError as exc:
        raise FrameDecodeError("not bytes") from exc
    size = view.nbytes
    if size < _MIN_FRAME_BYTES:
        raise FrameDecodeError(f"truncated: {size} bytes")
    if size > MAX_FRAME_BYTES:
        raise FrameDecodeError(f"oversized: {size} bytes")
    (
        magic,
        version,
        kind,
        flags,
        codec,
        block_size,
        frame_swarm,
        sender,
        frame_signature,
        seq,
        counter,
        samples,
        nlayers,
    ) = _HEAD.unpack_from(view, 0)
    if magic != MAGIC:
        raise FrameDecodeError("bad magic")
    if version != VERSION:
        raise FrameDecodeError(f"unsupported version: {version}")
    if nlayers > MAX_LAYERS:
        raise FrameDecodeError(f"too many layers: {nlayers}")
    offset = _HEAD.size + 2 * nlayers
    if size < offset + _LENGTHS.size + TAG_BYTES:
        raise FrameDecodeError(f"truncated: {size} bytes for {nlayers} layers")
    raw_len, stored_len = _LENGTHS.unpack_from(view, offset)
    payload_start = offset + _LENGTHS.size
    if raw_len > MAX_PAYLOAD_BYTES:
        raise FrameDecodeError(f"payload too large: {raw_len} bytes declared")
    signed = SIGNED_BYTES if flags & FLAG_SIGNED else 0
    expected = payload_start + stored_len + signed + TAG_BYTES
    if size < expected:
        raise FrameDecodeError(f"truncated: {size} bytes, header says {expected}")
    if size > expected:
        raise FrameDecodeError(f"trailing bytes: {size - expected}")
    if frame_swarm != swarm_id:
        raise FrameDecodeError(f"foreign swarm: {frame_swarm}")
    body = view[: size - TAG_BYTES]
    if not hmac.compare_digest(_tag(key, body), view[size - TAG_BYTES :].tobytes()):
        raise FrameDecodeError("bad tag")
    # A ROSTER frame's payload is signed by the authority itself: a drone the receiver's roster
    # does not list yet (a newer drone) can still bring the roster that lists it.
    if senders is not None and kind != FrameKind.ROSTER:
        end = size - TAG_BYTES
        if not signed:
            raise FrameDecodeError("unsigned: the swarm needs per-drone signatures")
        # The signed bytes are verified in place (a view), not copied.
        if not senders.verify(sender, view[: end - signed], view[end - signed : end].tobytes()):
            raise FrameDecodeError(f"bad signature: not drone {sender}'s per the roster")
    # Everything below is authenticated: a failure means a peer with the key is broken.
    if signature is not None and frame_signature != signature:
        raise FrameDecodeError("foreign model")
    try:
        frame_kind = FrameKind(kind)
    except ValueError as exc:
        raise FrameDecodeError(f"unknown kind: {kind}") from exc
    problem = _block_problem(codec, block_size)
    if problem is not None:
        raise FrameDecodeError(f"bad codec: {problem}")
    if flags & ~(FLAG_LZ4 | FLAG_SIGNED):
        raise FrameDecodeError(f"unknown flags: {flags:#04x}")
    layers = struct.unpack_from(f"<{nlayers}H", view, _HEAD.size)
    if any(a >= b for a, b in itertools.pairwise(layers)):
        raise FrameDecodeError("bad layers: not sorted and unique")
    stored = view[payload_start : payload_start + stored_len]
    # A model payload stored raw in an immutable frame is not copied: the Frame holds a
    # read-only view of it (the frame's bytes live as long as the Frame).
    borrow = frame_kind in (FrameKind.KEY, FrameKind.DELTA) and isinstance(data, bytes)
    payload = _unpack_payload(stored, flags, raw_len, borrow)
    fixed = _FIXED_PAYLOADS.get(frame_kind)
    if fixed is not None and len(payload) != fixed:
        raise FrameDecodeError(f"bad {frame_kind.name} payload: {len(payload)} bytes")
    return Frame(
        kind=frame_kind,
        swarm_id=frame_swarm,
        sender=sender,
        signature=frame_signature,
        seq=seq,
        counter=counter,
        layers=layers,
        samples=samples,
        codec=codec,
        block_size=block_size,
        payload=payload,
    )


def _unpack_payload(
    stored: memoryview, flags: int, raw_len: int, borrow: bool
) -> bytes | memoryview:
    if not flags & FLAG_LZ4:
        if len(stored) != raw_len:
            raise FrameDecodeError(f"length mismatch: raw payload {len(stored)} != {raw_len}")
        return stored if borrow else stored.tobytes()
    if raw_len == 0 or len(stored) == 0:
        raise FrameDecodeError("length mismatch: empty compressed payload")
    if raw_len > _LZ4_MAX_RATIO * (len(stored) + 1):
        raise FrameDecodeError(f"impossible ratio: {raw_len} bytes from {len(stored)}")
    try:
        payload: bytes = lz4.block.decompress(stored, uncompressed_size=raw_len)
    except (lz4.block.LZ4BlockError, ValueError, MemoryError) as exc:
        raise FrameDecodeError("corrupt lz4 payload") from exc
    if len(payload) != raw_len:
        raise FrameDecodeError(f"length mismatch: lz4 gave {len(payload)} of {raw_len} bytes")
    return payload


def _hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 (RFC 5869): extract then expand ``length`` bytes (at most 8160)."""
    prk = hmac.digest(salt or bytes(32), ikm, hashlib.sha256)
    blocks = []
    previous = b""
    for counter in range(1, -(-length // 32) + 1):
        previous = hmac.digest(prk, previous + info + bytes([counter]), hashlib.sha256)
        blocks.append(previous)
    return b"".join(blocks)[:length]


def derive_swarm_key(secret: bytes | str, swarm_id: int) -> bytes:
    """The 32-byte key of swarm ``swarm_id``: HKDF-SHA256 of ``secret`` (a str is UTF-8).

    Distinct swarms sharing a secret get unrelated keys. Raises :class:`ConfigError` for an
    empty secret or a swarm id that is not a u32.
    """
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    if not isinstance(secret, bytes) or not secret:
        raise ConfigError("must be a non-empty str or bytes", key="secret")
    _check_uint(swarm_id, _U32, "swarm_id")
    return _hkdf_sha256(secret, b"swarmfl swarm key v1", b"swarm" + struct.pack("<I", swarm_id), 32)
