"""Benchmark: what differential privacy costs: accuracy against epsilon, and DP-SGD's time and
memory against plain training.

Accuracy: the quickstart swarm (16 drones on a ring, digits Dirichlet 0.5, MLP 64-128-10, one
local epoch per 1 s period, seed 7) trains with DP-SGD at a noise multiplier chosen so that the
drone spending the most privacy (Opacus's RDP accountant, its own shard's sampling rate and
step count over the run) ends at epsilon <= 1, 3 and 8 at delta = 1e-5, and without DP
(epsilon = infinity). Clip norm 1.0 everywhere. Each line gives the swarm's final mean accuracy
and the epsilon the drones actually reported.

Cost: one drone of that swarm (its shard, batch 16, one torch thread) trains rounds with and
without DP-SGD, the two alternating, best of ``--repeats`` by CPU time (a shared machine's
wall time measures the neighbours' load, CPU time this process's work; wall time is printed
too); each variant runs in its own subprocess, so its peak RSS is its own. The planner's
predicted per-sample gradient bytes are printed next to it.

    python benchmarks/bench_dp.py                 # 60 virtual seconds per run
    python benchmarks/bench_dp.py --duration 120  # the quickstart's whole length
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from importlib.resources import files

EPSILONS = (1.0, 3.0, 8.0, math.inf)
DELTA = 1e-5
CLIP = 1.0


def quickstart(duration: float, overrides: list[str]):  # type: ignore[no-untyped-def]
    from swarmfl.config.scenario_file import load_scenario

    path = str(files("swarmfl.scenarios") / "quickstart.toml")
    return load_scenario(
        path, [f"run.duration_s={duration}", f"run.eval_interval_s={duration}", *overrides]
    )


def noise_for(epsilon: float, duration: float) -> float:
    """The noise multiplier that keeps every quickstart drone at or below ``epsilon``."""
    from opacus.accountants.utils import get_noise_multiplier

    from swarmfl.drone import DroneAssembly
    from swarmfl.sim.swarm import swarm_settings

    scenario = quickstart(duration, [])
    assembly = DroneAssembly(swarm_settings(scenario))
    batch = scenario.training.batch_size
    rounds = int(duration / scenario.gossip.period_s)
    sigmas = []
    for shard in assembly.shards:
        n = len(shard)
        steps = rounds * math.ceil(n / batch)
        sigmas.append(
            get_noise_multiplier(
                target_epsilon=epsilon,
                target_delta=DELTA,
                sample_rate=min(1.0, batch / n),
                steps=steps,
                accountant="rdp",
            )
        )
    return max(sigmas)


def accuracy_line(epsilon: float, duration: float) -> dict[str, object]:
    from swarmfl.sim.runner import run_scenario

    overrides = []
    sigma = None
    if math.isfinite(epsilon):
        sigma = noise_for(epsilon, duration)
        overrides = [
            "training.dp.enabled=true",
            f"training.dp.noise_multiplier={sigma}",
            f"training.dp.clip_norm={CLIP}",
            f"training.dp.delta={DELTA}",
        ]
    started = time.perf_counter()
    summary = run_scenario(quickstart(duration, overrides), None)
    privacy = summary.get("privacy", {})
    return {
        "bench": "dp_accuracy",
        "target_epsilon": epsilon if math.isfinite(epsilon) else "inf",
        "noise_multiplier": None if sigma is None else round(sigma, 4),
        "epsilon_max": privacy.get("epsilon_max"),
        "epsilon_mean": privacy.get("epsilon_mean"),
        "delta": DELTA,
        "accuracy_mean": summary["accuracy"]["mean"],
        "accuracy_min": summary["accuracy"]["min"],
        "virtual_s": duration,
        "wall_s": round(time.perf_counter() - started, 1),
    }


def cost_child(dp: bool, rounds: int) -> None:
    """Train one quickstart drone for ``rounds`` rounds; print seconds per round and peak RSS."""
    import torch

    from swarmfl.drone import DroneAssembly
    from swarmfl.learning.plan import MemoryPlan
    from swarmfl.sim.swarm import swarm_settings

    torch.set_num_threads(1)
    scenario = quickstart(60.0, ["training.dp.enabled=true"] if dp else [])
    assembly = DroneAssembly(swarm_settings(scenario))
    learner = assembly.build(0, 0).learner
    learner.train_round()  # warm-up
    started, cpu_started = time.perf_counter(), time.process_time()
    for _ in range(rounds):
        learner.train_round()
    per_round = (time.perf_counter() - started) / rounds
    cpu_per_round = (time.process_time() - cpu_started) / rounds
    plan = MemoryPlan.candidates(
        assembly.template, assembly.input_shape, scenario.training.batch_size, 1 << 40, dp=dp
    )[0]
    print(
        json.dumps(
            {
                "s_per_round": per_round,
                "cpu_s_per_round": cpu_per_round,
                "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                "samples": learner.sample_count,
                "predicted_total": plan.predicted.total,
                "predicted_per_sample_gradients": plan.predicted.per_sample_gradients,
            }
        )
    )


def cost_lines(rounds: int, repeats: int) -> list[dict[str, object]]:
    best: dict[bool, dict[str, float]] = {}
    for _ in range(repeats):
        for dp in (False, True):
            out = subprocess.run(
                [sys.executable, __file__, "--child", "dp" if dp else "plain", str(rounds)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            result = json.loads(out.strip().splitlines()[-1])
            kept = best.get(dp)
            if kept is None or result["cpu_s_per_round"] < kept["cpu_s_per_round"]:
                best[dp] = result
    plain = best[False]
    return [
        {
            "bench": "dp_cost",
            "variant": "dp_sgd" if dp else "plain",
            "cpu_ms_per_round": round(1000 * best[dp]["cpu_s_per_round"], 2),
            "cpu_ratio": round(best[dp]["cpu_s_per_round"] / plain["cpu_s_per_round"], 2),
            "wall_ms_per_round": round(1000 * best[dp]["s_per_round"], 2),
            "peak_rss_mib": round(best[dp]["peak_rss_kib"] / 1024, 1),
            "rss_delta_mib": round((best[dp]["peak_rss_kib"] - plain["peak_rss_kib"]) / 1024, 1),
            "predicted_training_bytes": best[dp]["predicted_total"],
            "predicted_per_sample_gradient_bytes": best[dp]["predicted_per_sample_gradients"],
            "shard_samples": best[dp]["samples"],
        }
        for dp in (False, True)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="virtual seconds per run")
    parser.add_argument("--rounds", type=int, default=30, help="rounds timed per cost run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        cost_child(args.child[0] == "dp", int(args.child[1]))
        return 0
    for line in cost_lines(args.rounds, args.repeats):
        print(json.dumps(line), flush=True)
    if not args.skip_accuracy:
        for epsilon in EPSILONS:
            print(json.dumps(accuracy_line(epsilon, args.duration)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
