"""The same sweep gives byte-identical per-run metrics in one process, on the local pool
(forked or fork-server workers) and on real Ray."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from swarmfl.errors import ConfigError
from swarmfl.sim.executors import LocalExecutor, make_executor
from swarmfl.sim.runner import run_scenario
from swarmfl.sim.sweep import execute_plan, plan_sweep, run_sweep

QUICKSTART = Path(__file__).resolve().parent.parent / "scenarios" / "quickstart.toml"
TINY = ["run.duration_s=10", "swarm.drones=4", "radio.loss=0.2"]
GRID = {"gossip.codec": ["fp32", "int8"]}


def _metrics(folder: Path) -> dict[str, bytes]:
    return {
        str(p.parent.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("metrics.jsonl"))
    }


def test_ray_address_needs_the_ray_executor():
    with pytest.raises(ConfigError, match="--ray-address"):
        make_executor("local", ray_address="10.0.0.1:6379")


@pytest.mark.slow
def test_local_pool_and_ray_give_byte_identical_metrics(tmp_path):
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'swarmfl[ray]')")
    local = run_sweep(QUICKSTART, grid=GRID, seeds=1, out=tmp_path / "local", overrides=TINY)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = run_sweep(
            QUICKSTART,
            grid=GRID,
            seeds=1,
            out=tmp_path / "ray",
            overrides=TINY,
            executor="ray",
        )
        # the test's Ray instance was used, and left running for its owner to stop
        assert ray.is_initialized()
    finally:
        ray.shutdown()
    assert not local.failed and not remote.failed
    expected = _metrics(tmp_path / "local")
    assert len(expected) == 2
    assert _metrics(tmp_path / "ray") == expected
    assert [r["final_mean_accuracy"] for r in local.runs] == [
        r["final_mean_accuracy"] for r in remote.runs
    ]


START_METHOD_WITH_AND_WITHOUT_A_THREAD = """
import threading
from swarmfl.sim.executors import start_method

alone = start_method()
release = threading.Event()
other = threading.Thread(target=release.wait)
other.start()
with_thread = start_method()
release.set()
other.join()
print(alone, with_thread, start_method())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the pool forks on Linux only")
def test_the_pool_forks_only_while_no_other_python_thread_runs():
    # A fresh interpreter: this one's threads depend on the tests that ran before.
    shown = subprocess.run(
        [sys.executable, "-c", START_METHOD_WITH_AND_WITHOUT_A_THREAD],
        capture_output=True,
        text=True,
        check=True,
        timeout=240,
    ).stdout.split()
    # a thread could hold a lock forever in a fork: the pool uses a fork server then
    assert shown == ["fork", "forkserver", "fork"]


@pytest.mark.slow
def test_forked_and_fork_server_workers_give_the_runs_of_one_process(tmp_path):
    # The parent has used torch with two threads (an OpenMP thread team exists) before the
    # pool forks: the forked workers must neither hang nor compute anything different.
    torch.set_num_threads(2)
    try:
        torch.mm(torch.ones(512, 512), torch.ones(512, 512))
        plan = plan_sweep(QUICKSTART, grid=GRID, seeds=1, out=tmp_path / "one", overrides=TINY)
        for run in plan.runs:
            run_scenario(run.scenario, run.folder, title_note=run.title_note)
        expected = _metrics(tmp_path / "one")
        for method in ("fork", "forkserver"):
            plan = plan_sweep(QUICKSTART, grid=GRID, seeds=1, out=tmp_path / method, overrides=TINY)
            outcomes = execute_plan(plan, progress=False, executor=LocalExecutor(2, method=method))
            assert [o.error for o in outcomes] == [None, None]
            assert _metrics(tmp_path / method) == expected
    finally:
        torch.set_num_threads(1)
    assert len(expected) == 2
