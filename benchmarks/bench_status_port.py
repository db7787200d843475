"""What status-port attacks cost an agent, and what they get back (swarmfl.radio.status_port).

Drives :class:`StatusResponder` (the agent's side of the status port, sans-IO) with a status
record the size of a field drone's (10 peers), the time passed in as a real agent would, and
prints one JSON line per traffic kind:

* ``answered`` (the baseline, measured in the same run): authenticated queries within the rates,
  every one answered;
* ``unauthenticated``: queries without the key (the old format, or a guess);
* ``replayed``: one captured good query sent again and again;
* ``one_source``: authenticated queries flooding from one address;
* ``spoofed_sources``: authenticated queries from ever-new addresses (a spoofer).

Each line: queries, answered / refused / rate limited, CPU microseconds per query (thread
time) and its ratio to the baseline's, and bytes sent back per byte received (1.0 or less:
never an amplifier).

    python benchmarks/bench_status_port.py --queries 20000
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable

from swarmfl.radio.status_port import StatusResponder, status_key, status_request

KEY = status_key(bytes(range(32)))
RECORD = {
    "v": 1,
    "t": 1.8e9,
    "mono": 12345.678901,
    "drone": 3,
    "swarm": 7,
    "state": "running",
    "radio": "udp",
    "trains": "full",
    "samples": 180,
    "rounds": 4000,
    "counter": 4000,
    "accuracy": 0.953,
    "loss": 0.21,
    "train_loss": 0.18,
    "peers_announced": list(range(10)),
    "peers_heard": {str(i): 0.812345 for i in range(10)},
    "peers_left": {},
    "peers_lost": {},
    **{f"counter_{i}": 123456 for i in range(30)},
}


def run(kind: str, queries: int, make: Callable[[int], tuple[bytes, str]], step_s: float) -> dict:
    """Feed ``queries`` datagrams from ``make(i)`` (datagram, source), ``step_s`` apart."""
    port = StatusResponder(KEY, lambda: RECORD)
    datagrams = [make(i) for i in range(queries)]
    bytes_in = bytes_out = 0
    started = time.thread_time()
    for i, (datagram, source) in enumerate(datagrams):
        answer = port.answer(datagram, source, i * step_s)
        bytes_in += len(datagram)
        bytes_out += len(answer) if answer is not None else 0
    cpu_s = time.thread_time() - started
    return {
        "bench": "status_port",
        "traffic": kind,
        "queries": queries,
        **port.counters(),
        "us_per_query": round(cpu_s / queries * 1e6, 2),
        "bytes_out_per_byte_in": round(bytes_out / bytes_in, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=1400, help="query size in bytes (1400)")
    args = parser.parse_args()
    n, size = args.queries, args.size
    good = status_request(KEY, os.urandom(16), size)
    wrong = status_key(bytes(32))
    kinds: dict[str, tuple[Callable[[int], tuple[bytes, str]], float]] = {
        # one query a second from each of 10 ground stations: all within the rates
        "answered": (
            lambda i: (status_request(KEY, os.urandom(16), size), f"10.0.0.{i % 10}"),
            0.1,
        ),
        "unauthenticated": (
            lambda i: (
                status_request(wrong, os.urandom(16), size),
                f"10.1.{i // 256 % 256}.{i % 256}",
            ),
            1e-5,
        ),
        "replayed": (lambda i: (good, f"10.2.{i // 256 % 256}.{i % 256}"), 1e-5),
        "one_source": (lambda i: (status_request(KEY, os.urandom(16), size), "10.3.0.1"), 1e-5),
        "spoofed_sources": (
            lambda i: (
                status_request(KEY, os.urandom(16), size),
                f"10.{4 + i // 65536}.{i // 256 % 256}.{i % 256}",
            ),
            1e-5,
        ),
    }
    baseline = None
    for kind, (make, step_s) in kinds.items():
        line = run(kind, n, make, step_s)
        baseline = baseline or line["us_per_query"]
        line["ratio_to_answered"] = round(line["us_per_query"] / baseline, 3)
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
