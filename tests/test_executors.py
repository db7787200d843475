"""The same sweep gives byte-identical per-run metrics on the local pool and on real Ray."""

from __future__ import annotations

from pathlib import Path

import pytest

from swarmfl.errors import ConfigError
from swarmfl.sim.executors import make_executor
from swarmfl.sim.sweep import run_sweep

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
