"""Long fuzz of swarmfl.core.wire.decode_frame: mutated frames must only raise FrameDecodeError.

Mutations (seeded ``random.Random``): bit flips, byte overwrites, inserts, deletes, truncations,
splices of two frames, extreme values in the length fields, and a share of mutants *re-signed*
with the swarm key, so the checks behind the tag (kinds, codecs, flags, layers, lz4 on garbage,
compression ratios) are fuzzed too, not only the tag check.

Prints JSON lines: a progress line every ``--report-every`` frames, then a summary with the
frame count, accepted mutants, errors by reason, the slowest single decode in microseconds (and
how many decodes took over 1 ms) and the RSS growth (psutil) from after warm-up to the end.
Exits 1 if any other exception escaped.

    python benchmarks/fuzz_wire.py --frames 1000000
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import hmac
import json
import random
import struct
import sys
import time
from collections.abc import Callable

import lz4.block

from swarmfl.core.wire import (
    TAG_BYTES,
    Frame,
    FrameKind,
    decode_frame,
    encode_frame,
    epoch_payload,
    nack_payload,
)
from swarmfl.errors import FrameDecodeError

KEY = bytes(range(32))
SWARM_ID = 7
SIGNATURE = b"modelsig"
_HEAD_BYTES = 48


def sign(body: bytes, key: bytes = KEY) -> bytes:
    """``body`` followed by its valid tag."""
    return body + hmac.digest(key, body, hashlib.sha256)[:TAG_BYTES]


def corpus(rng: random.Random, count: int = 48) -> list[bytes]:
    """Valid frames of every kind and codec, compressible and not, small to a few kB."""
    frames = []
    for i in range(count):
        kind = FrameKind(1 + i % len(FrameKind))
        codec = i % 3
        nlayers = rng.randrange(0, 12)
        layers = tuple(sorted(rng.sample(range(300), nlayers)))
        size = rng.choice([0, 1, 17, 200, 1500, 4000])
        if kind == FrameKind.NACK:
            payload = nack_payload(rng.randrange(2**32))
        elif kind == FrameKind.EPOCH:
            payload = epoch_payload(rng.randrange(2**32), rng.randrange(2**64))
        elif i % 2:
            payload = rng.randbytes(size)
        else:
            payload = bytes(rng.choice([0, 0, 1, 255]) for _ in range(size))
        frame = Frame(
            kind=kind,
            swarm_id=SWARM_ID,
            sender=rng.randrange(2**32),
            signature=SIGNATURE,
            seq=rng.randrange(2**64),
            counter=rng.randrange(2**64),
            layers=layers,
            samples=rng.randrange(2**32),
            codec=codec,
            block_size=rng.choice([64, 128, 256]),
            payload=payload,
        )
        frames.append(encode_frame(frame, KEY))
    return frames


def _flip_bits(rng: random.Random, data: bytearray) -> None:
    for _ in range(rng.randint(1, 8)):
        position = rng.randrange(len(data) * 8)
        data[position // 8] ^= 1 << (position % 8)


def _overwrite(rng: random.Random, data: bytearray) -> None:
    for _ in range(rng.randint(1, 4)):
        data[rng.randrange(len(data))] = rng.randrange(256)


def _insert(rng: random.Random, data: bytearray) -> None:
    at = rng.randrange(len(data) + 1)
    data[at:at] = rng.randbytes(rng.randint(1, 16))


def _delete(rng: random.Random, data: bytearray) -> None:
    at = rng.randrange(len(data))
    del data[at : at + rng.randint(1, 16)]


def _truncate(rng: random.Random, data: bytearray) -> None:
    del data[rng.randrange(len(data)) :]


def _extreme_field(rng: random.Random, data: bytearray) -> None:
    """An extreme value in a header count or length field (nlayers, raw or stored length)."""
    if len(data) < _HEAD_BYTES:
        return
    nlayers = struct.unpack_from("<H", data, 46)[0]
    choices = [(46, "<H")]
    lengths_at = _HEAD_BYTES + 2 * nlayers
    if len(data) >= lengths_at + 8:
        choices += [(lengths_at, "<I"), (lengths_at + 4, "<I")]
    offset, fmt = rng.choice(choices)
    top = 0xFFFF if fmt == "<H" else 0xFFFF_FFFF
    value = rng.choice([0, 1, top, top - 1, rng.randrange(top + 1), 1024, 1025, 1 << 28])
    value &= top
    struct.pack_into(fmt, data, offset, value)


def _garble_payload(rng: random.Random, data: bytearray) -> None:
    """Random lz4 input with a random declared raw size and consistent stored length."""
    if len(data) < _HEAD_BYTES + 8 + TAG_BYTES:
        return
    nlayers = struct.unpack_from("<H", data, 46)[0]
    lengths_at = _HEAD_BYTES + 2 * nlayers
    if len(data) < lengths_at + 8 + TAG_BYTES:
        return
    if rng.random() < 0.5:
        garbage = rng.randbytes(rng.randint(1, 300))
    else:  # a real lz4 block, truncated or bit-flipped
        block = bytearray(lz4.block.compress(rng.randbytes(64) * 8, store_size=False))
        _flip_bits(rng, block)
        garbage = bytes(block[: rng.randint(1, len(block))])
    raw = rng.choice([1, len(garbage), 512, rng.randrange(1, 70_000)])
    data[6] |= 0x01  # flags: lz4
    del data[lengths_at:]
    data += sign(bytes(data) + struct.pack("<II", raw, len(garbage)) + garbage)[len(data) :]


MUTATIONS: list[Callable[[random.Random, bytearray], None]] = [
    _flip_bits,
    _overwrite,
    _insert,
    _delete,
    _truncate,
    _extreme_field,
    _garble_payload,
]


def mutate(rng: random.Random, frames: list[bytes], resign_share: float = 0.5) -> bytes:
    """One mutant of a random corpus frame; ``resign_share`` of them get a valid tag again."""
    data = bytearray(rng.choice(frames))
    if rng.random() < 0.1:
        other = rng.choice(frames)
        data = data[: rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1) :]
    for _ in range(rng.randint(1, 3)):
        if data:
            rng.choice(MUTATIONS)(rng, data)
    if len(data) > TAG_BYTES and rng.random() < resign_share:
        return sign(bytes(data[:-TAG_BYTES]))
    return bytes(data)


def reason_of(error: FrameDecodeError) -> str:
    """The reason part of a decode error message (the text before ':')."""
    return str(error).split(":", 1)[0]


def run(
    frames: int, seed: int, resign_share: float, report_every: int, out: Callable[[str], None]
) -> int:
    """Fuzz ``frames`` mutants; print JSON lines via ``out``; return the process exit code."""
    import psutil  # only the benchmark needs it

    rng = random.Random(seed)
    base = corpus(rng)
    process = psutil.Process()
    reasons: collections.Counter[str] = collections.Counter()
    accepted = 0
    slowest_s = 0.0
    total_s = 0.0
    over_1ms = 0
    rss_start = 0
    warmup = min(2_000, frames // 10)
    started = time.perf_counter()
    for index in range(frames):
        if index == warmup:
            rss_start = process.memory_info().rss
        data = mutate(rng, base, resign_share)
        t0 = time.perf_counter()
        try:
            decode_frame(data, KEY, swarm_id=SWARM_ID, signature=SIGNATURE)
        except FrameDecodeError as error:
            reasons[reason_of(error)] += 1
        except Exception as error:  # the whole point: count anything that escaped
            reasons[f"UNEXPECTED {type(error).__name__}: {error}"] += 1
        else:
            accepted += 1
        elapsed = time.perf_counter() - t0
        total_s += elapsed
        slowest_s = max(slowest_s, elapsed)
        over_1ms += elapsed > 1e-3
        if report_every and (index + 1) % report_every == 0 and index + 1 < frames:
            out(json.dumps({"progress": index + 1, "seconds": time.perf_counter() - started}))
    rss_end = process.memory_info().rss
    unexpected = sum(n for reason, n in reasons.items() if reason.startswith("UNEXPECTED"))
    out(
        json.dumps(
            {
                "frames": frames,
                "seed": seed,
                "resign_share": resign_share,
                "accepted": accepted,
                "errors": dict(reasons.most_common()),
                "unexpected": unexpected,
                "slowest_decode_us": round(slowest_s * 1e6, 1),
                "mean_decode_us": round(total_s / max(frames, 1) * 1e6, 2),
                # on a shared machine the slowest decodes are scheduler hiccups; this says how many
                "decodes_over_1ms": over_1ms,
                "rss_start_mib": round(rss_start / 2**20, 2),
                "rss_end_mib": round(rss_end / 2**20, 2),
                "rss_growth_mib": round((rss_end - rss_start) / 2**20, 2),
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
    )
    return 1 if unexpected else 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the fuzz."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1_000_000, help="mutants to decode")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--resign-share", type=float, default=0.5, help="share of mutants given a valid tag"
    )
    parser.add_argument("--report-every", type=int, default=100_000, help="0: no progress")
    args = parser.parse_args(argv)
    return run(args.frames, args.seed, args.resign_share, args.report_every, print)


if __name__ == "__main__":
    sys.exit(main())
