"""A lean field agent's process: `swarmfl agent` with ``training.backend = "lean"`` trains and
gossips without ever importing torch, matplotlib or scikit-learn, on digits shipped as an npz."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _field_helpers import (
    SECRET,
    agent_tables,
    read_status,
    unique_swarm_id,
    wait_until,
    write_config,
)
from sklearn.datasets import load_digits

from swarmfl.learning.datasets import digits_images

HEAVY = ("torch", "matplotlib", "sklearn")

# `swarmfl agent` run by the CLI's own entry point; once it has stopped, the modules the process
# loaded are printed as JSON.
RUN_AND_REPORT = """
import json, sys
from swarmfl.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def lean_tables(folder: Path, drone: int, swarm_id: int, shards: int) -> dict[str, dict]:
    tables = agent_tables(folder, drone, swarm_id, shards=shards)
    tables["training"].pop("threads")  # torch's threads: the lean backend refuses the key
    tables["training"]["backend"] = "lean"
    return tables


def test_the_shipped_digits_are_scikit_learns() -> None:
    images, labels = digits_images()
    reference = load_digits()
    np.testing.assert_array_equal(images, reference.images)
    np.testing.assert_array_equal(labels, reference.target)


@pytest.mark.network
@pytest.mark.timeout(120)
def test_a_lean_agent_trains_and_stops_without_importing_torch_matplotlib_or_sklearn(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, 0, lean_tables(tmp_path, 0, unique_swarm_id(), shards=2))
    env = dict(os.environ, SWARMFL_SECRET=SECRET, OMP_NUM_THREADS="1")
    process = subprocess.Popen(
        [sys.executable, "-c", RUN_AND_REPORT, "agent", "--config", str(config)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        status = tmp_path / "status-0.jsonl"
        wait_until(
            lambda: any(line.get("rounds", 0) >= 3 for line in read_status(status)),
            60,
            "three local rounds",
        )
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["code"] == 0
    assert "swarmfl" in report["modules"] and "numpy" in report["modules"]
    assert not set(HEAVY) & set(report["modules"]), err
    last = read_status(status)[-1]
    assert last["state"] == "stopped" and last["accuracy"] > 0.5
