"""``swarmfl sim``: run a scenario in virtual time and write its run folder.

The run folder holds ``scenario.toml`` (the resolved scenario, overrides applied),
``metrics.jsonl`` (one line per drone per evaluation instant), ``summary.json``,
``accuracy.png``, ``topology.png`` (positions and links at four instants, drones coloured by
accuracy), ``bytes.png`` (traffic over time) and ``delivery.png`` (delivery ratio over time).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from swarmfl.config.scenario_file import Scenario, scenario_to_toml
from swarmfl.sim.metrics import (
    ACCURACY_TARGETS,
    DroneSample,
    MetricsRecorder,
    Snapshot,
    SwarmPoint,
    write_summary,
)
from swarmfl.sim.plots import plot_accuracy, plot_bytes, plot_delivery, plot_topology
from swarmfl.sim.swarm import Swarm
from swarmfl.sim.vtime import run_virtual

ProgressCallback = Callable[[SwarmPoint], None]


async def simulate(
    scenario: Scenario,
    recorder: MetricsRecorder,
    on_point: ProgressCallback | None = None,
    *,
    snapshots: bool = True,
) -> Swarm:
    """Run ``scenario`` on the current (virtual-time) loop, recording every evaluation instant.

    With ``snapshots``, four of the instants also record positions and links for topology.png.
    """
    interval = scenario.run.eval_interval_s
    duration = scenario.run.duration_s
    swarm = Swarm(scenario)
    loop = asyncio.get_running_loop()
    start = loop.time()
    # topology.png shows the swarm at four evaluation instants: the start, a third, two thirds
    # and the end of the run.
    last = math.ceil(duration / interval - 1e-9)
    pictured = {0, round(last / 3), round(2 * last / 3), last} if snapshots else set()
    async with swarm:
        t = 0.0
        index = 0
        while True:
            counted = {d.drone_id for d in swarm.active}
            samples = swarm.sample(t)
            point = recorder.record(t, samples, counted)
            if index in pictured:
                recorder.snapshots.append(snapshot(swarm, t, samples))
            if on_point is not None:
                on_point(point)
            if t >= duration:
                break
            t = min(duration, t + interval)
            index += 1
            await asyncio.sleep(start + t - loop.time())
    return swarm


def snapshot(swarm: Swarm, t: float, samples: list[DroneSample]) -> Snapshot:
    """Positions, links, accuracy and up state of every drone at ``t`` (for topology.png)."""
    n = len(samples)  # the drones (a FedAvg ground station is one more node of the world)
    edges = swarm.world.edges(t)
    return Snapshot(
        t=t,
        positions=swarm.world.positions(t)[:n],
        edges=edges[(edges < n).all(axis=1)],
        accuracy=np.array([s.accuracy for s in samples]),
        up=np.array([s.up for s in samples]),
        metric=swarm.world.metric,
    )


def run_scenario(
    scenario: Scenario,
    out_dir: Path | None,
    *,
    on_point: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Run ``scenario`` in virtual time; write the run folder if ``out_dir``; return the summary."""
    wall_start = time.perf_counter()
    sink = None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "scenario.toml").write_text(scenario_to_toml(scenario), encoding="utf-8")
        sink = (out_dir / "metrics.jsonl").open("w", encoding="utf-8")
    recorder = MetricsRecorder(sink)
    try:
        swarm = run_virtual(simulate(scenario, recorder, on_point, snapshots=out_dir is not None))
    finally:
        if sink is not None:
            sink.close()
    summary = summarize(scenario, swarm, recorder, time.perf_counter() - wall_start)
    if out_dir is not None:
        write_summary(out_dir / "summary.json", summary)
        title = f"{scenario.run.name}: {scenario.swarm.drones} drones"
        plot_accuracy(recorder.series, out_dir / "accuracy.png", title=title)
        plot_topology(recorder.snapshots, out_dir / "topology.png", title=title)
        plot_bytes(recorder.traffic, out_dir / "bytes.png", title=title)
        plot_delivery(recorder.traffic, out_dir / "delivery.png", title=title)
    return summary


def summarize(
    scenario: Scenario, swarm: Swarm, recorder: MetricsRecorder, wall_seconds: float
) -> dict[str, Any]:
    """The run's ``summary.json`` content."""
    final = recorder.series[-1]
    radios = [r.stats for r in swarm.radios]  # the ground station's too (FedAvg)
    nodes = [d.agent.node.stats for d in swarm.drones]
    attempted = sum(r.deliveries_attempted for r in radios)
    lost = sum(r.frames_lost for r in radios)
    return {
        "scenario": scenario.run.name,
        "drones": scenario.swarm.drones,
        "seed": scenario.run.seed,
        "codec": scenario.gossip.codec,
        "strategy": scenario.learning.strategy,
        "virtual_seconds": scenario.run.duration_s,
        "wall_seconds": round(wall_seconds, 3),
        "accuracy": {
            "mean": round(final.mean, 6),
            "min": round(final.min, 6),
            "max": round(final.max, 6),
        },
        "time_to_accuracy": {
            str(target): recorder.time_to_accuracy(target) for target in ACCURACY_TARGETS
        },
        "bytes_sent": sum(r.bytes_sent for r in radios),
        "frames_sent": sum(r.frames_sent for r in radios),
        "frames_lost": sum(r.frames_lost for r in radios),
        "frames_received": sum(r.frames_received for r in radios),
        "frames_rejected": sum(n.frames_rejected for n in nodes),
        "stream_gaps": sum(n.stream_gaps for n in nodes),
        "drones_removed": sum(d.removed for d in swarm.drones),
        "wire_bytes_sent": sum(r.wire_bytes_sent for r in radios),
        "deliveries_attempted": attempted,
        "delivery_ratio": round(1.0 - lost / attempted, 6) if attempted else None,
        "frames_dropped_queue": sum(r.frames_dropped_queue for r in radios),
        "crashes": sum(swarm.lifecycle.crashes),
        "landings": swarm.lifecycle.landings(),
    }
