"""Benchmark: the large-1000 scenario (1,000 drones, random waypoint, MLP, lossy links).

Runs ``scenarios/large-1000.toml`` in a subprocess (so its peak RSS is its own) and prints JSON
lines: wall and CPU seconds per virtual minute (with the load average before and after), peak
RSS, frames per wall second through the simulated radio (transmissions, and link deliveries that
arrived), and the final accuracy. Target: ten virtual minutes in at most ten wall minutes on a
2-core machine, peak RSS at most 1 GiB. The simulation is single-threaded, so its CPU seconds
(user + system, setup and simulation) are the quiet-machine proxy for that wall time; the target
is judged on them (at most 60 CPU seconds per virtual minute), as wall time on a shared machine
says more about the other tenants than about the simulator.

The baseline, measured in the same run: the bare training work alone. The child times
``train_round`` of the same learners outside the simulator (a sample of rounds) and reports how
much of the simulation's wall time the training it did would cost by itself, so the
simulator's own overhead (radio, world, gossip, merge, evaluation) is the rest.

The learning reference, also in the same run: the same model (same initial weights) trained
centrally on the union of all drones' shards with the same optimiser settings and batch size,
evaluated on the same evaluation subset, *trained to convergence*: epochs over the union until
the evaluation accuracy has not improved for ``PATIENCE`` epochs (at most ``MAX_EPOCHS``); its
best accuracy is the reference. Target: the swarm's final mean accuracy >= 90 % of it. Beside
it, the accuracy of the average of all drones' final models, a diagnostic: the gap between the
two is what the drones' disagreement (each one's last local round on its own non-IID shard)
costs, rather than the training the swarm did as a whole.

    python benchmarks/bench_large.py                          # the full run (a few minutes)
    python benchmarks/bench_large.py --drones 200 --minutes 2 # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "large-1000.toml"
TARGET_WALL_S_PER_VIRTUAL_MIN = 60.0
TARGET_RSS_MIB = 1024.0
BASELINE_ROUNDS = 2000  # drone-rounds of bare training timed for the baseline
PATIENCE = 3  # epochs without improvement that end the centralised reference's training
MAX_EPOCHS = 40
TARGET_FRACTION_OF_CENTRALISED = 0.9


def centralised(swarm: Any) -> dict[str, Any]:
    """The same model trained centrally on the union of the drones' shards, to convergence."""
    import numpy as np
    import torch
    from torch import nn

    assembly = swarm.assembly
    training = swarm.scenario.training
    union = np.concatenate(assembly.shards)
    data = assembly.dataset
    x = torch.from_numpy(np.ascontiguousarray(data.x_train[union]))
    y = torch.from_numpy(np.ascontiguousarray(data.y_train[union]))
    x_eval = torch.from_numpy(np.ascontiguousarray(assembly.x_eval))
    y_eval = torch.from_numpy(np.ascontiguousarray(assembly.y_eval))
    model = assembly.new_model()
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=training.lr,
        momentum=training.momentum,
        weight_decay=training.weight_decay,
    )
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(swarm.scenario.run.seed)
    batch = training.batch_size
    curve: list[float] = []
    start = time.perf_counter()
    while len(curve) < MAX_EPOCHS:
        model.train()
        order = torch.randperm(len(y), generator=generator)
        for s in range(0, len(y), batch):
            index = order[s : s + batch]
            optimizer.zero_grad()
            loss_fn(model(x[index]), y[index]).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            curve.append(float((model(x_eval).argmax(1) == y_eval).float().mean()))
        if len(curve) > PATIENCE and max(curve[-PATIENCE:]) <= max(curve[:-PATIENCE]):
            break
    return {
        "centralised_accuracy": max(curve),
        "centralised_epochs": len(curve),
        "centralised_samples": len(union),
        "centralised_wall_seconds": time.perf_counter() - start,
        "centralised_curve": [round(a, 4) for a in curve],
    }


def _cpu_seconds() -> float:
    """This process's CPU seconds so far (user + system)."""
    times = os.times()
    return times.user + times.system


def _average_model_accuracy(swarm: Any) -> float:
    """Accuracy of the mean of all drones' final models (a diagnostic: how far the drones'
    disagreement, rather than the training itself, holds the mean accuracy back)."""
    import numpy as np

    learner = swarm.drones[0].agent.learner
    values = learner.flat_parameters()
    own = values.copy()
    values[:] = np.mean([d.agent.learner.flat_parameters() for d in swarm.drones], axis=0)
    accuracy = float(learner.evaluate(swarm.assembly.x_eval, swarm.assembly.y_eval).accuracy)
    values[:] = own
    return accuracy


def child(drones: int, minutes: float, settings: list[str]) -> None:
    """Run the scenario (``minutes`` <= 0: its own duration) and print one JSON line."""
    from swarmfl.config.scenario_file import load_scenario
    from swarmfl.sim.metrics import MetricsRecorder
    from swarmfl.sim.runner import simulate
    from swarmfl.sim.vtime import run_virtual

    overrides = [*settings, f"run.duration_s={minutes * 60.0}"] if minutes > 0 else [*settings]
    if drones:
        overrides.append(f"swarm.drones={drones}")
    scenario = load_scenario(SCENARIO, overrides)
    marks: list[float] = []
    recorder = MetricsRecorder(None)
    cpu_started = _cpu_seconds()
    started = time.perf_counter()
    swarm = run_virtual(
        simulate(scenario, recorder, lambda point: marks.append(time.perf_counter()))
    )
    ended = time.perf_counter()
    run_cpu = _cpu_seconds() - cpu_started  # setup and simulation: the scenario's own cost
    setup = marks[0] - started  # data, models, world: until the first evaluation at t = 0
    simulated = ended - marks[0]
    rounds = sum(d.agent.rounds for d in swarm.drones)
    medium = swarm.medium.stats
    radios = [d.radio.stats for d in swarm.drones]
    attempted = sum(r.deliveries_attempted for r in radios)
    lost = sum(r.frames_lost for r in radios)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    average_accuracy = _average_model_accuracy(swarm)

    # Baseline: the same learners' train_round, bare (no agents, radio, gossip or merging).
    learners = [d.agent.learner for d in swarm.drones]
    start = time.perf_counter()
    for i in range(BASELINE_ROUNDS):
        learners[i % len(learners)].train_round()
    per_round = (time.perf_counter() - start) / BASELINE_ROUNDS
    reference = centralised(swarm)
    print(
        json.dumps(
            {
                "drones": scenario.swarm.drones,
                "virtual_seconds": scenario.run.duration_s,
                "setup_wall_seconds": setup,
                "sim_wall_seconds": simulated,
                "run_cpu_seconds": run_cpu,
                "rounds": rounds,
                "transmissions": medium.transmissions,
                "deliveries": medium.deliveries,
                "deliveries_attempted": attempted,
                "delivery_ratio": 1 - lost / attempted if attempted else None,
                "world_rebuilds": swarm.world.rebuilds,
                "accuracy": recorder.series[-1].mean,
                "average_model_accuracy": average_accuracy,
                "accuracy_curve": [[p.t, round(p.mean, 4)] for p in recorder.series],
                "peak_rss_mib": peak,
                "bare_train_seconds_per_round": per_round,
                **reference,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drones", type=int, default=0, help="override swarm.drones (0: 1000)")
    parser.add_argument(
        "--minutes", type=float, default=0.0, help="virtual minutes (0: the scenario's run)"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="scenario override"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.drones, args.minutes, args.set)
        return
    command = [sys.executable, __file__, "--child", "--drones", str(args.drones)]
    command += ["--minutes", str(args.minutes)]
    for setting in args.set:
        command += ["--set", setting]
    load_before = os.getloadavg()
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    load_after = os.getloadavg()
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
                "run_cpu_seconds": round(r["run_cpu_seconds"], 1),
                "cpu_seconds_per_virtual_minute": round(r["run_cpu_seconds"] / minutes, 2),
                "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
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
                    f"<= {TARGET_WALL_S_PER_VIRTUAL_MIN:g} CPU s (setup and simulation) per "
                    f"virtual minute, peak RSS <= {TARGET_RSS_MIB:g} MiB"
                ),
                "met": r["run_cpu_seconds"] / minutes <= TARGET_WALL_S_PER_VIRTUAL_MIN
                and r["peak_rss_mib"] <= TARGET_RSS_MIB,
            }
        )
    )
    fraction = r["accuracy"] / r["centralised_accuracy"]
    print(
        json.dumps(
            {
                "bench": "large",
                "reference": "same model centrally on the union of the shards, to convergence",
                "swarm_accuracy": round(r["accuracy"], 4),
                "average_model_accuracy": round(r["average_model_accuracy"], 4),
                "centralised_accuracy": round(r["centralised_accuracy"], 4),
                "centralised_epochs": r["centralised_epochs"],
                "centralised_samples": r["centralised_samples"],
                "centralised_curve": r["centralised_curve"],
                "swarm_over_centralised": round(fraction, 3),
                "target": f">= {TARGET_FRACTION_OF_CENTRALISED:g}",
                "met": fraction >= TARGET_FRACTION_OF_CENTRALISED,
            }
        )
    )


if __name__ == "__main__":
    main()
