"""Benchmark: three published behaviours of decentralised learning, reproduced across seeds.

(a) Compressed gossip (CHOCO-style error feedback): int8 deltas reach fp32's final accuracy
    within 1 point at <= 15 % of the bytes.
(b) Staleness weighting: in a fleet where a quarter of the drones train 5x slower, the
    polynomial weight ``(1 + staleness) ** -0.5`` beats the unweighted merge (exponent 0) on
    time to 0.9 accuracy.
(c) Gossip against the synchronous baselines under 30 % frame loss and churn: D-PSGD (rounds
    with a barrier) and FedAvg through a ground station, time to 0.9 accuracy.

Every variant runs the same scenario (the quickstart's digits MLP; the world, radio, churn and
drones of each behaviour are the same for its variants) for each seed, through
``swarmfl.sim.runner.run_scenario``, in a pool of ``--workers`` processes (results do not depend
on it: each run is reproducible by its seed). Prints one JSON line per run, one per variant
(mean, std and 95 % Student-t confidence interval across seeds of final accuracy, time to 0.9,
bytes), then a Markdown table per behaviour. Time to 0.9 is averaged over the seeds that reached it
(``reached`` says how many did).

    python benchmarks/bench_reproduce.py            # 5 seeds, full length (several minutes)
    python benchmarks/bench_reproduce.py --quick    # 2 seeds, shorter runs (development)
    python benchmarks/bench_reproduce.py --only c   # one behaviour
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
from scipy import stats

# (a): workload W's world (random 4-regular graph, lossless), 16 drones.
COMPRESSION = {
    "swarm.drones": 16,
    "topology.kind": "random_regular",
    "topology.degree": 4,
    "merge.alpha": 1.0,
}
# (b): 12 drones that train a round in about one period and 4 that take five (FLOP/s chosen
# for the quickstart MLP on ~90 samples: ~5 MFLOP a round), on a ring.
SLOW_FLEET = {
    "swarm.drones": 16,
    "swarm.devices": [
        {"name": "fast", "count": 12, "flops_per_s": 6e6},
        {"name": "slow", "count": 4, "flops_per_s": 1.2e6},
    ],
    "topology.kind": "random_regular",
    "topology.degree": 4,
}
# (c): 16 drones on a random 4-regular graph, 30 % frame loss on every link, churn (up 40 s,
# down 10 s on average); the ground station is linked to every drone (with the same loss, and
# its own churn).
LOSSY_WORLD = {
    "swarm.drones": 16,
    "topology.kind": "random_regular",
    "topology.degree": 4,
    "radio.loss": 0.3,
    "churn.enabled": True,
    "churn.mean_up_s": 40.0,
    "churn.mean_down_s": 10.0,
}

BEHAVIOURS: dict[str, tuple[str, dict[str, Any], dict[str, dict[str, Any]]]] = {
    "a": (
        "compressed gossip: int8 error feedback vs fp32",
        COMPRESSION,
        {"fp32": {"gossip.codec": "fp32"}, "int8": {"gossip.codec": "int8"}},
    ),
    "b": (
        "staleness weighting, 4 of 16 drones 5x slower",
        SLOW_FLEET,
        {"exponent 0": {"merge.exponent": 0.0}, "exponent 0.5": {"merge.exponent": 0.5}},
    ),
    "c": (
        "gossip vs D-PSGD vs FedAvg, 30 % loss and churn",
        LOSSY_WORLD,
        {
            "gossip": {"learning.strategy": "gossip"},
            "dpsgd": {"learning.strategy": "dpsgd"},
            "fedavg": {"learning.strategy": "fedavg"},
        },
    ),
}


def run_one(overrides: dict[str, Any], seed: int, duration_s: float) -> dict[str, Any]:
    """One run: final mean accuracy, time to 0.9 (None if never), bytes, delivery ratio."""
    from swarmfl.sim.runner import run_scenario
    from swarmfl.testing import scenario

    settings = {
        **overrides,
        "run.seed": seed,
        "run.duration_s": duration_s,
        "run.eval_interval_s": 5.0,
    }
    summary = run_scenario(scenario("quickstart", settings), None)
    return {
        "accuracy": summary["accuracy"]["mean"],
        "time_to_0.9": summary["time_to_accuracy"]["0.9"],
        "bytes_sent": summary["bytes_sent"],
        "delivery_ratio": summary["delivery_ratio"],
        "wall_seconds": summary["wall_seconds"],
    }


def interval(values: Sequence[float]) -> dict[str, float | None]:
    """Mean, sample std and the 95 % Student-t confidence interval of ``values``."""
    if not values:
        return {"mean": None, "std": None, "ci95_low": None, "ci95_high": None}
    array = np.asarray(values, dtype=float)
    mean = float(array.mean())
    if array.size < 2:
        return {"mean": mean, "std": None, "ci95_low": None, "ci95_high": None}
    std = float(array.std(ddof=1))
    half = float(stats.t.ppf(0.975, array.size - 1)) * std / math.sqrt(array.size)
    return {"mean": mean, "std": std, "ci95_low": mean - half, "ci95_high": mean + half}


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-variant statistics across seeds."""
    reached = [r["time_to_0.9"] for r in runs if r["time_to_0.9"] is not None]
    return {
        "seeds": len(runs),
        "accuracy": interval([r["accuracy"] for r in runs]),
        "time_to_0.9": interval(reached),
        "reached_0.9": len(reached),
        "bytes_sent": interval([r["bytes_sent"] for r in runs]),
    }


def _ci(stat: dict[str, float | None], digits: int, scale: float = 1.0) -> str:
    if stat["mean"] is None:
        return "never"
    mean = stat["mean"] * scale
    if stat["ci95_low"] is None or stat["ci95_high"] is None:
        return f"{mean:.{digits}f}"
    half = (stat["ci95_high"] - stat["mean"]) * scale
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def table(title: str, rows: dict[str, dict[str, Any]]) -> str:
    """A Markdown table of one behaviour's variants (mean ± 95 % CI half-width)."""
    lines = [
        f"**{title}**",
        "",
        "| variant | final accuracy | time to 0.9 (s) | reached 0.9 | MB sent |",
        "|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {_ci(row['accuracy'], 3)} | {_ci(row['time_to_0.9'], 1)} "
            f"| {row['reached_0.9']}/{row['seeds']} | {_ci(row['bytes_sent'], 2, 1e-6)} |"
        )
    return "\n".join(lines)


def verdict(key: str, rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Whether the published behaviour held, with the figures it rests on."""
    if key == "a":
        fp32, int8 = rows["fp32"], rows["int8"]
        gap = fp32["accuracy"]["mean"] - int8["accuracy"]["mean"]
        ratio = int8["bytes_sent"]["mean"] / fp32["bytes_sent"]["mean"]
        return {
            "accuracy_gap_points": round(100 * gap, 2),
            "bytes_ratio": round(ratio, 4),
            "held": gap <= 0.01 and ratio <= 0.15,
        }
    if key == "b":
        slow, weighted = rows["exponent 0"], rows["exponent 0.5"]
        a, b = slow["time_to_0.9"]["mean"], weighted["time_to_0.9"]["mean"]
        return {
            "time_to_0.9_exponent_0": a,
            "time_to_0.9_exponent_0.5": b,
            "held": b is not None
            and (a is None or b < a)
            and weighted["reached_0.9"] >= slow["reached_0.9"],
        }
    times = {name: row["time_to_0.9"]["mean"] for name, row in rows.items()}
    return {"time_to_0.9": times}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds, 40 virtual seconds")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per variant (default 5)")
    parser.add_argument("--only", default="abc", help="behaviours to run, e.g. 'ac'")
    parser.add_argument("--workers", type=int, default=2, help="processes running the runs")
    args = parser.parse_args(argv)
    seeds = args.seeds or (2 if args.quick else 5)
    duration = 40.0 if args.quick else 90.0
    for key in args.only:
        if key not in BEHAVIOURS:
            parser.error(f"--only: unknown behaviour {key!r}; choose from a, b, c")
    jobs = [
        (key, name, seed, {**BEHAVIOURS[key][1], **overrides})
        for key in args.only
        for name, overrides in BEHAVIOURS[key][2].items()
        for seed in range(1, seeds + 1)
    ]
    with ProcessPoolExecutor(args.workers) as pool:
        futures = [pool.submit(run_one, settings, seed, duration) for *_, seed, settings in jobs]
        results: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for (key, name, seed, _), future in zip(jobs, futures, strict=True):
            result = future.result()
            results.setdefault((key, name), []).append(result)
            line = {"bench": "reproduce", "behaviour": key, "variant": name, "seed": seed}
            print(json.dumps({**line, **result}), flush=True)
    tables = []
    for key in args.only:
        title, _, variants = BEHAVIOURS[key]
        rows = {name: aggregate(results[(key, name)]) for name in variants}
        for name, row in rows.items():
            print(json.dumps({"bench": "reproduce", "behaviour": key, "variant": name, **row}))
        print(json.dumps({"bench": "reproduce", "behaviour": key, **verdict(key, rows)}))
        tables.append(table(f"({key}) {title}, {seeds} seeds, {duration:g} s", rows))
    sys.stdout.write("\n" + "\n\n".join(tables) + "\n")


if __name__ == "__main__":
    main()
