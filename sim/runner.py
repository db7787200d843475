"""``swarmfl sim``: run a scenario in virtual time and write its run folder.

The run folder holds ``scenario.toml`` (the resolved scenario, overrides applied),
``metrics.jsonl`` (one line per drone per evaluation instant), ``summary.json``,
``accuracy.png``, ``topology.png`` (positions and links at four instants, drones coloured by
accuracy), ``bytes.png`` (traffic over time) and ``delivery.png`` (delivery ratio over time).
"""

from __future__ import annotations

import asyncio
import logging
import math
import textwrap
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
from swarmfl.sim.runfolder import SUMMARY
from swarmfl.sim.swarm import Swarm
from swarmfl.sim.timeline import Timeline, graph_components
from swarmfl.sim.timeline_plots import plot_down, plot_groups
from swarmfl.sim.vtime import run_virtual

log = logging.getLogger(__name__)

ProgressCallback = Callable[[SwarmPoint], None]


async def simulate(
    scenario: Scenario,
    recorder: MetricsRecorder,
    on_point: ProgressCallback | None = None,
    *,
    snapshots: bool = True,
    timeline: Timeline | None = None,
) -> Swarm:
    """Run ``scenario`` on the current (virtual-time) loop, recording every evaluation instant.

    With ``snapshots``, four of the instants also record positions and links for topology.png;
    a ``timeline`` records consensus, per-class and per-group accuracy and down counts.
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
            if timeline is not None:
                timeline.add(t, samples, counted)
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
    title_note: str = "",
) -> dict[str, Any]:
    """Run ``scenario`` in virtual time; write the run folder if ``out_dir``; return the summary.

    ``title_note`` is appended to plot titles (the overrides, see
    :func:`swarmfl.sim.runfolder.override_note`). ``summary.json`` is written last and
    atomically: its presence marks a finished run.
    """
    wall_start = time.perf_counter()
    sink = None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "scenario.toml").write_text(scenario_to_toml(scenario), encoding="utf-8")
        sink = (out_dir / "metrics.jsonl").open("w", encoding="utf-8")
    recorder = MetricsRecorder(sink)
    timeline = Timeline()
    try:
        swarm = run_virtual(
            simulate(scenario, recorder, on_point, snapshots=out_dir is not None, timeline=timeline)
        )
    finally:
        if sink is not None:
            sink.close()
    summary = summarize(scenario, swarm, recorder, time.perf_counter() - wall_start)
    summary.update(timeline.final())
    summary.update(_connectivity(scenario, swarm))
    if out_dir is not None:
        title = textwrap.fill(
            f"{scenario.run.name}: {scenario.swarm.drones} drones{title_note}", 90
        )
        windows = [(p.start_s, p.end_s) for p in scenario.faults.partitions]
        plot_accuracy(recorder.series, out_dir / "accuracy.png", title=title, partitions=windows)
        plot_topology(recorder.snapshots, out_dir / "topology.png", title=title)
        plot_bytes(recorder.traffic, out_dir / "bytes.png", title=title)
        plot_delivery(recorder.traffic, out_dir / "delivery.png", title=title)
        plot_groups(timeline, scenario, out_dir / "groups.png", title=title)
        plot_down(timeline, scenario, out_dir / "down.png", title=title)
        write_summary(out_dir / SUMMARY, summary)  # last: marks the run finished
    return summary


def _connectivity(scenario: Scenario, swarm: Swarm) -> dict[str, Any]:
    """Whether the communication graph is connected at start; a warning line if it is not."""
    drones = [d.drone_id for d in swarm.drones]
    sizes = graph_components(swarm.world.graph(0.0), drones)
    if len(sizes) > 1:
        log.warning(
            "%s: the communication graph is disconnected at start: %d components "
            "(largest %d of %d drones, %d isolated)",
            scenario.run.name,
            len(sizes),
            sizes[0],
            len(drones),
            sum(size == 1 for size in sizes),
        )
    return {"connected_at_start": len(sizes) <= 1, "components_at_start": len(sizes)}


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
        **robustness_summary(swarm, final),
    }


def robustness_summary(swarm: Swarm, final: SwarmPoint) -> dict[str, Any]:
    """The summary's insider and privacy figures: the attackers, the honest drones' accuracy,
    what robust merges clipped, whom honest drones suspect, and each DP drone's epsilon."""
    attackers = sorted(swarm.insiders)
    summary: dict[str, Any] = {
        "merge_rule": swarm.scenario.merge.rule,
        "attackers": attackers,
        "replicas_clipped": sum(d.agent.node.stats.replicas_clipped for d in swarm.drones),
    }
    ledgers = [d.parts.learner.privacy for d in swarm.drones]
    if any(ledger is not None for ledger in ledgers):
        spent = [ledger.epsilon() for ledger in ledgers if ledger is not None]
        dp = swarm.scenario.training.dp
        summary["privacy"] = {
            "delta": dp.delta,
            "noise_multiplier": dp.noise_multiplier,
            "clip_norm": dp.clip_norm,
            "epsilon_max": round(max(spent), 6),
            "epsilon_mean": round(sum(spent) / len(spent), 6),
        }
    if attackers:
        summary["honest_accuracy"] = {
            "mean": round(final.honest_mean or 0.0, 6),
            "min": round(final.honest_min or 0.0, 6),
        }
        summary["attacker_accuracy"] = _rounded(final.attacker_mean)
        suspected: dict[int, int] = {}
        for drone in swarm.drones:
            if drone.drone_id in swarm.insiders:
                continue
            for peer in drone.agent.node.suspects():
                suspected[peer] = suspected.get(peer, 0) + 1
        # a suspect's id, and how many honest drones name it
        summary["suspects"] = {str(peer): count for peer, count in sorted(suspected.items())}
    return summary


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)
