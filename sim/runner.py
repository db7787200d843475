"""``swarmfl sim``: run a scenario in virtual time and write its run folder.

The run folder holds ``scenario.toml`` (the resolved scenario, overrides applied),
``metrics.jsonl`` (one line per drone per evaluation instant), ``summary.json`` and
``accuracy.png``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from swarmfl.config import Scenario, scenario_to_toml
from swarmfl.sim.metrics import ACCURACY_TARGETS, MetricsRecorder, SwarmPoint, write_summary
from swarmfl.sim.plots import plot_accuracy
from swarmfl.sim.swarm import Swarm
from swarmfl.sim.vtime import run_virtual

ProgressCallback = Callable[[SwarmPoint], None]


async def simulate(
    scenario: Scenario, recorder: MetricsRecorder, on_point: ProgressCallback | None = None
) -> Swarm:
    """Run ``scenario`` on the current (virtual-time) loop, recording every evaluation instant."""
    interval = scenario.run.eval_interval_s
    duration = scenario.run.duration_s
    swarm = Swarm(scenario)
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with swarm:
        t = 0.0
        while True:
            counted = {d.drone_id for d in swarm.active}
            point = recorder.record(t, swarm.sample(t), counted)
            if on_point is not None:
                on_point(point)
            if t >= duration:
                break
            t = min(duration, t + interval)
            await asyncio.sleep(start + t - loop.time())
    return swarm


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
        swarm = run_virtual(simulate(scenario, recorder, on_point))
    finally:
        if sink is not None:
            sink.close()
    summary = summarize(scenario, swarm, recorder, time.perf_counter() - wall_start)
    if out_dir is not None:
        write_summary(out_dir / "summary.json", summary)
        plot_accuracy(
            recorder.series,
            out_dir / "accuracy.png",
            title=f"{scenario.run.name}: {scenario.swarm.drones} drones",
        )
    return summary


def summarize(
    scenario: Scenario, swarm: Swarm, recorder: MetricsRecorder, wall_seconds: float
) -> dict[str, Any]:
    """The run's ``summary.json`` content."""
    final = recorder.series[-1]
    radios = [d.radio.stats for d in swarm.drones]
    nodes = [d.agent.node.stats for d in swarm.drones]
    return {
        "scenario": scenario.run.name,
        "drones": scenario.swarm.drones,
        "seed": scenario.run.seed,
        "codec": scenario.gossip.codec,
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
    }
