"""Benchmark: the large-1000 scenario (1,000 drones, random waypoint, MLP, lossy links).

Runs ``scenarios/large-1000.toml`` in a subprocess (so its peak RSS is its own) and prints JSON
lines: wall seconds per virtual minute, peak RSS, frames per wall second through the simulated
radio (transmissions, and link deliveries that arrived), and the final accuracy. Target: ten
virtual minutes in at most ten wall minutes on a 2-core machine, peak RSS at most 1 GiB.

The baseline, measured in the same run: the bare training work alone. The child times
``train_round`` of the same learners outside the simulator (a sample of rounds) and reports how
much of the simulation's wall time the training it did would cost by itself, so the
simulator's own overhead (radio, world, gossip, merge, evaluation) is the rest.

    python benchmarks/bench_large.py                          # the full run (a few minutes)
    python benchmarks/bench_large.py --drones 200 --minutes 2 # a quick look
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "large-1000.toml"
TARGET_WALL_S_PER_VIRTUAL_MIN = 60.0
TARGET_RSS_MIB = 1024.0
BASELINE_ROUNDS = 2000  # drone-rounds of bare training timed for the baseline


def child(drones: int, minutes: float) -> None:
    from swarmfl.config.scenario_file import load_scenario
    from swarmfl.sim.metrics import MetricsRecorder
    from swarmfl.sim.runner import simulate
    from swarmfl.sim.vtime import run_virtual

    overrides = [f"run.duration_s={minutes * 60.0}"]
    if drones:
        overrides.append(f"swarm.drones={drones}")
    scenario = load_scenario(SCENARIO, overrides)
    marks: list[float] = []
    recorder = MetricsRecorder(None)
    started = time.perf_counter()
    swarm = run_virtual(
        simulate(scenario, recorder, lambda point: marks.append(time.perf_counter()))
    )
    ended = time.perf_counter()
    setup = marks[0] - started  # data, models, world: until the first evaluation at t = 0
    simulated = ended - marks[0]
    rounds = sum(d.agent.rounds for d in swarm.drones)
    medium = swarm.medium.stats
    radios = [d.radio.stats for d in swarm.drones]
    attempted = sum(r.deliveries_attempted for r in radios)
    lost = sum(r.frames_lost for r in radios)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # Baseline: the same learners' train_round, bare (no agents, radio, gossip or merging).
    learners = [d.agent.learner for d in swarm.drones]
    start = time.perf_counter()
    for i in range(BASELINE_ROUNDS):
        learners[i % len(learners)].train_round()
    per_round = (time.perf_counter() - start) / BASELINE_ROUNDS
    print(
        json.dumps(
            {
                "drones": scenario.swarm.drones,
                "virtual_seconds": scenario.run.duration_s,
                "setup_wall_seconds": setup,
                "sim_wall_seconds": simulated,
                "rounds": rounds,
                "transmissions": medium.transmissions,
                "deliveries": medium.deliveries,
                "deliveries_attempted": attempted,
                "delivery_ratio": 1 - lost / attempted if attempted else None,
                "world_rebuilds": swarm.world.rebuilds,
                "accuracy": recorder.series[-1].mean,
                "accuracy_curve": [[p.t, round(p.mean, 4)] for p in recorder.series],
                "peak_rss_mib": peak,
                "bare_train_seconds_per_round": per_round,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drones", type=int, default=0, help="override swarm.drones (0: 1000)")
    parser.add_argument("--minutes", type=float, default=10.0, help="virtual minutes")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.drones, args.minutes)
        return
    command = [sys.executable, __file__, "--child", "--drones", str(args.drones)]
    command += ["--minutes", str(args.minutes)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    minutes = r["virtual_seconds"] / 60.0
    sim = r["sim_wall_seconds"]
    training = r["bare_train_seconds_per_round"] * r["rounds"]
    print(
        json.dumps(
            {
                "bench": "large",
                "drones": r["drones"],
                "virtual_minutes": round(minutes, 2),
                "setup_wall_seconds": round(r["setup_wall_seconds"], 1),
                "sim_wall_seconds": round(sim, 1),
                "wall_seconds_per_virtual_minute": round(sim / minutes, 2),
                "peak_rss_mib": round(r["peak_rss_mib"], 1),
                "transmissions_per_wall_second": round(r["transmissions"] / sim),
                "deliveries_per_wall_second": round(r["deliveries"] / sim),
                "delivery_ratio": round(r["delivery_ratio"], 4),
                "drone_rounds": r["rounds"],
                "world_rebuilds": r["world_rebuilds"],
                "accuracy": round(r["accuracy"], 4),
                "accuracy_curve": r["accuracy_curve"],
            }
        )
    )
    print(
        json.dumps(
            {
                "bench": "large",
                "baseline": "bare train_round of the same learners, same number of rounds",
                "baseline_wall_seconds": round(training, 1),
                "sim_over_bare_training": round(sim / training, 2),
                "target": (
                    f"<= {TARGET_WALL_S_PER_VIRTUAL_MIN:g} wall s per virtual minute, "
                    f"peak RSS <= {TARGET_RSS_MIB:g} MiB"
                ),
                "met": sim / minutes <= TARGET_WALL_S_PER_VIRTUAL_MIN
                and r["peak_rss_mib"] <= TARGET_RSS_MIB,
            }
        )
    )


if __name__ == "__main__":
    main()
