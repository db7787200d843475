"""Benchmark: a sweep on the local process pool and on Ray vs the same runs one after another.

A 2-variant x 3-seed sweep of the quickstart (gossip.codec = fp32, int8; seeds 7, 8, 9). The
baseline, measured in the same run: the six runs one after another in this process
(``run_scenario`` into a folder each, the same work a sweep's worker does). Then the same sweep
through ``run_sweep`` on the local pool (every core) and through Ray (a local instance this
benchmark starts; its start-up is timed apart). Prints JSON lines: wall seconds, the ratio to
the baseline (target: local pool <= 0.6x on 2 cores), Ray vs the local pool, and whether every
run's metrics.jsonl is byte-identical across the three.

    python benchmarks/bench_sweep.py                       # the full quickstart (120 virtual s)
    python benchmarks/bench_sweep.py --duration 40 --no-ray   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "quickstart.toml"
GRID = {"gossip.codec": ["fp32", "int8"]}
SEEDS = 3
TARGET_RATIO = 0.6


def _metrics(folder: Path) -> dict[str, bytes]:
    return {
        str(p.parent.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("metrics.jsonl"))
    }


def _run_walls(folder: Path) -> float:
    """The summed wall seconds the runs themselves report (without pool or Ray overhead)."""
    total = sum(json.loads(p.read_text())["wall_seconds"] for p in folder.rglob("summary.json"))
    return round(total, 2)


def _load() -> float:
    return round(os.getloadavg()[0], 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=120.0, help="virtual seconds per run")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray executor")
    args = parser.parse_args()

    from swarmfl.sim.runner import run_scenario
    from swarmfl.sim.sweep import plan_sweep, run_sweep

    overrides = [f"run.duration_s={args.duration}"]
    base = dict(grid=GRID, seeds=SEEDS, overrides=overrides)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        plan = plan_sweep(SCENARIO, out=root / "sequential", **base)  # type: ignore[arg-type]
        start = time.perf_counter()
        for run in plan.runs:
            run_scenario(run.scenario, run.folder, title_note=run.title_note)
        sequential = time.perf_counter() - start
        common = {"bench": "sweep", "runs": len(plan.runs), "virtual_s": args.duration}
        cores = os.cpu_count()
        print(
            json.dumps(
                {
                    **common,
                    "mode": "sequential",
                    "wall_s": round(sequential, 2),
                    "runs_wall_s_sum": _run_walls(root / "sequential"),
                    "load_avg_1min": _load(),
                }
            )
        )

        start = time.perf_counter()
        local = run_sweep(SCENARIO, out=root / "local", **base)  # type: ignore[arg-type]
        pooled = time.perf_counter() - start
        identical = _metrics(root / "local") == _metrics(root / "sequential")
        print(
            json.dumps(
                {
                    **common,
                    "mode": "local",
                    "workers": cores,
                    "wall_s": round(pooled, 2),
                    "ratio_vs_sequential": round(pooled / sequential, 3),
                    "target_ratio": TARGET_RATIO,
                    "runs_wall_s_sum": _run_walls(root / "local"),
                    "load_avg_1min": _load(),
                    "failed": len(local.failed),
                    "metrics_identical_to_sequential": identical,
                }
            )
        )
        if args.no_ray:
            return
        import ray

        start = time.perf_counter()
        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
        started = time.perf_counter() - start
        try:
            start = time.perf_counter()
            remote = run_sweep(
                SCENARIO,
                out=root / "ray",
                executor="ray",
                **base,  # type: ignore[arg-type]
            )
            on_ray = time.perf_counter() - start
        finally:
            ray.shutdown()
        print(
            json.dumps(
                {
                    **common,
                    "mode": "ray",
                    "ray_init_s": round(started, 2),
                    "wall_s": round(on_ray, 2),
                    "ratio_vs_local": round(on_ray / pooled, 3),
                    "ratio_vs_sequential": round(on_ray / sequential, 3),
                    "runs_wall_s_sum": _run_walls(root / "ray"),
                    "load_avg_1min": _load(),
                    "failed": len(remote.failed),
                    "metrics_identical_to_local": _metrics(root / "ray")
                    == _metrics(root / "local"),
                }
            )
        )


if __name__ == "__main__":
    main()
