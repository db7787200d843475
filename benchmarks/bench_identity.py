"""Per-frame cost of per-drone Ed25519 signatures, against the swarm-key HMAC, on one core.

Prints one JSON line per frame size: the microseconds to sign and to verify a frame with
Ed25519 (``cryptography``, OpenSSL), next to the HMAC-SHA256 tag the simulator uses (the
baseline, measured in the same run), and the ratio. Frame sizes: a HELLO, a small model's delta,
a 64 KiB keyframe.

    python benchmarks/bench_identity.py --repeats 2000
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from swarmfl.core.identity import DroneSigner, Roster, RosterVerifier, public_key_bytes

KEY = bytes(range(32))


def best_us(call: Callable[[], object], repeats: int) -> float:
    """The median time of ``call`` in microseconds, over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter_ns()
        call()
        times.append(time.perf_counter_ns() - started)
    times.sort()
    return times[len(times) // 2] / 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2000)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    key = Ed25519PrivateKey.generate()
    signer = DroneSigner(1, key)
    verifier = RosterVerifier(Roster(1, 1).with_drone(1, public_key_bytes(key)))
    for size in (76, 3_000, 65_536):
        frame = os.urandom(size)
        signature = signer.sign(frame)
        assert verifier.verify(1, frame, signature)
        hmac_us = best_us(lambda f=frame: hmac.digest(KEY, f, hashlib.sha256), args.repeats)
        sign_us = best_us(lambda f=frame: signer.sign(f), args.repeats)
        verify_us = best_us(lambda f=frame, s=signature: verifier.verify(1, f, s), args.repeats)
        print(
            json.dumps(
                {
                    "bench": "frame_signature",
                    "frame_bytes": size,
                    "hmac_sha256_us": round(hmac_us, 2),
                    "ed25519_sign_us": round(sign_us, 2),
                    "ed25519_verify_us": round(verify_us, 2),
                    "sign_vs_hmac": round(sign_us / hmac_us, 1),
                    "verify_vs_hmac": round(verify_us / hmac_us, 1),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
