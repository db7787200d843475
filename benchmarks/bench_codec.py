"""Codec throughput and lz4 ratios for swarmfl.core.quant / swarmfl.core.wire, on one core.

Prints JSON lines:

* ``throughput``: encode and decode MB/s (of float32 input, 1 MB = 1e6 bytes) for fp32, int8
  and int4 at block 128 on ``--values`` values, best of ``--repeats``; next to a baseline
  measured in the same run (``ndarray.tobytes`` for encode, ``frombuffer(...).copy()`` for
  decode: a plain memory copy of the same float32 input) and the ratio to it.
* ``lz4``: payload size, lz4 size and ratio (raw / lz4) on top of each codec for a realistic
  delta (gaussian noise), a partial delta (only a quarter of the layers changed), and a
  realistic model (per-layer gaussian weights with He-like scales, as in a trained MLP).
* ``frame``: encode_frame + decode_frame MB/s for the int8 payload (HMAC + lz4 included).

    python benchmarks/bench_codec.py --values 1000000 --repeats 7
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections.abc import Callable

# Pin BLAS/OpenMP pools to one thread before numpy is imported (the process is also pinned to
# one CPU in main(); numpy's element-wise kernels are single-threaded anyway).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import lz4.block  # noqa: E402
import numpy as np  # noqa: E402

from swarmfl.core.quant import make_quantizer  # noqa: E402
from swarmfl.core.wire import Frame, FrameKind, decode_frame, encode_frame  # noqa: E402

KEY = bytes(range(32))


def pin_one_core() -> int | None:
    """Pin this process to one CPU (the first allowed); return it, or None if unsupported."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


def best_seconds(function: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` timed calls (after one warm-up call)."""
    function()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        function()
        times.append(time.perf_counter() - t0)
    return min(times)


def mlp_like(values: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian layers of a 784-width MLP with He-like scales, concatenated to ``values``."""
    parts = []
    remaining = values
    fan_in = 784
    while remaining > 0:
        size = min(remaining, fan_in * 256)
        parts.append(rng.normal(0.0, np.sqrt(2.0 / fan_in), size).astype(np.float32))
        parts.append(np.zeros(min(256, max(remaining - size, 0)), dtype=np.float32))  # biases
        remaining -= size + parts[-1].size
        fan_in = 256
    return np.concatenate(parts)[:values]


def throughput(values: int, repeats: int, rng: np.random.Generator) -> list[dict[str, object]]:
    """Encode/decode MB/s per codec and the memcpy baseline."""
    x = rng.standard_normal(values).astype(np.float32)
    megabytes = x.nbytes / 1e6
    raw = x.tobytes()
    base_enc = megabytes / best_seconds(x.tobytes, repeats)
    base_dec = megabytes / best_seconds(lambda: np.frombuffer(raw, np.float32).copy(), repeats)
    rows: list[dict[str, object]] = [
        {
            "bench": "throughput",
            "codec": "baseline-memcpy",
            "values": values,
            "encode_MBps": round(base_enc),
            "decode_MBps": round(base_dec),
        }
    ]
    for name in ("fp32", "int8", "int4"):
        quantizer = make_quantizer(name, 128)  # type: ignore[arg-type]
        payload = quantizer.encode(x)
        enc = megabytes / best_seconds(functools.partial(quantizer.encode, x), repeats)
        dec = megabytes / best_seconds(
            functools.partial(quantizer.decode, payload, values), repeats
        )
        rows.append(
            {
                "bench": "throughput",
                "codec": name,
                "block": 128,
                "values": values,
                "payload_bytes": len(payload),
                "encode_MBps": round(enc),
                "decode_MBps": round(dec),
                "encode_vs_baseline": round(enc / base_enc, 3),
                "decode_vs_baseline": round(dec / base_dec, 3),
            }
        )
    return rows


def lz4_ratios(values: int, repeats: int, rng: np.random.Generator) -> list[dict[str, object]]:
    """lz4 on top of each codec for realistic deltas and weights."""
    model = mlp_like(values, rng)
    delta = (rng.standard_normal(values) * 1e-3).astype(np.float32)
    partial = np.zeros(values, dtype=np.float32)
    quarter = values // 4
    partial[-quarter:] = delta[-quarter:]
    cases = {"gaussian-delta": delta, "partial-delta-25pct": partial, "mlp-like-model": model}
    rows: list[dict[str, object]] = []
    for case, vector in cases.items():
        for name in ("fp32", "int8", "int4"):
            payload = make_quantizer(name, 128).encode(vector)  # type: ignore[arg-type]
            packed = lz4.block.compress(payload, store_size=False)
            seconds = best_seconds(
                functools.partial(lz4.block.compress, payload, store_size=False), repeats
            )
            rows.append(
                {
                    "bench": "lz4",
                    "case": case,
                    "codec": name,
                    "payload_bytes": len(payload),
                    "lz4_bytes": len(packed),
                    "lz4_ratio": round(len(payload) / len(packed), 3),
                    "wire_vs_fp32": round(4 * values / min(len(payload), len(packed)), 2),
                    "lz4_MBps": round(len(payload) / 1e6 / seconds),
                }
            )
    return rows


def frame_throughput(values: int, repeats: int, rng: np.random.Generator) -> dict[str, object]:
    """encode_frame/decode_frame MB/s (of the int8 payload) for a gaussian delta."""
    payload = make_quantizer("int8", 128).encode(rng.standard_normal(values).astype(np.float32))
    frame = Frame(
        kind=FrameKind.DELTA,
        swarm_id=1,
        sender=2,
        signature=b"sig8byte",
        seq=3,
        counter=4,
        layers=(0, 1, 2),
        samples=100,
        codec=1,
        block_size=128,
        payload=payload,
    )
    data = encode_frame(frame, KEY)
    megabytes = len(payload) / 1e6
    enc = megabytes / best_seconds(lambda: encode_frame(frame, KEY), repeats)
    dec = megabytes / best_seconds(
        lambda: decode_frame(data, KEY, swarm_id=1, signature=b"sig8byte"), repeats
    )
    return {
        "bench": "frame",
        "codec": "int8",
        "payload_bytes": len(payload),
        "frame_bytes": len(data),
        "encode_MBps": round(enc),
        "decode_MBps": round(dec),
    }


def main(argv: list[str] | None = None) -> int:
    """Run all benchmarks and print one JSON object per line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cpu = pin_one_core()
    rng = np.random.default_rng(args.seed)
    print(json.dumps({"bench": "setup", "pinned_cpu": cpu, "numpy": np.__version__}))
    for row in throughput(args.values, args.repeats, rng):
        print(json.dumps(row))
    for row in lz4_ratios(args.values, args.repeats, rng):
        print(json.dumps(row))
    print(json.dumps(frame_throughput(args.values, args.repeats, rng)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
