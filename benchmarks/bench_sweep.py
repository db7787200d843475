"""Benchmark: a sweep on the local process pool and on Ray vs the same runs one after another.

A 2-variant x 3-seed sweep of the quickstart (gossip.codec = fp32, int8; seeds 7, 8, 9). The
baseline, measured in the same run: the six runs one after another in this process
(``run_scenario`` into a folder each, the same work a sweep's worker does). Then the same sweep
as ``run_sweep`` runs it on the local pool (every core; its workers are forks of this process),
the same pool started with ``forkserver`` as it was before (``--no-forkserver`` skips it), and
through Ray (a local instance this benchmark starts; its start-up is timed apart). Prints JSON
lines: wall seconds, the ratio to the baseline (target: local pool <= 0.6x on 2 cores), Ray vs
the local pool, and whether every run's metrics.jsonl is byte-identical across them.

Wall time depends on what else the machine runs, so every line also has the load average and
the CPU seconds the mode used: this process and every process it started (the pool's workers,
Ray's processes), user + system. The local pool's ``overhead_cpu_s`` is its CPU beyond the
baseline's: what starting workers, handing them runs and collecting the results cost. The first
line gives what a fresh process pays once before the first run (importing the simulator), which
the baseline and a sweep both pay and this benchmark leaves out of both.

    python benchmarks/bench_sweep.py --no-ray              # the full quickstart (120 virtual s)
    python benchmarks/bench_sweep.py --duration 30 --no-ray   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    from swarmfl.sim.results import Experiment

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


def _cpu() -> float:
    """CPU seconds (user + system) of this process and every process it started, so far.

    Children that ended and were waited for count through ``RUSAGE_CHILDREN``; those still
    running (a fork server, Ray's processes) through psutil, with their own ended children.
    """
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def _pools(no_forkserver: bool) -> list[tuple[str, str | None]]:
    """The local pools to time: as a sweep starts it, and (to compare) with ``forkserver``."""
    return [("local", None)] + ([] if no_forkserver else [("local-forkserver", "forkserver")])


def _local_sweep(out: Path, method: str | None, base: dict[str, Any]) -> Experiment:
    """What ``run_sweep`` does on the local pool, with the pool's start method chosen."""
    from swarmfl.sim.executors import LocalExecutor
    from swarmfl.sim.results import collect_experiment
    from swarmfl.sim.sweep import execute_plan, plan_sweep

    plan = plan_sweep(SCENARIO, out=out, **base)
    outcomes = execute_plan(plan, progress=False, executor=LocalExecutor(method=method))
    experiment = collect_experiment(plan.folder, keys=plan.keys)
    experiment.failed = [{"folder": o.folder, "error": o.error} for o in outcomes if not o.ok]
    experiment.write()
    return experiment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=120.0, help="virtual seconds per run")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray executor")
    parser.add_argument(
        "--no-forkserver",
        action="store_true",
        help="skip the local pool started with forkserver (how it was before fork)",
    )
    args = parser.parse_args()

    before = _cpu()
    from swarmfl.sim.executors import start_method
    from swarmfl.sim.runner import run_scenario
    from swarmfl.sim.sweep import plan_sweep, run_sweep

    print(
        json.dumps(
            {
                "bench": "sweep",
                "mode": "setup",
                "import_simulator_cpu_s": round(_cpu() - before, 2),
                "load_avg_1min": _load(),
            }
        )
    )

    overrides = [f"run.duration_s={args.duration}"]
    base = dict(grid=GRID, seeds=SEEDS, overrides=overrides)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        plan = plan_sweep(SCENARIO, out=root / "sequential", **base)  # type: ignore[arg-type]
        cpu = _cpu()
        start = time.perf_counter()
        for run in plan.runs:
            run_scenario(run.scenario, run.folder, title_note=run.title_note)
        sequential = time.perf_counter() - start
        sequential_cpu = _cpu() - cpu
        common = {"bench": "sweep", "runs": len(plan.runs), "virtual_s": args.duration}
        cores = os.cpu_count()
        print(
            json.dumps(
                {
                    **common,
                    "mode": "sequential",
                    "wall_s": round(sequential, 2),
                    "cpu_s": round(sequential_cpu, 2),
                    "runs_wall_s_sum": _run_walls(root / "sequential"),
                    "load_avg_1min": _load(),
                }
            )
        )

        pooled = 0.0
        for mode, method in _pools(args.no_forkserver):
            cpu = _cpu()
            start = time.perf_counter()
            experiment = _local_sweep(root / mode, method, base)
            wall = time.perf_counter() - start
            pool_cpu = _cpu() - cpu
            pooled = pooled or wall
            print(
                json.dumps(
                    {
                        **common,
                        "mode": mode,
                        "workers": cores,
                        "start_method": method or start_method(),
                        "wall_s": round(wall, 2),
                        "ratio_vs_sequential": round(wall / sequential, 3),
                        "target_ratio": TARGET_RATIO,
                        "cpu_s": round(pool_cpu, 2),
                        "overhead_cpu_s": round(pool_cpu - sequential_cpu, 2),
                        "runs_wall_s_sum": _run_walls(root / mode),
                        "load_avg_1min": _load(),
                        "failed": len(experiment.failed),
                        "metrics_identical_to_sequential": _metrics(root / mode)
                        == _metrics(root / "sequential"),
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
            cpu = _cpu()
            start = time.perf_counter()
            remote = run_sweep(
                SCENARIO,
                out=root / "ray",
                executor="ray",
                **base,  # type: ignore[arg-type]
            )
            on_ray = time.perf_counter() - start
            ray_cpu = _cpu() - cpu  # Ray's processes are still running: counted live
        finally:
            ray.shutdown()
        print(
            json.dumps(
                {
                    **common,
                    "mode": "ray",
                    "ray_init_s": round(started, 2),
                    "wall_s": round(on_ray, 2),
                    "cpu_s": round(ray_cpu, 2),
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
